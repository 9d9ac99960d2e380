using FateLlm.Training.Aggregation;
using FateLlm.Training.IO;
using static TorchSharp.torch;

namespace FateLlm.Training.Privacy;

/// <summary>The mean update a round hands to its algorithm under DP or secure aggregation, never the individual deltas.</summary>
public sealed record PrivateMean(Dictionary<string, Tensor> Mean, double NextClip, IReadOnlyDictionary<string, double> Metrics);

/// <summary>
/// Aggregation under DP or secure aggregation reduced to one mean update in the layout's names, shapes and dtypes;
/// the job's algorithm then applies its server rule (FedAvg, FedAvgM, FedAdam…) to that mean as to a single update.
/// The adaptive clip norm is the framework's state (<see cref="PrivacyState"/>), persisted with the round.
/// </summary>
public static class PrivateAggregation
{
    /// <summary>
    /// Central DP (McMahan et al. 2018): clip each Δ_k to C, sum, add N(0, z²C²), divide by the expected party count m
    /// (fixed, not data-dependent). With adaptive clipping the count of unclipped parties gets N(0, σ_b²) and moves C.
    /// </summary>
    public static PrivateMean Central(IReadOnlyDictionary<string, Tensor> layout, IReadOnlyList<AdapterDelta> deltas, double clip, DpOptions dp,
        int expectedParties, long? noiseSeed = null)
    {
        if (deltas.Count == 0) throw new AggregationException("no updates to aggregate");
        foreach (var d in deltas) AggregationStrategies.Validate(layout, d);
        using var _ = no_grad();
        var sum = layout.ToDictionary(kv => kv.Key, kv => zeros(kv.Value.shape, ScalarType.Float64));
        int unclipped = 0;
        foreach (var d in deltas)
        {
            var norm = ClientDp.L2Norm(d.Tensors);
            if (norm <= clip) unclipped++;
            // A staleness weight ≤ 1 scales the clipped update: the sensitivity stays C.
            var scale = (norm > clip ? clip / norm : 1.0) * d.Weight;
            foreach (var (name, t) in d.Tensors) sum[name].add_(t.to(ScalarType.Float64), alpha: scale);
        }
        var z = dp.UpdateNoiseMultiplier(expectedParties);
        ClientDp.AddGaussianNoise(sum, z * clip, noiseSeed);
        var noisedCount = unclipped + (dp.AdaptiveClip ? ClientDp.Gaussian(dp.ClipCountNoise * expectedParties, noiseSeed is { } s ? new Random((int)s) : null) : 0);
        return Finish(layout, sum, noisedCount, deltas.Count, dp, expectedParties, clip, z * clip);
    }

    /// <summary>
    /// Distributed DP: <paramref name="noisedSum"/> is Σ (clip(Δ_k) + N(0, z²C²/m)) from secure aggregation and
    /// <paramref name="noisedUnclipped"/> the securely summed, party-noised clip indicators.
    /// </summary>
    public static PrivateMean FromNoisedSum(IReadOnlyDictionary<string, Tensor> layout, Dictionary<string, Tensor> noisedSum, double noisedUnclipped,
        int contributors, double clip, DpOptions dp, int expectedParties)
    {
        var z = dp.UpdateNoiseMultiplier(expectedParties);
        // Parties added N(0, z²C²/m) each; with dropouts only contributors/m of the variance is there.
        var std = z * clip * Math.Sqrt(contributors / (double)expectedParties);
        return Finish(layout, noisedSum, noisedUnclipped, contributors, dp, expectedParties, clip, std);
    }

    /// <summary>Secure aggregation without DP: Σ w_k Δ_k and Σ w_k come out of the protocol; the mean is their ratio.</summary>
    public static Dictionary<string, Tensor> FromWeightedSum(IReadOnlyDictionary<string, Tensor> layout, Dictionary<string, Tensor> weightedSum, double weightSum)
    {
        if (!(weightSum > 0)) throw new AggregationException($"securely summed weights are {weightSum:G4}; nothing to average");
        return Mean(layout, weightedSum, weightSum);
    }

    /// <summary>sum ÷ divisor in the layout's dtypes.</summary>
    static Dictionary<string, Tensor> Mean(IReadOnlyDictionary<string, Tensor> layout, Dictionary<string, Tensor> sum, double divisor)
    {
        using var _ = no_grad();
        return sum.ToDictionary(kv => kv.Key, kv => kv.Value.div(divisor).to(layout[kv.Key].dtype));
    }

    static PrivateMean Finish(IReadOnlyDictionary<string, Tensor> layout, Dictionary<string, Tensor> sum, double noisedUnclipped, int contributors,
        DpOptions dp, int expectedParties, double clip, double noiseStd)
    {
        var mean = Mean(layout, sum, expectedParties);
        var fraction = Math.Clamp(noisedUnclipped / expectedParties, 0, 1);
        var next = dp.AdaptiveClip ? ClientDp.NextClip(clip, fraction, dp.TargetQuantile, dp.ClipLearningRate) : clip;
        return new PrivateMean(mean, next, new Dictionary<string, double>
        {
            ["dp.clip"] = clip, ["dp.next_clip"] = next, ["dp.noise_std"] = noiseStd, ["dp.unclipped_fraction"] = fraction,
            ["dp.contributors"] = contributors,
        });
    }
}

/// <summary>The framework's DP state between rounds: the (adaptive) clip norm, as a one-tensor safetensors artifact.</summary>
public static class PrivacyState
{
    const string ClipKey = "dp.clip";

    public static double Clip(byte[]? state, DpOptions dp)
    {
        if (state is not { Length: > 0 }) return dp.ClipNorm;
        using var scope = NewDisposeScope();
        return SafeTensors.FromBytes(state, "privacy state").TryGetValue(ClipKey, out var c) ? c.item<double>() : dp.ClipNorm;
    }

    public static byte[] ToBytes(double clip)
    {
        using var scope = NewDisposeScope();
        return SafeTensors.ToBytes(new Dictionary<string, Tensor> { [ClipKey] = tensor(clip, ScalarType.Float64) });
    }
}
