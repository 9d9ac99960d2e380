using static TorchSharp.torch;

namespace FateLlm.Training.Aggregation;

/// <summary>One party's contribution to a round: Δ_k = θ_k − θ by tensor name, and the samples it trained on.</summary>
public sealed record AdapterDelta(string Party, IReadOnlyDictionary<string, Tensor> Tensors, long Samples)
{
    /// <summary>A factor on its share beyond the samples (a buffered update's staleness weight w(s) ≤ 1); shares still divide by Σ n.</summary>
    public double Weight { get; init; } = 1.0;
}

/// <summary>Raised when an update does not fit the job's adapter spec; names the party and the tensor.</summary>
public sealed class AggregationException(string message) : Exception(message);

/// <summary>
/// A server-side aggregation rule (Flower's Strategy idea, data in, data out): given the global trainable state,
/// the round's deltas and the strategy's own state, return the new global state. Everything is by tensor
/// name, never by position. State tensors (momenta) are returned so they can be persisted with the round.
/// </summary>
public interface IAggregationStrategy
{
    string Name { get; }
    /// <summary>
    /// True when the rule needs only the weighted mean of the deltas (the FedAvg family): a round then folds each
    /// validated update into a <see cref="RunningWeightedMean"/> and holds one update at a time, not every party's.
    /// </summary>
    bool NeedsMeanOnly => true;
    AggregationOutcome Aggregate(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, IReadOnlyDictionary<string, Tensor> serverState);
}

public sealed record AggregationOutcome(Dictionary<string, Tensor> Global, Dictionary<string, Tensor> ServerState)
{
    /// <summary>Figures about the round worth reporting (DP clip norm, noise), by name.</summary>
    public IReadOnlyDictionary<string, double> Metrics { get; init; } = new Dictionary<string, double>();
}

public sealed record ServerOptimizerOptions
{
    public double LearningRate { get; init; } = 1.0;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.99;
    public double Tau { get; init; } = 1e-3;
    /// <summary>FedAvgM momentum.</summary>
    public double Momentum { get; init; } = 0.9;
    /// <summary>Trimmed mean: fraction dropped at each end of every coordinate.</summary>
    public double TrimFraction { get; init; } = 0.2;
    /// <summary>Krum: number of Byzantine parties tolerated (f).</summary>
    public int Byzantine { get; init; } = 1;
    /// <summary>Multi-Krum: how many best-scored updates are averaged (m).</summary>
    public int KrumSelect { get; init; } = 3;
    /// <summary>Norm bounding: maximum L2 norm of one party's update.</summary>
    public double NormBound { get; init; } = 1.0;
}

public static class AggregationStrategies
{
    public static readonly string[] Names = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "median", "trimmed-mean", "krum", "multi-krum", "norm-bound"];

    public static IAggregationStrategy Create(string name, ServerOptimizerOptions? options = null)
    {
        var o = options ?? new ServerOptimizerOptions();
        return name.ToLowerInvariant() switch
        {
            "fedavg" => new FedAvg(o.LearningRate),
            "fedavgm" => new FedAvgM(o),
            "fedadagrad" or "fedadam" or "fedyogi" => new AdaptiveFedOpt(name.ToLowerInvariant(), o),
            "median" or "trimmed-mean" or "krum" or "multi-krum" or "norm-bound" => new RobustAggregation(name.ToLowerInvariant(), o),
            _ => throw new ArgumentException($"unknown aggregation '{name}' (known: {string.Join(", ", Names)})"),
        };
    }

    /// <summary>Σ n_k Δ_k / Σ n_k per tensor, after checking every delta has exactly the global's names and shapes.</summary>
    public static Dictionary<string, Tensor> WeightedMean(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas)
    {
        if (deltas.Count == 0) throw new AggregationException("no updates to aggregate");
        foreach (var d in deltas) Validate(global, d);
        var mean = new RunningWeightedMean(global, deltas.Sum(d => (double)d.Samples));
        foreach (var d in deltas) mean.Add(d);
        return mean.Result();
    }

    /// <summary>Server optimisers: average the deltas, then compute each tensor's next value (and its state) from the mean update.</summary>
    public static AggregationOutcome ServerStep(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas,
        Func<string, Tensor, Tensor, Dictionary<string, Tensor>, Tensor> step)
    {
        var mean = WeightedMean(global, deltas);
        using var _ = no_grad();
        var state = new Dictionary<string, Tensor>();
        var next = global.ToDictionary(kv => kv.Key, kv => step(kv.Key, kv.Value, mean[kv.Key], state));
        foreach (var t in mean.Values) t.Dispose();
        return new AggregationOutcome(next, state);
    }

    public static void Validate(IReadOnlyDictionary<string, Tensor> spec, AdapterDelta d)
    {
        foreach (var (name, t) in spec)
        {
            // An update kept on disk is checked from its header: reading it here would hold it whole.
            var shape = d.Tensors is IO.TensorsOnDisk disk ? disk.ShapeOf(name) : d.Tensors.TryGetValue(name, out var u) ? u.shape : null;
            if (shape is null) throw new AggregationException($"party '{d.Party}': update lacks tensor '{name}'");
            if (!shape.SequenceEqual(t.shape))
                throw new AggregationException($"party '{d.Party}': tensor '{name}' has shape [{string.Join(",", shape)}], expected [{string.Join(",", t.shape)}]");
        }
        var extra = d.Tensors.Keys.FirstOrDefault(k => !spec.ContainsKey(k));
        if (extra != null) throw new AggregationException($"party '{d.Party}': update has unknown tensor '{extra}'");
        if (d.Samples < 0) throw new AggregationException($"party '{d.Party}': negative sample count {d.Samples}");
    }
}

