namespace FateLlm.Training.Algorithms.Fdkt;

/// <summary>
/// Seeded k-means (k-means++ seeding, then Lloyd's iterations until no point moves): FDKT's clustering of the synthetic
/// examples' embeddings. Deterministic for a seed on every machine (SplitMix64, sums in double, ties to the lower index).
/// </summary>
public static class KMeans
{
    /// <summary>The cluster of each point (0 … k−1; every cluster non-empty when k ≤ the number of distinct points).</summary>
    public static int[] Cluster(IReadOnlyList<float[]> points, int k, long seed, int maxIterations = 100)
    {
        var n = points.Count;
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), $"k = {k} clusters of {n} points");
        var dim = points[0].Length;
        if (points.Any(p => p.Length != dim)) throw new ArgumentException("points of different dimensions");
        var rng = new SplitMix64((ulong)seed);
        double Uniform() => (rng.Next() >> 11) * (1.0 / (1UL << 53));
        var centers = new List<double[]> { points[(int)(rng.Next() % (ulong)n)].Select(x => (double)x).ToArray() };
        var nearest = points.Select(p => Distance(p, centers[0])).ToArray();
        while (centers.Count < k)
        {
            // k-means++: the next centre with probability ∝ squared distance to the nearest chosen one.
            var total = nearest.Sum();
            var pick = 0;
            if (total > 0)
            {
                var r = Uniform() * total;
                for (pick = 0; pick < n - 1 && (r -= nearest[pick]) > 0; pick++) { }
            }
            else pick = centers.Count; // all points coincide with centres: any distinct index keeps k clusters
            var c = points[pick].Select(x => (double)x).ToArray();
            centers.Add(c);
            for (int i = 0; i < n; i++) nearest[i] = Math.Min(nearest[i], Distance(points[i], c));
        }
        var assignment = new int[n];
        Array.Fill(assignment, -1);
        for (int iteration = 0; iteration < maxIterations; iteration++)
        {
            var moved = false;
            for (int i = 0; i < n; i++)
            {
                var best = 0;
                var bestDistance = double.PositiveInfinity;
                for (int c = 0; c < k; c++)
                {
                    var d = Distance(points[i], centers[c]);
                    if (d < bestDistance) (best, bestDistance) = (c, d);
                }
                if (assignment[i] != best) (assignment[i], moved) = (best, true);
            }
            if (!moved) break;
            for (int c = 0; c < k; c++)
            {
                var members = Enumerable.Range(0, n).Where(i => assignment[i] == c).ToList();
                // An emptied cluster takes the point farthest from its own centre, so k clusters stay k.
                if (members.Count == 0)
                {
                    var far = Enumerable.Range(0, n).MaxBy(i => Distance(points[i], centers[assignment[i]]));
                    assignment[far] = c;
                    members = [far];
                }
                var mean = new double[dim];
                foreach (var i in members)
                    for (int d = 0; d < dim; d++) mean[d] += points[i][d];
                for (int d = 0; d < dim; d++) mean[d] /= members.Count;
                centers[c] = mean;
            }
        }
        return assignment;
    }

    static double Distance(float[] p, double[] c)
    {
        double s = 0;
        for (int d = 0; d < p.Length; d++)
        {
            var x = p[d] - c[d];
            s += x * x;
        }
        return s;
    }
}
