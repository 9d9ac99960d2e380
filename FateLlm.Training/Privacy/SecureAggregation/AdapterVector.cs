using FateLlm.Training.Aggregation;
using static TorchSharp.torch;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>
/// Named adapter tensors ⇄ the flat vector secure aggregation masks: tensors in ordinal name order, row-major.
/// Party side also does the DP work that must happen before masking (clip, distributed noise, weighting).
/// </summary>
public static class AdapterVector
{
    public static long Length(IReadOnlyDictionary<string, Tensor> spec) => spec.Values.Sum(t => t.numel());

    public static float[] Flatten(IReadOnlyDictionary<string, Tensor> spec, IReadOnlyDictionary<string, Tensor> tensors, string party)
    {
        AggregationStrategies.Validate(spec, new AdapterDelta(party, tensors, 0));
        var result = new float[Length(spec)];
        long offset = 0;
        foreach (var name in spec.Keys.Order(StringComparer.Ordinal))
        {
            var data = tensors[name].to(ScalarType.Float32).contiguous().data<float>().ToArray();
            data.CopyTo(result, offset);
            offset += data.Length;
        }
        return result;
    }

    public static Dictionary<string, Tensor> Unflatten(IReadOnlyDictionary<string, Tensor> spec, ReadOnlySpan<float> values)
    {
        if (values.Length != Length(spec)) throw new AggregationException($"vector of {values.Length} values for an adapter of {Length(spec)}");
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        int offset = 0;
        foreach (var name in spec.Keys.Order(StringComparer.Ordinal))
        {
            var n = (int)spec[name].numel();
            result[name] = tensor(values.Slice(offset, n).ToArray(), spec[name].shape, ScalarType.Float32);
            offset += n;
        }
        return result;
    }

    /// <summary>
    /// What a party feeds into masking: with DP, Δ clipped to C plus N(0, z²C²/m) and extras [1, indicator + N(0, σ_b²/m)];
    /// without, w·Δ with w = min(n, cap)/cap and extras [w]. Returns the values and the extras.
    /// </summary>
    public static (float[] Values, double[] Extras) PrepareInput(IReadOnlyDictionary<string, Tensor> layout, IReadOnlyDictionary<string, Tensor> delta,
        long samples, long sampleCap, DpOptions dp, double clip, int expectedParties)
    {
        using var _ = NewDisposeScope();
        var work = delta.ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float64).clone());
        if (dp.Enabled)
        {
            var norm = ClientDp.ClipInPlace(work, clip);
            var z = dp.UpdateNoiseMultiplier(expectedParties);
            ClientDp.AddGaussianNoise(work, z * clip / Math.Sqrt(expectedParties));
            double[] extras = dp.AdaptiveClip
                ? [1.0, (norm <= clip ? 1 : 0) + ClientDp.Gaussian(dp.ClipCountNoise * expectedParties / Math.Sqrt(expectedParties))]
                : [1.0];
            return (Flatten(layout, work, "self"), extras);
        }
        var w = Math.Min(samples, sampleCap) / (double)sampleCap;
        foreach (var t in work.Values) t.mul_(w);
        return (Flatten(layout, work, "self"), [w]);
    }
}
