using System.Text.Json.Serialization;

namespace FateLlm.Training.Compression;

/// <summary>How a summable update travels: as fp32, halved, blockwise quantized, or sparsified.</summary>
public enum CompressionScheme { None, Fp16, Bf16, Int8, Nf4, TopK }

/// <summary>
/// <c>job.compression</c>: what parties send up (their deltas) and what the arbiter sends down (the global, as a delta
/// against the last one a party holds). Quantizers keep one absmax scale per <see cref="BlockSize"/> values; top-k sends
/// the <see cref="TopKFraction"/> largest magnitudes. With <see cref="ErrorFeedback"/> a party adds what it could not
/// send to its next update, so nothing is lost over rounds, only delayed.
/// </summary>
public sealed record CompressionOptions
{
    public required CompressionScheme Up { get; init; }
    public required CompressionScheme Down { get; init; }
    public required int BlockSize { get; init; }
    public required double TopKFraction { get; init; }
    public required bool ErrorFeedback { get; init; }

    /// <summary>What jobs written before compression existed did: fp32 both ways.</summary>
    public static CompressionOptions Off { get; } = new() { Up = CompressionScheme.None, Down = CompressionScheme.None, BlockSize = 64, TopKFraction = 0.01, ErrorFeedback = true };

    [JsonIgnore] public bool Any => Up != CompressionScheme.None || Down != CompressionScheme.None;

    public static CompressionScheme Parse(string s) => s.ToLowerInvariant() switch
    {
        "none" or "off" or "fp32" => CompressionScheme.None,
        "fp16" => CompressionScheme.Fp16,
        "bf16" => CompressionScheme.Bf16,
        "int8" => CompressionScheme.Int8,
        "nf4" => CompressionScheme.Nf4,
        "topk" or "top-k" => CompressionScheme.TopK,
        _ => throw new ArgumentException($"'{s}' is not one of none, fp16, bf16, int8, nf4, topk"),
    };

    public static string Name(CompressionScheme s) => s == CompressionScheme.TopK ? "topk" : s.ToString().ToLowerInvariant();
}
