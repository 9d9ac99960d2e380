using FateLlm.Training.Aggregation;
using static TorchSharp.torch;

namespace FateLlm.Training.Privacy;

/// <summary>
/// Aggregation under DP or secure aggregation: the round's update is one mean (never the individual deltas), which
/// the job's server rule (FedAvg, FedAvgM, FedAdam…) then applies. The adaptive clip norm lives in the server state
/// (key <c>dp.clip</c>) so it survives an arbiter restart like the optimiser's moments.
/// </summary>
public static class PrivateAggregation
{
    const string ClipKey = "dp.clip";

    public static double CurrentClip(IReadOnlyDictionary<string, Tensor> serverState, DpOptions dp) =>
        serverState.TryGetValue(ClipKey, out var c) ? c.item<double>() : dp.ClipNorm;

    /// <summary>
    /// Central DP (McMahan et al. 2018): clip each Δ_k to C, sum, add N(0, z²C²), divide by the expected party count m
    /// (fixed, not data-dependent). With adaptive clipping the count of unclipped parties gets N(0, σ_b²) and moves C.
    /// </summary>
    public static AggregationOutcome Central(IReadOnlyDictionary<string, Tensor> global, IReadOnlyList<AdapterDelta> deltas,
        IReadOnlyDictionary<string, Tensor> serverState, IAggregationStrategy inner, DpOptions dp, int expectedParties, long? noiseSeed = null)
    {
        if (deltas.Count == 0) throw new AggregationException("no updates to aggregate");
        foreach (var d in deltas) AggregationStrategies.Validate(global, d);
        var clip = CurrentClip(serverState, dp);
        using var _ = no_grad();
        var sum = global.ToDictionary(kv => kv.Key, kv => zeros(kv.Value.shape, ScalarType.Float64));
        int unclipped = 0;
        foreach (var d in deltas)
        {
            var norm = ClientDp.L2Norm(d.Tensors);
            if (norm <= clip) unclipped++;
            var scale = norm > clip ? clip / norm : 1.0;
            foreach (var (name, t) in d.Tensors) sum[name].add_(t.to(ScalarType.Float64), alpha: scale);
        }
        var z = dp.UpdateNoiseMultiplier(expectedParties);
        ClientDp.AddGaussianNoise(sum, z * clip, noiseSeed);
        var noisedCount = unclipped + (dp.AdaptiveClip ? ClientDp.Gaussian(dp.ClipCountNoise * expectedParties, noiseSeed is { } s ? new Random((int)s) : null) : 0);
        return Finish(global, sum, noisedCount, deltas.Count, serverState, inner, dp, expectedParties, clip, z * clip);
    }

    /// <summary>
    /// Distributed DP: <paramref name="noisedSum"/> is Σ (clip(Δ_k) + N(0, z²C²/m)) from secure aggregation and
    /// <paramref name="noisedUnclipped"/> the securely summed, party-noised clip indicators.
    /// </summary>
    public static AggregationOutcome FromNoisedSum(IReadOnlyDictionary<string, Tensor> global, Dictionary<string, Tensor> noisedSum, double noisedUnclipped,
        int contributors, IReadOnlyDictionary<string, Tensor> serverState, IAggregationStrategy inner, DpOptions dp, int expectedParties)
    {
        var clip = CurrentClip(serverState, dp);
        var z = dp.UpdateNoiseMultiplier(expectedParties);
        // Parties added N(0, z²C²/m) each; with dropouts only contributors/m of the variance is there.
        var std = z * clip * Math.Sqrt(contributors / (double)expectedParties);
        return Finish(global, noisedSum, noisedUnclipped, contributors, serverState, inner, dp, expectedParties, clip, std);
    }

    /// <summary>Secure aggregation without DP: Σ w_k Δ_k and Σ w_k come out of the protocol; the mean is their ratio.</summary>
    public static AggregationOutcome FromWeightedSum(IReadOnlyDictionary<string, Tensor> global, Dictionary<string, Tensor> weightedSum, double weightSum,
        IReadOnlyDictionary<string, Tensor> serverState, IAggregationStrategy inner)
    {
        if (!(weightSum > 0)) throw new AggregationException($"securely summed weights are {weightSum:G4}; nothing to average");
        return StepWithMean(global, weightedSum, weightSum, serverState, inner, "secure-sum");
    }

    /// <summary>The server rule applied to one update, sum ÷ divisor, in the global's dtypes.</summary>
    static AggregationOutcome StepWithMean(IReadOnlyDictionary<string, Tensor> global, Dictionary<string, Tensor> sum, double divisor,
        IReadOnlyDictionary<string, Tensor> serverState, IAggregationStrategy inner, string name)
    {
        using var _ = no_grad();
        var mean = sum.ToDictionary(kv => kv.Key, kv => kv.Value.div(divisor).to(global[kv.Key].dtype));
        var outcome = inner.Aggregate(global, [new AdapterDelta(name, mean, 1)], serverState);
        foreach (var t in mean.Values) t.Dispose();
        return outcome;
    }

    static AggregationOutcome Finish(IReadOnlyDictionary<string, Tensor> global, Dictionary<string, Tensor> sum, double noisedUnclipped, int contributors,
        IReadOnlyDictionary<string, Tensor> serverState, IAggregationStrategy inner, DpOptions dp, int expectedParties, double clip, double noiseStd)
    {
        var innerState = serverState.Where(kv => kv.Key != ClipKey).ToDictionary(kv => kv.Key, kv => kv.Value);
        var outcome = StepWithMean(global, sum, expectedParties, innerState, inner, "dp-mean");
        var fraction = Math.Clamp(noisedUnclipped / expectedParties, 0, 1);
        var next = dp.AdaptiveClip ? ClientDp.NextClip(clip, fraction, dp.TargetQuantile, dp.ClipLearningRate) : clip;
        outcome.ServerState[ClipKey] = tensor(next, ScalarType.Float64);
        return outcome with
        {
            Metrics = new Dictionary<string, double>
            {
                ["dp.clip"] = clip, ["dp.next_clip"] = next, ["dp.noise_std"] = noiseStd, ["dp.unclipped_fraction"] = fraction,
                ["dp.contributors"] = contributors,
            },
        };
    }
}
