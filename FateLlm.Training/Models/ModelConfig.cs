using System.Text.Json;
using System.Text.Json.Nodes;

namespace FateLlm.Training.Models;

public enum ModelFamily { Gpt2, Llama }

/// <summary>Raised for a model folder or config we cannot use; the message names the file, field or tensor.</summary>
public sealed class ModelFormatException(string message) : Exception(message);

/// <summary>
/// The fields of a HF <c>config.json</c> that shape a decoder LM, normalised across families (GPT-2 names
/// <c>n_embd</c>, LLaMA names <c>hidden_size</c>). The original JSON is kept so a save round-trips fields we do not use.
/// </summary>
public sealed record ModelConfig
{
    public required string ModelType { get; init; }
    public ModelFamily Family => ModelType == "gpt2" ? ModelFamily.Gpt2 : ModelFamily.Llama;
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int IntermediateSize { get; init; }
    public required int MaxPositions { get; init; }
    public double NormEps { get; init; } = 1e-5;
    public double RopeTheta { get; init; } = 10000.0;
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Bias on q/k/v projections (Qwen2 always; LLaMA when <c>attention_bias</c>).</summary>
    public bool QkvBias { get; init; }
    /// <summary>Bias on the attention output projection (LLaMA <c>attention_bias</c>).</summary>
    public bool OutputBias { get; init; }
    public bool MlpBias { get; init; }
    public string Activation { get; init; } = "gelu_new";
    public bool ScaleAttnByInverseLayerIdx { get; init; }
    public RopeScaling Rope { get; init; } = new();
    /// <summary>Leading dimensions of each head that RoPE rotates (Phi-3's <c>partial_rotary_factor</c>); the rest pass through.</summary>
    public int RotaryDim { get; init; }
    /// <summary>Keys further back than this many positions are masked (Mistral, Phi-3, Gemma 2/3 <c>sliding_window</c>).</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Which layers the window applies to (Gemma 2/3 <c>layer_types</c>); null: every layer, when there is a window.</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }
    /// <summary>Gemma 3: the RoPE base of sliding layers, which are never rope-scaled (<c>rope_local_base_freq</c>).</summary>
    public double? LocalRopeTheta { get; init; }
    /// <summary>Qwen3, Gemma 3: RMSNorm over each query and key head before RoPE (<c>q_norm</c>, <c>k_norm</c>).</summary>
    public bool QkNorm { get; init; }
    /// <summary>Gemma 2/3: norms after attention and around the MLP as well as before (<c>pre/post_feedforward_layernorm</c>).</summary>
    public bool SandwichNorms { get; init; }
    /// <summary>Attention score scale when it is not 1/√head_dim (Gemma 2/3 <c>query_pre_attn_scalar</c>^−½).</summary>
    public double? AttentionScale { get; init; }
    /// <summary>Gemma 2: scores become cap·tanh(score/cap) before the mask (<c>attn_logit_softcapping</c>).</summary>
    public double? AttentionSoftcap { get; init; }
    /// <summary>Gemma 2: logits become cap·tanh(logit/cap) (<c>final_logit_softcapping</c>).</summary>
    public double? FinalSoftcap { get; init; }
    /// <summary>Phi-3: one <c>qkv_proj</c> and one <c>gate_up_proj</c> instead of separate projections.</summary>
    public bool FusedProjections { get; init; }
    /// <summary>Gemma 1/2/3: RMSNorm multiplies by (1 + w), and embeddings are scaled by √hidden.</summary>
    public bool GemmaNorm { get; init; }
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    public int? PadTokenId { get; init; }
    public JsonObject Raw { get; init; } = new();

    public static readonly string[] SupportedModelTypes = ["gpt2", "llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3_text"];

    /// <summary>Whether layer <paramref name="layer"/> attends through the sliding window.</summary>
    public bool IsSliding(int layer) => SlidingWindow is not null && (SlidingLayers is null || SlidingLayers[layer]);

