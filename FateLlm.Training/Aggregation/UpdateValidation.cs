using FateLlm.Training.IO;
using FateLlm.Training.Privacy;
using static TorchSharp.torch;

namespace FateLlm.Training.Aggregation;

/// <summary>
/// The gate every plain update passes before it touches the aggregate: it must parse as safetensors, carry exactly
/// the global adapter's tensor names and shapes, hold only finite values, and have an L2 norm within the bound.
/// </summary>
public static class UpdateValidation
{
    /// <summary>The update's tensors, or the reason it is not a safetensors update.</summary>
    public static (Dictionary<string, Tensor>? Tensors, string? Problem) Parse(byte[] update)
    {
        try { return (SafeTensors.FromBytes(update, "update"), null); }
        catch (Exception e) when (e is InvalidDataException or FormatException or ArgumentException)
        {
            return (null, $"not a valid safetensors update ({e.Message})");
        }
    }

    /// <summary>Null when the update is acceptable, otherwise the reason (naming the tensor where there is one).</summary>
    public static string? Check(IReadOnlyDictionary<string, Tensor> global, IReadOnlyDictionary<string, Tensor> update, double maxNorm)
    {
        try { AggregationStrategies.Validate(global, new AdapterDelta("", update, 0)); }
        catch (AggregationException e) { return e.Message.Replace("party '': ", ""); }
        using (var scope = NewDisposeScope())
            foreach (var (name, t) in update.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                if (!t.isfinite().all().item<bool>()) return $"tensor '{name}' has non-finite values";
        var norm = ClientDp.L2Norm(update);
        return norm > maxNorm ? $"L2 norm {norm:G4} exceeds the bound {maxNorm:G4}" : null;
    }
}
