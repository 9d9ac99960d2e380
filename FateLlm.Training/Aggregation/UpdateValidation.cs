using FateLlm.Training.IO;
using static TorchSharp.torch;

namespace FateLlm.Training.Aggregation;

/// <summary>
/// The gate every plain update passes before it touches the aggregate: it must parse as safetensors, carry exactly
/// the global adapter's tensor names and shapes, hold only finite values, and have an L2 norm within the bound.
/// </summary>
public static class UpdateValidation
{
    /// <summary>Null when the update is acceptable, otherwise the reason (naming the tensor where there is one).</summary>
    public static string? Check(IReadOnlyDictionary<string, Tensor> global, byte[] update, double maxNorm)
    {
        using var scope = NewDisposeScope();
        Dictionary<string, Tensor> tensors;
        try { tensors = SafeTensors.FromBytes(update, "update"); }
        catch (Exception e) when (e is InvalidDataException or FormatException or ArgumentException)
        {
            return $"not a valid safetensors update ({e.Message})";
        }
        try { AggregationStrategies.Validate(global, new AdapterDelta("", tensors, 0)); }
        catch (AggregationException e) { return e.Message.Replace("party '': ", ""); }
        double sq = 0;
        foreach (var (name, t) in tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            using var d = t.to(ScalarType.Float64);
            if (!d.isfinite().all().item<bool>()) return $"tensor '{name}' has non-finite values";
            sq += d.square().sum().item<double>();
        }
        var norm = Math.Sqrt(sq);
        return norm > maxNorm ? $"L2 norm {norm:G4} exceeds the bound {maxNorm:G4}" : null;
    }
}
