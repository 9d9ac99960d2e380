using FateLlm.Training.Aggregation;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// The server side plug-ins share when their update is a tensor delta of a named global state (homo-peft's adapter,
/// offsite tuning's adapter blocks): the job's aggregation rule over the deltas (or the one mean under secure
/// aggregation or DP), server optimizer state kept as an artifact.
/// </summary>
public static class AdapterAggregation
{
    static readonly string[] RobustRules = ["median", "trimmed-mean", "krum", "multi-krum", "norm-bound"];

    /// <summary>Refuses an unknown rule, and robust rules where only a sum or a noised mean is seen.</summary>
    public static void Validate(JobSpec spec)
    {
        var aggregation = spec.Aggregation.Algorithm.ToLowerInvariant();
        if (!AggregationStrategies.Names.Contains(aggregation))
            throw new JobSpecException($"job.aggregation.algorithm: '{spec.Aggregation.Algorithm}' is not one of {string.Join(", ", AggregationStrategies.Names)}");
        var robust = RobustRules.Contains(aggregation);
        if (robust && spec.Dp.Enabled)
            throw new JobSpecException($"job.aggregation.algorithm: '{spec.Aggregation.Algorithm}' needs individual updates; it cannot be combined with DP (use fedavg, fedavgm, fedadam, fedadagrad or fedyogi)");
        if (robust && spec.SecureAggregation.Enabled)
            throw new JobSpecException($"job.aggregation.algorithm: '{spec.Aggregation.Algorithm}' needs individual updates; secure aggregation only reveals their sum");
    }

    public static StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result, string global, string serverState)
    {
        var store = ctx.Store;
        var current = SafeTensors.FromBytes(store.Read(state.Get(global)), global);
        var moments = state.Find(serverState) is { } s ? SafeTensors.FromBytes(store.Read(s), serverState) : new Dictionary<string, Tensor>();
        // Under DP or secure aggregation the round sees one mean update, to which the server rule applies as to a single party.
        var deltas = result.Mean is { } mean
            ? [new AdapterDelta("mean", mean, 1)]
            : result.Updates.Select(u => new AdapterDelta(u.Party, (IReadOnlyDictionary<string, Tensor>)u.Parsed!, u.Samples) { Weight = u.Weight }).ToList();
        var outcome = ctx.Spec.Strategy().Aggregate(current, deltas, moments);
        var next = state.With(global, store.Put(SafeTensors.ToBytes(outcome.Global))).With(serverState, store.Put(SafeTensors.ToBytes(outcome.ServerState)));
        return new StepResult(next, Next: null) { Metrics = outcome.Metrics };
    }
}
