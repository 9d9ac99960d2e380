namespace FateLlm.Training.Metrics;

/// <summary>A point estimate with a confidence interval.</summary>
public readonly record struct Interval(double Estimate, double Low, double High)
{
    public bool Excludes(double value) => value < Low || value > High;
    public override string ToString() => $"{Estimate:F2} [{Low:F2}, {High:F2}]";
}

/// <summary>
/// Percentile bootstrap over test examples (Efron &amp; Tibshirani 1993, ch. 13): resample the examples with replacement,
/// recompute the mean, take the α/2 and 1 − α/2 quantiles. The paired form resamples the same examples for two systems,
/// so example difficulty cancels out of their difference (Koehn 2004). Deterministic for a seed.
/// </summary>
public static class Bootstrap
{
    public const int DefaultResamples = 2000;

    public static Interval Mean(IReadOnlyList<double> xs, int resamples = DefaultResamples, int seed = 1, double level = 0.95) =>
        Resample(xs, resamples, seed, level);

    /// <summary>The mean of <c>a[i] − b[i]</c> over examples, for two systems scored on the same examples.</summary>
    public static Interval PairedDifference(IReadOnlyList<double> a, IReadOnlyList<double> b, int resamples = DefaultResamples, int seed = 1, double level = 0.95)
    {
        if (a.Count != b.Count) throw new ArgumentException($"paired samples differ in size: {a.Count} and {b.Count}");
        return Resample(a.Select((x, i) => x - b[i]).ToArray(), resamples, seed, level);
    }

    static Interval Resample(IReadOnlyList<double> xs, int resamples, int seed, double level)
    {
        if (xs.Count == 0) throw new ArgumentException("no examples to resample");
        if (level is <= 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(level), level, "a confidence level in (0, 1)");
        var rng = new Random(seed);
        var means = new double[resamples];
        for (int r = 0; r < resamples; r++)
        {
            double sum = 0;
            for (int i = 0; i < xs.Count; i++) sum += xs[rng.Next(xs.Count)];
            means[r] = sum / xs.Count;
        }
        Array.Sort(means);
        var alpha = (1 - level) / 2;
        return new Interval(xs.Average(), Quantile(means, alpha), Quantile(means, 1 - alpha));
    }

    /// <summary>Linear interpolation between order statistics (numpy's default).</summary>
    static double Quantile(double[] sorted, double q)
    {
        var pos = q * (sorted.Length - 1);
        var lo = (int)Math.Floor(pos);
        var hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
    }
}
