using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>
/// A config's <c>rope_scaling</c>: how the rotary inverse frequencies and the cos/sin scale are computed, as HF's
/// <c>modeling_rope_utils</c> does for each <c>rope_type</c>. Every formula runs in fp32 tensors in HF's order so
/// logits match to rounding.
/// </summary>
public sealed record RopeScaling
{
    public static readonly string[] SupportedTypes = ["default", "linear", "dynamic", "llama3", "yarn", "longrope"];

    public string Type { get; init; } = "default";
    public double Factor { get; init; } = 1.0;
    public double LowFreqFactor { get; init; }
    public double HighFreqFactor { get; init; }
    /// <summary>The context the model was pretrained with (llama3, yarn, longrope, dynamic).</summary>
    public int OriginalMaxPositions { get; init; }
    public double? AttentionFactor { get; init; }
    public double BetaFast { get; init; } = 32;
    public double BetaSlow { get; init; } = 1;
    public double? Mscale { get; init; }
    public double? MscaleAllDim { get; init; }
    public bool Truncate { get; init; } = true;
    public float[]? ShortFactor { get; init; }
    public float[]? LongFactor { get; init; }

    /// <summary>True when the frequencies depend on the sequence length (so they are recomputed per forward pass).</summary>
    public bool DependsOnLength => Type is "dynamic" or "longrope";

    public static RopeScaling Parse(JsonObject config, int rotaryDim, int maxPositions, string origin)
    {
        if (config["rope_scaling"] is not JsonObject rs || rs.Count == 0) return new RopeScaling();
        string field = "rope_scaling";
        var type = Str(rs, "rope_type") ?? Str(rs, "type")
            ?? throw new ModelFormatException($"{origin}: field '{field}.rope_type' is missing");
        if (type == "su") type = "longrope"; // Phi-3's early name for the same scheme, as HF maps it
        if (!SupportedTypes.Contains(type))
            throw new ModelFormatException($"{origin}: field '{field}.rope_type' = '{type}' is not supported (supported: {string.Join(", ", SupportedTypes)})");
        double Req(string name) => Num(rs[name]) ?? throw new ModelFormatException($"{origin}: field '{field}.{name}' is missing for rope_type '{type}'");
        var original = (int?)Num(rs["original_max_position_embeddings"]);
        var r = new RopeScaling { Type = type };
        switch (type)
        {
            case "default":
                return r;
            case "linear":
                return r with { Factor = Positive(Req("factor"), "factor") };
            case "dynamic":
                return r with { Factor = Positive(Req("factor"), "factor"), OriginalMaxPositions = original ?? maxPositions };
            case "llama3":
                r = r with
                {
                    Factor = Positive(Req("factor"), "factor"), LowFreqFactor = Req("low_freq_factor"), HighFreqFactor = Req("high_freq_factor"),
                    OriginalMaxPositions = (int)Req("original_max_position_embeddings"),
                };
                if (r.HighFreqFactor <= r.LowFreqFactor)
                    throw new ModelFormatException($"{origin}: field '{field}.high_freq_factor' ({r.HighFreqFactor}) must exceed low_freq_factor ({r.LowFreqFactor})");
                return r;
            case "yarn":
                return r with
                {
                    Factor = Positive(Req("factor"), "factor"), OriginalMaxPositions = original ?? maxPositions,
                    AttentionFactor = Num(rs["attention_factor"]), BetaFast = Num(rs["beta_fast"]) ?? 32, BetaSlow = Num(rs["beta_slow"]) ?? 1,
                    Mscale = Num(rs["mscale"]), MscaleAllDim = Num(rs["mscale_all_dim"]),
                    Truncate = rs["truncate"] is JsonValue t && t.TryGetValue<bool>(out var tb) ? tb : true,
                };
            default: // longrope: Phi-3 keeps original_max_position_embeddings at the top level of config.json
                var orig = (int?)Num(config["original_max_position_embeddings"]) ?? original;
                var factor = orig is int o ? (double)maxPositions / o : Num(rs["factor"])
                    ?? throw new ModelFormatException($"{origin}: rope_type 'longrope' needs 'original_max_position_embeddings' or '{field}.factor'");
                float[] Factors(string name)
                {
                    var a = rs[name] as JsonArray ?? throw new ModelFormatException($"{origin}: field '{field}.{name}' is missing for rope_type 'longrope'");
                    if (a.Count != rotaryDim / 2)
                        throw new ModelFormatException($"{origin}: field '{field}.{name}' has {a.Count} values but the rotary dimension {rotaryDim} needs {rotaryDim / 2}");
                    return a.Select(x => (float)(Num(x) ?? throw new ModelFormatException($"{origin}: field '{field}.{name}' holds a non-number"))).ToArray();
                }
                return r with
                {
                    Factor = factor, OriginalMaxPositions = orig ?? (int)(maxPositions / factor),
                    AttentionFactor = Num(rs["attention_factor"]), ShortFactor = Factors("short_factor"), LongFactor = Factors("long_factor"),
                };
        }

        double Positive(double v, string name) => v > 0 ? v
            : throw new ModelFormatException($"{origin}: field '{field}.{name}' must be positive, got {v}");
    }

