using static TorchSharp.torch;

namespace FateLlm.Training.Aggregation;

/// <summary>
/// Aggregation rules that bound the influence of a poisoned update (Yin et al. 2018; Blanchard et al. 2017;
/// Sun et al. 2019). They treat parties equally (sample counts are what an attacker would inflate) and apply the
/// robust update with the server learning rate: θ ← θ + η·Δ.
/// </summary>
public sealed class RobustAggregation(string rule, ServerOptimizerOptions o) : IAggregationStrategy
{
    public string Name => rule;
    public bool NeedsMeanOnly => false;

    public AggregationOutcome Aggregate(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, IReadOnlyDictionary<string, Tensor> serverState)
    {
        if (deltas.Count == 0) throw new AggregationException("no updates to aggregate");
        foreach (var d in deltas) AggregationStrategies.Validate(global, d);
        using var _ = no_grad();
        var update = rule switch
        {
            "median" => PerCoordinate(global, deltas, Median),
            "trimmed-mean" => PerCoordinate(global, deltas, s => TrimmedMean(s, o.TrimFraction)),
            "krum" => Krum(global, deltas, o.Byzantine, 1),
            "multi-krum" => Krum(global, deltas, o.Byzantine, Math.Max(1, o.KrumSelect)),
            "norm-bound" => NormBounded(global, deltas, o.NormBound),
            _ => throw new ArgumentException($"unknown robust rule '{rule}'"),
        };
        var next = global.ToDictionary(kv => kv.Key, kv => kv.Value.add(update[kv.Key], alpha: o.LearningRate));
        foreach (var t in update.Values) t.Dispose();
        return new AggregationOutcome(next, []);
    }

    // Every rule walks the updates one tensor name at a time, each tensor freed before the next name: with updates kept
    // on disk (TensorsOnDisk) a round holds one tensor of each party, not every party's whole update.
    static Dictionary<string, Tensor> PerCoordinate(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, Func<Tensor, Tensor> reduce) =>
        global.Keys.ToDictionary(name => name, name =>
        {
            using var scope = NewDisposeScope();
            return reduce(stack(deltas.Select(d => d.Tensors[name]).ToArray())).MoveToOuterDisposeScope();
        });

    /// <summary>Coordinate-wise median; with an even count, the mean of the two middle values.</summary>
    static Tensor Median(Tensor stacked)
    {
        var k = (int)stacked.shape[0];
        using var sorted = stacked.sort(0).Values;
        return k % 2 == 1 ? sorted[k / 2].clone() : sorted[k / 2 - 1].add(sorted[k / 2]).div(2);
    }

    /// <summary>Drops ⌊β·K⌋ values at each end of every coordinate, averages the rest.</summary>
    static Tensor TrimmedMean(Tensor stacked, double beta)
    {
        var k = (int)stacked.shape[0];
        var cut = (int)Math.Floor(beta * k);
        if (k - 2 * cut < 1) throw new AggregationException($"trim fraction {beta} leaves no update of {k}");
        using var sorted = stacked.sort(0).Values;
        return sorted.narrow(0, cut, k - 2 * cut).mean([0L]);
    }

    /// <summary>Krum: score = Σ squared distances to the K − f − 2 nearest other updates; average the m lowest-scored.</summary>
    static Dictionary<string, Tensor> Krum(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, int f, int m)
    {
        var k = deltas.Count;
        var neighbours = k - f - 2;
        if (neighbours < 1) throw new AggregationException($"Krum with {f} Byzantine parties needs more than {f + 2} updates, got {k}");
        var names = global.Keys.Order(StringComparer.Ordinal).ToList();
        // ‖Δi − Δj‖² over the whole update is the sum of the per-tensor squared distances (in fp64 across tensors).
        var squared = new double[k, k];
        foreach (var n in names)
        {
            using var scope = NewDisposeScope();
            var flat = stack(deltas.Select(d => d.Tensors[n].flatten()).ToArray());
            var part = cdist(flat, flat).pow(2).to_type(ScalarType.Float64).data<double>().ToArray();
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++) squared[i, j] += part[i * k + j];
        }
        var scores = Enumerable.Range(0, k).Select(i =>
            Enumerable.Range(0, k).Where(j => j != i).Select(j => squared[i, j]).Order().Take(neighbours).Sum()).ToArray();
        var chosen = Enumerable.Range(0, k).OrderBy(i => scores[i]).Take(Math.Min(m, k)).ToList();
        return names.ToDictionary(n => n, n =>
        {
            using var scope = NewDisposeScope();
            return stack(chosen.Select(i => deltas[i].Tensors[n]).ToArray()).mean([0L]).MoveToOuterDisposeScope();
        });
    }

    /// <summary>Scales every update to L2 norm ≤ B (over all its tensors), then averages them with equal weights.</summary>
    static Dictionary<string, Tensor> NormBounded(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, double bound)
    {
        if (bound <= 0) throw new AggregationException($"norm bound must be positive, got {bound}");
        var scales = deltas.Select(d =>
        {
            var norm = Math.Sqrt(global.Keys.Sum(n =>
            {
                using var scope = NewDisposeScope();
                return (double)d.Tensors[n].pow(2).sum().item<float>();
            }));
            return norm > bound ? bound / norm : 1.0;
        }).ToList();
        // Equal weights over the clipped updates, one tensor name at a time.
        return global.Keys.ToDictionary(n => n, n =>
        {
            var acc = zeros_like(global[n]);
            for (int i = 0; i < deltas.Count; i++)
            {
                using var scope = NewDisposeScope();
                acc.add_(deltas[i].Tensors[n].mul(scales[i]), alpha: 1.0 / deltas.Count);
            }
            return acc;
        });
    }
}