/// <summary>
/// Σ (n_k / N) Δ_k folded one delta at a time, N (the accepted samples) known first: memory of one adapter however many
/// parties contribute, and the same bits as summing the list at once in the same order (other orders differ by fp32
/// rounding). Each delta is checked against the global's names and shapes as it is added.
/// </summary>
public sealed class RunningWeightedMean
{
    readonly IReadOnlyDictionary<string, Tensor> _global;
    readonly double _total;
    readonly Dictionary<string, Tensor> _sum = new(StringComparer.Ordinal);

    public RunningWeightedMean(IReadOnlyDictionary<string, Tensor> global, double totalSamples)
    {
        if (totalSamples <= 0) throw new AggregationException("updates report no samples");
        (_global, _total) = (global, totalSamples);
        using var _ = no_grad();
        // Made in the constructing caller's dispose scope and only added to in place, so per-update scopes cannot free them.
        foreach (var (name, t) in global) _sum[name] = zeros_like(t);
    }

    public int Count { get; private set; }

    public void Add(AdapterDelta d)
    {
        AggregationStrategies.Validate(_global, d);
        using var _ = no_grad();
        foreach (var (name, acc) in _sum) acc.add_(d.Tensors[name], alpha: d.Samples * d.Weight / _total);
        Count++;
    }

    /// <summary>The weighted mean (the tensors folded into, in the constructing caller's scope).</summary>
    public Dictionary<string, Tensor> Result() =>
        Count == 0 ? throw new AggregationException("no updates to aggregate") : new Dictionary<string, Tensor>(_sum, StringComparer.Ordinal);
}

/// <summary>FedAvg (McMahan et al. 2017): θ ← θ + η·Σ n_k Δ_k / Σ n_k.</summary>
public sealed class FedAvg(double serverLearningRate = 1.0) : IAggregationStrategy
{
    public string Name => "fedavg";

    public AggregationOutcome Aggregate(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, IReadOnlyDictionary<string, Tensor> serverState)
    {
        var mean = AggregationStrategies.WeightedMean(global, deltas);
        using var _ = no_grad();
        var next = global.ToDictionary(kv => kv.Key, kv => kv.Value.add(mean[kv.Key], alpha: serverLearningRate));
        foreach (var t in mean.Values) t.Dispose();
        return new AggregationOutcome(next, []);
    }
}

/// <summary>FedAvgM (Hsu et al. 2019): m ← β m + Δ; θ ← θ + η m.</summary>
public sealed class FedAvgM(ServerOptimizerOptions o) : IAggregationStrategy
{
    public string Name => "fedavgm";

    public AggregationOutcome Aggregate(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, IReadOnlyDictionary<string, Tensor> serverState) =>
        AggregationStrategies.ServerStep(global, deltas, (name, theta, d, state) =>
        {
            var m = serverState.TryGetValue("m/" + name, out var prev) ? prev.mul(o.Momentum).add_(d) : d.clone();
            state["m/" + name] = m;
            return theta.add(m, alpha: o.LearningRate);
        });
}

/// <summary>
/// Adaptive federated optimisation (Reddi et al. 2021), per tensor with Δ the averaged update:
/// m ← β1 m + (1−β1) Δ; v ← v + Δ² (Adagrad) | β2 v + (1−β2) Δ² (Adam) | v − (1−β2) Δ² sign(v − Δ²) (Yogi);
/// θ ← θ + η m / (√v + τ). v starts at τ² as in the paper's experiments.
/// </summary>
public sealed class AdaptiveFedOpt(string variant, ServerOptimizerOptions o) : IAggregationStrategy
{
    public string Name => variant;

    public AggregationOutcome Aggregate(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas, IReadOnlyDictionary<string, Tensor> serverState) =>
        AggregationStrategies.ServerStep(global, deltas, (name, theta, d, state) =>
        {
            var m = serverState.TryGetValue("m/" + name, out var pm) ? pm.mul(o.Beta1).add_(d, alpha: 1 - o.Beta1) : d.mul(1 - o.Beta1);
            var v0 = serverState.TryGetValue("v/" + name, out var pv) ? pv : full_like(d, o.Tau * o.Tau);
            var d2 = d.pow(2);
            var v = variant switch
            {
                "fedadagrad" => v0.add(d2),
                "fedadam" => v0.mul(o.Beta2).add_(d2, alpha: 1 - o.Beta2),
                _ => v0.sub(d2.mul(v0.sub(d2).sign()).mul(1 - o.Beta2)),
            };
            state["m/" + name] = m;
            state["v/" + name] = v;
            return theta.add(m.div(v.sqrt().add(o.Tau)), alpha: o.LearningRate);
        });
}