    // Families whose attention or layers differ from what is implemented: refused with the reason, not loaded wrongly.
    static readonly Dictionary<string, string> Refused = new()
    {
        ["gemma3"] = "the multimodal Gemma 3 (a vision tower, the text model under language_model.*) is not implemented; text-only gemma3_text checkpoints (Gemma-3-1b) are",
        ["phi"] = "Phi-1/2 (parallel attention and MLP, LayerNorm, partial RoPE dense layer) is not implemented; Phi-3 is",
        ["phi3small"] = "block-sparse attention is not implemented",
        ["qwen3_moe"] = "mixture-of-experts layers are not implemented",
        ["mixtral"] = "mixture-of-experts layers are not implemented",
        ["qwen2_moe"] = "mixture-of-experts layers are not implemented",
    };

    public static ModelConfig Load(string path)
    {
        if (!File.Exists(path)) throw new ModelFormatException($"{path}: config.json not found");
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new ModelFormatException($"{path}: not valid JSON ({e.Message})"); }
        return FromJson(o, path);
    }

    public static ModelConfig FromJson(JsonObject o, string origin = "config.json")
    {
        var type = Str(o, "model_type") ?? throw new ModelFormatException($"{origin}: field 'model_type' is missing");
        if (Refused.TryGetValue(type, out var why))
            throw new ModelFormatException($"{origin}: model_type '{type}' is not supported: {why} (supported: {string.Join(", ", SupportedModelTypes)})");
        if (!SupportedModelTypes.Contains(type))
            throw new ModelFormatException($"{origin}: model_type '{type}' is not supported (supported: {string.Join(", ", SupportedModelTypes)})");
        int Req(params string[] names) => names.Select(n => Int(o, n)).FirstOrDefault(v => v.HasValue)
            ?? throw new ModelFormatException($"{origin}: field '{names[0]}' is missing");
        if (type == "gpt2")
        {
            var hidden = Req("n_embd", "hidden_size");
            var heads = Req("n_head", "num_attention_heads");
            if (hidden % heads != 0) throw new ModelFormatException($"{origin}: n_embd {hidden} is not divisible by n_head {heads}");
            if (o["reorder_and_upcast_attn"]?.GetValue<bool>() == true)
                throw new ModelFormatException($"{origin}: field 'reorder_and_upcast_attn' = true is not supported");
            return new ModelConfig
            {
                ModelType = type, Raw = o,
                VocabSize = Req("vocab_size"), HiddenSize = hidden, NumLayers = Req("n_layer", "num_hidden_layers"),
                NumHeads = heads, NumKvHeads = heads, HeadDim = hidden / heads,
                IntermediateSize = Int(o, "n_inner") ?? 4 * hidden,
                MaxPositions = Req("n_positions", "max_position_embeddings"),
                NormEps = Dbl(o, "layer_norm_epsilon") ?? 1e-5,
                TieWordEmbeddings = Bool(o, "tie_word_embeddings") ?? true,
                QkvBias = true, OutputBias = true, MlpBias = true,
                Activation = Str(o, "activation_function") ?? "gelu_new",
                ScaleAttnByInverseLayerIdx = Bool(o, "scale_attn_by_inverse_layer_idx") ?? false,
                BosTokenId = FirstId(o, "bos_token_id"), EosTokenId = FirstId(o, "eos_token_id"), PadTokenId = FirstId(o, "pad_token_id"),
            };
        }
        var h = Req("hidden_size");
        var nh = Req("num_attention_heads");
        var attnBias = Bool(o, "attention_bias") ?? false;
        var headDim = Int(o, "head_dim") ?? h / nh;
        var partial = Dbl(o, "partial_rotary_factor") ?? 1.0;
        if (partial is <= 0 or > 1) throw new ModelFormatException($"{origin}: field 'partial_rotary_factor' = {partial} must be in (0, 1]");
        var rotaryDim = (int)(headDim * partial);
        var maxPositions = Int(o, "max_position_embeddings") ?? 2048;
        // Qwen2/3 declare a window but apply it only with use_sliding_window, and then only above max_window_layers.
        if (type is "qwen2" or "qwen3" && Bool(o, "use_sliding_window") == true)
            throw new ModelFormatException($"{origin}: field 'use_sliding_window' = true is not supported for {type} (per-layer windows from 'max_window_layers'); the Qwen2.5 and Qwen3 releases set it false");
        var sandwich = type is "gemma2" or "gemma3_text";
        int? window = type is "mistral" or "phi3" || sandwich ? Int(o, "sliding_window") : null;
        if (window is <= 0) throw new ModelFormatException($"{origin}: field 'sliding_window' = {window} must be positive");
        double? Cap(string field) => Dbl(o, field) switch
        {
            null or 0 => null,
            double cap when !sandwich => throw new ModelFormatException($"{origin}: field '{field}' = {cap} (logit soft-capping) is not supported for {type}"),
            < 0 and var cap => throw new ModelFormatException($"{origin}: field '{field}' = {cap} must be positive"),
            var cap => cap,
        };
        var gemma = type is "gemma" || sandwich;
        var cfg = new ModelConfig
        {
            ModelType = type, Raw = o,
            VocabSize = Req("vocab_size"), HiddenSize = h, NumLayers = Req("num_hidden_layers"),
            NumHeads = nh, NumKvHeads = Int(o, "num_key_value_heads") ?? nh,
            HeadDim = headDim,
            IntermediateSize = Req("intermediate_size"),
            MaxPositions = maxPositions,
            NormEps = Dbl(o, "rms_norm_eps") ?? 1e-6,
            RopeTheta = Dbl(o, "rope_theta") ?? 10000.0,
            Rope = RopeScaling.Parse(o, rotaryDim, maxPositions, origin),
            RotaryDim = rotaryDim,
            SlidingWindow = window,
            SlidingLayers = sandwich && window is not null ? LayerTypes(o, type, Req("num_hidden_layers"), origin) : null,
            LocalRopeTheta = type == "gemma3_text" ? Dbl(o, "rope_local_base_freq") ?? 10000.0 : null,
            QkNorm = type is "qwen3" or "gemma3_text",
            SandwichNorms = sandwich,
            AttentionScale = sandwich ? Math.Pow(Dbl(o, "query_pre_attn_scalar") ?? headDim, -0.5) : null,
            AttentionSoftcap = Cap("attn_logit_softcapping"),
            FinalSoftcap = Cap("final_logit_softcapping"),
            FusedProjections = type == "phi3",
            GemmaNorm = gemma,
            // Gemma always ties its head; transformers' Gemma configs default it true.
            TieWordEmbeddings = Bool(o, "tie_word_embeddings") ?? gemma,
            QkvBias = type == "qwen2" || attnBias,
            OutputBias = type != "qwen2" && attnBias,
            MlpBias = Bool(o, "mlp_bias") ?? false,
            // Gemma's released configs say hidden_act "gelu" but HF runs the tanh approximation named by hidden_activation.
            Activation = gemma ? Str(o, "hidden_activation") ?? "gelu_pytorch_tanh" : Str(o, "hidden_act") ?? "silu",
            BosTokenId = FirstId(o, "bos_token_id"), EosTokenId = FirstId(o, "eos_token_id"), PadTokenId = FirstId(o, "pad_token_id"),
        };
        if (cfg.NumHeads % cfg.NumKvHeads != 0)
            throw new ModelFormatException($"{origin}: num_attention_heads {cfg.NumHeads} is not a multiple of num_key_value_heads {cfg.NumKvHeads}");
        if (cfg.RotaryDim % 2 != 0) throw new ModelFormatException($"{origin}: rotary dimension {cfg.RotaryDim} (head_dim × partial_rotary_factor) must be even for RoPE");
        return cfg;
    }

    /// <summary>
    /// Gemma 2/3: <c>layer_types</c> when the config lists them, else what transformers derives: every
    /// <c>sliding_window_pattern</c>-th layer global (Gemma 3, pattern 6 by default), every second one (Gemma 2).
    /// </summary>
    static IReadOnlyList<bool> LayerTypes(JsonObject o, string type, int layers, string origin)
    {
        if (o["layer_types"] is JsonArray listed)
        {
            if (listed.Count != layers)
                throw new ModelFormatException($"{origin}: field 'layer_types' lists {listed.Count} layers but num_hidden_layers is {layers}");
            return listed.Select((t, i) => (t is JsonValue v && v.TryGetValue<string>(out var name) ? name : null) switch
            {
                "sliding_attention" => true,
                "full_attention" => false,
                _ => throw new ModelFormatException($"{origin}: field 'layer_types[{i}]' = {listed[i]?.ToJsonString()} must be 'sliding_attention' or 'full_attention'"),
            }).ToArray();
        }
        var pattern = type == "gemma3_text" ? Int(o, "sliding_window_pattern") ?? 6 : 2;
        if (pattern < 1) throw new ModelFormatException($"{origin}: field 'sliding_window_pattern' = {pattern} must be at least 1");
        return Enumerable.Range(0, layers).Select(i => (i + 1) % pattern != 0).ToArray();
    }

    /// <summary>Writes config.json: the original fields, plus <c>architectures</c> when absent and <c>torch_dtype</c>
    /// (the dtype the weights beside it are written in, when given).</summary>
    public void Save(string path, string? torchDtype = null)
    {
        var o = JsonNode.Parse(Raw.ToJsonString())!.AsObject();
        o["architectures"] ??= new JsonArray(Family == ModelFamily.Gpt2 ? "GPT2LMHeadModel"
            : ModelType switch
            {
                "qwen2" => "Qwen2ForCausalLM", "qwen3" => "Qwen3ForCausalLM", "mistral" => "MistralForCausalLM", "phi3" => "Phi3ForCausalLM",
                "gemma" => "GemmaForCausalLM", "gemma2" => "Gemma2ForCausalLM", "gemma3_text" => "Gemma3ForCausalLM",
                _ => "LlamaForCausalLM",
            });
        if (torchDtype is not null) o["torch_dtype"] = torchDtype;
        else o["torch_dtype"] ??= "float32";
        File.WriteAllText(path, o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public long ParameterCount()
    {
        long h = HiddenSize, v = VocabSize, L = NumLayers, kv = NumKvHeads * HeadDim, q = NumHeads * HeadDim, i = IntermediateSize;
        if (Family == ModelFamily.Gpt2)
        {
            var layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
            return v * h + MaxPositions * h + L * layer + 2 * h + (TieWordEmbeddings ? 0 : v * h);
        }
        var attn = h * q + 2 * h * kv + q * h + (QkvBias ? q + 2 * kv : 0) + (OutputBias ? h : 0);
        var mlp = 3 * h * i + (MlpBias ? 2 * i + h : 0);
        var norms = (SandwichNorms ? 4 : 2) * h + (QkNorm ? 2L * HeadDim : 0);
        return v * h + L * (attn + mlp + norms) + h + (TieWordEmbeddings ? 0 : v * h);
    }

    static string? Str(JsonObject o, string n) => o[n] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
    static int? Int(JsonObject o, string n) => Number(o[n]) is double d ? (int)d : null;
    static double? Dbl(JsonObject o, string n) => Number(o[n]);
    // Values built in code are typed (int, long, double); parsed ones are JsonElements: read both through their JSON text.
    internal static double? Number(JsonNode? node) =>
        node is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? double.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture) : null;
    static bool? Bool(JsonObject o, string n) => o[n] is JsonValue v && v.TryGetValue<bool>(out var b) ? b : null;
    // Some configs list several EOS ids; the first is the one generation stops on by default.
    static int? FirstId(JsonObject o, string n) => o[n] switch
    {
        JsonArray a when a.Count > 0 => Number(a[0]) is double d ? (int)d : null,
        var v => Number(v) is double d ? (int)d : null,
    };
}