    /// <summary>
    /// Inverse frequencies [dim/2] (fp32) and the factor cos and sin are multiplied by, for a forward pass whose
    /// largest position is <paramref name="seqLen"/> − 1.
    /// </summary>
    public (Tensor InvFreq, double AttentionScaling) Frequencies(int dim, double theta, long seqLen, Device device)
    {
        using var scope = NewDisposeScope();
        // Every number handed to libtorch is held until the end (HeldScalars says why).
        var held = new List<Scalar>();
        Scalar S(double v)
        {
            var h = v.ToScalar();
            held.Add(h);
            return h;
        }
        try
        {
            var exponent = arange(0, dim, 2, dtype: ScalarType.Int64, device: device).to_type(ScalarType.Float32).div(S(dim));
            Tensor Plain(double b) => tensor((float)b, device: device).pow(exponent).reciprocal();
            Tensor inv;
            double scaling = 1.0;
            switch (Type)
            {
                case "linear":
                    inv = Plain(theta).div(S(Factor));
                    break;
                case "dynamic":
                {
                    var len = Math.Max(seqLen, OriginalMaxPositions);
                    var b = theta * Math.Pow(Factor * len / OriginalMaxPositions - (Factor - 1), dim / (double)(dim - 2));
                    inv = Plain(b);
                    break;
                }
                case "llama3":
                {
                    var baseInv = Plain(theta);
                    double lowWavelen = OriginalMaxPositions / LowFreqFactor, highWavelen = OriginalMaxPositions / HighFreqFactor;
                    var wavelen = full_like(baseInv, S(2 * Math.PI)).div(baseInv);
                    var llama = where(wavelen.gt(S(lowWavelen)), baseInv.div(S(Factor)), baseInv);
                    var smooth = full_like(wavelen, S(OriginalMaxPositions)).div(wavelen).sub(S(LowFreqFactor)).div(S(HighFreqFactor - LowFreqFactor));
                    var smoothed = smooth.neg().add(HeldScalars.One).mul(llama).div(S(Factor)).add(smooth.mul(llama));
                    var medium = wavelen.lt(S(highWavelen)).logical_not().logical_and(wavelen.gt(S(lowWavelen)).logical_not());
                    inv = where(medium, smoothed, llama);
                    break;
                }
                case "yarn":
                {
                    var posFreqs = tensor((float)theta, device: device).pow(exponent);
                    var extrapolation = posFreqs.reciprocal();
                    var interpolation = posFreqs.mul(S(Factor)).reciprocal();
                    double CorrectionDim(double rotations) =>
                        dim * Math.Log(OriginalMaxPositions / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
                    double low = CorrectionDim(BetaFast), high = CorrectionDim(BetaSlow);
                    if (Truncate) (low, high) = (Math.Floor(low), Math.Ceiling(high));
                    (low, high) = (Math.Max(low, 0), Math.Min(high, dim - 1));
                    if (low == high) high += 0.001;
                    var ramp = arange(dim / 2, dtype: ScalarType.Float32, device: device).sub(S(low)).div(S(high - low)).clamp(HeldScalars.Zero, HeldScalars.One);
                    var extrapolationFactor = ramp.neg().add(HeldScalars.One);
                    inv = interpolation.mul(extrapolationFactor.neg().add(HeldScalars.One)).add(extrapolation.mul(extrapolationFactor));
                    scaling = AttentionFactor ?? (Mscale is double m && MscaleAllDim is double mad && m != 0 && mad != 0
                        ? YarnMscale(Factor, m) / YarnMscale(Factor, mad)
                        : YarnMscale(Factor, 1));
                    break;
                }
                case "longrope":
                {
                    var ext = tensor(seqLen > OriginalMaxPositions ? LongFactor! : ShortFactor!, device: device);
                    inv = ext.mul(tensor((float)theta, device: device).pow(exponent)).reciprocal();
                    scaling = AttentionFactor ?? (Factor <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(Factor) / Math.Log(OriginalMaxPositions)));
                    break;
                }
                default:
                    inv = Plain(theta);
                    break;
            }
            return (inv.MoveToOuterDisposeScope(), scaling);
        }
        finally
        {
            foreach (var h in held) h.Dispose();
        }
    }

    static double YarnMscale(double scale, double mscale) => scale <= 1 ? 1.0 : 0.1 * mscale * Math.Log(scale) + 1.0;

    static string? Str(JsonObject o, string n) => o[n] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
    static double? Num(JsonNode? node) => ModelConfig.Number(node);
}
