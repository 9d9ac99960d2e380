using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>
/// A decoder-only causal LM whose parameter names are exactly the HF checkpoint's names, so loading and saving
/// is a name-for-name copy. Families differ only in embedding and layer bodies.
/// </summary>
public abstract class CausalLm : nn.Module
{
    public ModelConfig Config { get; }
    public PrefixEncoder? PromptEncoder { get; private set; }

    protected CausalLm(string name, ModelConfig config) : base(name) => Config = config;

    public static CausalLm Create(ModelConfig config) => config.Family switch
    {
        ModelFamily.Gpt2 => new Gpt2LmHeadModel(config),
        _ => new LlamaForCausalLm(config),
    };

    /// <summary>Logits [batch, new tokens, vocab]. With a cache, only the new tokens are given and the cache grows.</summary>
    public Tensor Forward(Tensor inputIds, KvCache? cache = null, Tensor? attentionMask = null)
    {
        var batch = inputIds.shape[0];
        var len = inputIds.shape[1];
        var past = cache?.Length ?? 0;
        if (past + len + (PromptEncoder?.NumVirtualTokens ?? 0) > Config.MaxPositions && Config.Family == ModelFamily.Gpt2)
            throw new ArgumentException($"sequence of {past + len} tokens (plus the prefix) exceeds the model's {Config.MaxPositions} positions");
        var device = inputIds.device;
        var prefix = PromptEncoder?.KeyValues(batch);
        var prefixLen = PromptEncoder?.NumVirtualTokens ?? 0;
        var positions = DecoderStep.PositionIds(batch, len, past, attentionMask, device);
        // HF + PEFT pass the prefix as past key/values, so real tokens start at position num_virtual_tokens; match it
        // so an exported prefix adapter behaves the same in transformers.
        if (prefixLen > 0) positions = positions.add(prefixLen);
        var step = new DecoderStep
        {
            Positions = positions,
            Cache = cache,
            Prefix = prefix,
            Mask = DecoderStep.BuildMask(batch, len, past, prefixLen, attentionMask, device),
        };
        return ForwardCore(inputIds, step);
    }

    internal abstract Tensor ForwardCore(Tensor inputIds, DecoderStep step);

    public KvCache NewCache() => new(Config.NumLayers);

    /// <summary>Every projection by module path (LoRA targets are chosen from these).</summary>
    /// <remarks>TorchSharp also lists modules under their C# backing-field names; the registered (HF) name comes first.</remarks>
    public IReadOnlyList<(string Path, Projection Module)> Projections()
    {
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        return named_modules().Where(m => m.module is Projection && !m.name.Contains('<') && seen.Add(m.module))
            .Select(m => (m.name, (Projection)m.module)).ToList();
    }

    /// <summary>The HF checkpoint tensors: all parameters except adapter ones (LoRA factors, prompt encoder).</summary>
    public IReadOnlyList<(string Name, Parameter Param)> BaseParameters() =>
        named_parameters().Where(p => !IsAdapterName(p.name)).Select(p => (p.name, p.parameter)).ToList();

    public static bool IsAdapterName(string name) =>
        name.Contains(".lora_A.") || name.Contains(".lora_B.") || name.StartsWith("prompt_encoder.", StringComparison.Ordinal);

    public void AttachPrefix(PrefixEncoder encoder)
    {
        if (PromptEncoder != null) throw new InvalidOperationException("a prompt encoder is already attached");
        PromptEncoder = encoder;
        register_module("prompt_encoder", encoder);
    }

    /// <summary>HF-style initialisation: N(0, 0.02) weights, zero biases, unit norms; GPT-2 scales residual projections.</summary>
    public void InitializeWeights(long seed)
    {
        using var _ = no_grad();
        var gen = new Generator((ulong)seed);
        foreach (var (name, p) in BaseParameters())
        {
            if (name.EndsWith(".bias")) p.zero_();
            else if (IsNormName(name)) p.fill_(1.0);
            else
            {
                var std = Config.Family == ModelFamily.Gpt2 && name.EndsWith("c_proj.weight")
                    ? 0.02 / Math.Sqrt(2.0 * Config.NumLayers) : 0.02;
                p.copy_(normal(0, std, p.shape, generator: gen));
            }
        }
    }

    static bool IsNormName(string n) =>
        n.Contains(".ln_") || n.Contains("ln_f.") || n.Contains("layernorm.") || n.EndsWith("norm.weight");
}

public sealed class Gpt2Attention : nn.Module
{
    public Projection c_attn { get; }
    public Projection c_proj { get; }
    readonly ModelConfig _c;
    readonly int _layer;
    public Gpt2Attention(ModelConfig c, int layer) : base("Gpt2Attention")
    {
        _c = c;
        _layer = layer;
        c_attn = new Projection(c.HiddenSize, 3L * c.HiddenSize, true, conv1dLayout: true);
        c_proj = new Projection(c.HiddenSize, c.HiddenSize, true, conv1dLayout: true);
        register_module("c_attn", c_attn);
        register_module("c_proj", c_proj);
    }

    internal Tensor Forward(Tensor x, DecoderStep step)
    {
        long b = x.shape[0], s = x.shape[1], h = _c.HiddenSize;
        var qkv = c_attn.forward(x).split(h, 2);
        Tensor Heads(Tensor t) => t.view(b, s, _c.NumHeads, _c.HeadDim).transpose(1, 2);
        var q = Heads(qkv[0]);
        if (_c.ScaleAttnByInverseLayerIdx) q = q.div(_layer + 1);
        var (k, v) = step.Extend(_layer, Heads(qkv[1]), Heads(qkv[2]));
        var o = step.Attend(q, k, v).transpose(1, 2).reshape(b, s, h);
        return c_proj.forward(o);
    }
}

public sealed class Gpt2Mlp : nn.Module
{
    public Projection c_fc { get; }
    public Projection c_proj { get; }
    readonly string _act;
    public Gpt2Mlp(ModelConfig c) : base("Gpt2Mlp")
    {
        _act = c.Activation;
        c_fc = new Projection(c.HiddenSize, c.IntermediateSize, true, conv1dLayout: true);
        c_proj = new Projection(c.IntermediateSize, c.HiddenSize, true, conv1dLayout: true);
        register_module("c_fc", c_fc);
        register_module("c_proj", c_proj);
    }
    internal Tensor Forward(Tensor x) => c_proj.forward(DecoderStep.Activate(c_fc.forward(x), _act));
}

public sealed class Gpt2Block : nn.Module
{
    public LayerNorm ln_1 { get; }
    public Gpt2Attention attn { get; }
    public LayerNorm ln_2 { get; }
    public Gpt2Mlp mlp { get; }
    public Gpt2Block(ModelConfig c, int layer) : base("Gpt2Block")
    {
        ln_1 = new LayerNorm(c.HiddenSize, c.NormEps);
        attn = new Gpt2Attention(c, layer);
        ln_2 = new LayerNorm(c.HiddenSize, c.NormEps);
        mlp = new Gpt2Mlp(c);
        register_module("ln_1", ln_1);
        register_module("attn", attn);
        register_module("ln_2", ln_2);
        register_module("mlp", mlp);
    }
    internal Tensor Forward(Tensor x, DecoderStep step)
    {
        var h = x.add(attn.Forward(ln_1.forward(x), step));
        return h.add(mlp.Forward(ln_2.forward(h)));
    }
}

public sealed class Gpt2Transformer : nn.Module
{
    public Embedding wte { get; }
    public Embedding wpe { get; }
    public LayerList<Gpt2Block> h { get; }
    public LayerNorm ln_f { get; }
    public Gpt2Transformer(ModelConfig c) : base("Gpt2Transformer")
    {
        wte = new Embedding(c.VocabSize, c.HiddenSize);
        wpe = new Embedding(c.MaxPositions, c.HiddenSize);
        h = new LayerList<Gpt2Block>(Enumerable.Range(0, c.NumLayers).Select(i => new Gpt2Block(c, i)));
        ln_f = new LayerNorm(c.HiddenSize, c.NormEps);
        register_module("wte", wte);
        register_module("wpe", wpe);
        register_module("h", h);
        register_module("ln_f", ln_f);
    }
}

/// <summary>GPT-2 (HF <c>GPT2LMHeadModel</c>): learned positions, pre-LayerNorm blocks, Conv1D projections.</summary>
public sealed class Gpt2LmHeadModel : CausalLm
{
    public Gpt2Transformer transformer { get; }
    public Projection? lm_head { get; }

    public Gpt2LmHeadModel(ModelConfig c) : base("Gpt2LmHeadModel", c)
    {
        transformer = new Gpt2Transformer(c);
        register_module("transformer", transformer);
        if (!c.TieWordEmbeddings)
        {
            lm_head = new Projection(c.HiddenSize, c.VocabSize, false);
            register_module("lm_head", lm_head);
        }
    }

    internal override Tensor ForwardCore(Tensor ids, DecoderStep step)
    {
        var x = transformer.wte.forward(ids).add(transformer.wpe.forward(step.Positions));
        foreach (var block in transformer.h.Items) x = block.Forward(x, step);
        x = transformer.ln_f.forward(x);
        return lm_head is null ? nn.functional.linear(x, transformer.wte.weight) : lm_head.forward(x);
    }
}

public sealed class LlamaAttention : nn.Module
{
    public Projection q_proj { get; }
    public Projection k_proj { get; }
    public Projection v_proj { get; }
    public Projection o_proj { get; }
    readonly ModelConfig _c;
    readonly int _layer;
    public LlamaAttention(ModelConfig c, int layer) : base("LlamaAttention")
    {
        _c = c;
        _layer = layer;
        q_proj = new Projection(c.HiddenSize, (long)c.NumHeads * c.HeadDim, c.QkvBias);
        k_proj = new Projection(c.HiddenSize, (long)c.NumKvHeads * c.HeadDim, c.QkvBias);
        v_proj = new Projection(c.HiddenSize, (long)c.NumKvHeads * c.HeadDim, c.QkvBias);
        o_proj = new Projection((long)c.NumHeads * c.HeadDim, c.HiddenSize, c.OutputBias);
        register_module("q_proj", q_proj);
        register_module("k_proj", k_proj);
        register_module("v_proj", v_proj);
        register_module("o_proj", o_proj);
    }

    internal Tensor Forward(Tensor x, DecoderStep step)
    {
        long b = x.shape[0], s = x.shape[1];
        var q = q_proj.forward(x).view(b, s, _c.NumHeads, _c.HeadDim).transpose(1, 2);
        var k = k_proj.forward(x).view(b, s, _c.NumKvHeads, _c.HeadDim).transpose(1, 2);
        var v = v_proj.forward(x).view(b, s, _c.NumKvHeads, _c.HeadDim).transpose(1, 2);
        q = Rotary.Apply(q, step.Cos!, step.Sin!);
        k = Rotary.Apply(k, step.Cos!, step.Sin!);
        (k, v) = step.Extend(_layer, k, v);
        var o = step.Attend(q, k, v).transpose(1, 2).reshape(b, s, (long)_c.NumHeads * _c.HeadDim);
        return o_proj.forward(o);
    }
}

public sealed class LlamaMlp : nn.Module
{
    public Projection gate_proj { get; }
    public Projection up_proj { get; }
    public Projection down_proj { get; }
    readonly string _act;
    public LlamaMlp(ModelConfig c) : base("LlamaMlp")
    {
        _act = c.Activation;
        gate_proj = new Projection(c.HiddenSize, c.IntermediateSize, c.MlpBias);
        up_proj = new Projection(c.HiddenSize, c.IntermediateSize, c.MlpBias);
        down_proj = new Projection(c.IntermediateSize, c.HiddenSize, c.MlpBias);
        register_module("gate_proj", gate_proj);
        register_module("up_proj", up_proj);
        register_module("down_proj", down_proj);
    }
    internal Tensor Forward(Tensor x) =>
        down_proj.forward(DecoderStep.Activate(gate_proj.forward(x), _act).mul(up_proj.forward(x)));
}

public sealed class LlamaDecoderLayer : nn.Module
{
    public RmsNorm input_layernorm { get; }
    public LlamaAttention self_attn { get; }
    public RmsNorm post_attention_layernorm { get; }
    public LlamaMlp mlp { get; }
    public LlamaDecoderLayer(ModelConfig c, int layer) : base("LlamaDecoderLayer")
    {
        self_attn = new LlamaAttention(c, layer);
        mlp = new LlamaMlp(c);
        input_layernorm = new RmsNorm(c.HiddenSize, c.NormEps);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.NormEps);
        register_module("self_attn", self_attn);
        register_module("mlp", mlp);
        register_module("input_layernorm", input_layernorm);
        register_module("post_attention_layernorm", post_attention_layernorm);
    }
    internal Tensor Forward(Tensor x, DecoderStep step)
    {
        var h = x.add(self_attn.Forward(input_layernorm.forward(x), step));
        return h.add(mlp.Forward(post_attention_layernorm.forward(h)));
    }
}

public sealed class LlamaModelBody : nn.Module
{
    public Embedding embed_tokens { get; }
    public LayerList<LlamaDecoderLayer> layers { get; }
    public RmsNorm norm { get; }
    public LlamaModelBody(ModelConfig c) : base("LlamaModel")
    {
        embed_tokens = new Embedding(c.VocabSize, c.HiddenSize);
        layers = new LayerList<LlamaDecoderLayer>(Enumerable.Range(0, c.NumLayers).Select(i => new LlamaDecoderLayer(c, i)));
        norm = new RmsNorm(c.HiddenSize, c.NormEps);
        register_module("embed_tokens", embed_tokens);
        register_module("layers", layers);
        register_module("norm", norm);
    }
}

/// <summary>LLaMA family (LLaMA, Mistral, Qwen2): RMSNorm, RoPE, SwiGLU, grouped-query attention.</summary>
public sealed class LlamaForCausalLm : CausalLm
{
    public LlamaModelBody model { get; }
    public Projection? lm_head { get; }

    public LlamaForCausalLm(ModelConfig c) : base("LlamaForCausalLM", c)
    {
        model = new LlamaModelBody(c);
        register_module("model", model);
        if (!c.TieWordEmbeddings)
        {
            lm_head = new Projection(c.HiddenSize, c.VocabSize, false);
            register_module("lm_head", lm_head);
        }
    }

    internal override Tensor ForwardCore(Tensor ids, DecoderStep step)
    {
        (step.Cos, step.Sin) = Rotary.Tables(step.Positions, Config.HeadDim, Config.RopeTheta);
        var x = model.embed_tokens.forward(ids);
        foreach (var layer in model.layers.Items) x = layer.Forward(x, step);
        x = model.norm.forward(x);
        return lm_head is null ? nn.functional.linear(x, model.embed_tokens.weight) : lm_head.forward(x);
    }
}

/// <summary>Rotary position embedding exactly as HF: cat(freqs, freqs) tables and rotate_half.</summary>
public static class Rotary
{
    public static (Tensor Cos, Tensor Sin) Tables(Tensor positions, int headDim, double theta)
    {
        using var scope = NewDisposeScope();
        // 1 / theta^(2i/d) in fp32, the same pow HF evaluates.
        var exponent = arange(0, headDim, 2, dtype: ScalarType.Int64, device: positions.device).to_type(ScalarType.Float32).div(headDim);
        var invFreq = tensor((float)theta, device: positions.device).pow(exponent).reciprocal();
        var freqs = positions.to_type(ScalarType.Float32).unsqueeze(-1).mul(invFreq); // [b, s, d/2]
        var emb = cat([freqs, freqs], -1).unsqueeze(1); // [b, 1, s, d]
        return (emb.cos().MoveToOuterDisposeScope(), emb.sin().MoveToOuterDisposeScope());
    }

    public static Tensor RotateHalf(Tensor x)
    {
        var half = x.shape[^1] / 2;
        return cat([x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1);
    }

    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin) => x.mul(cos).add(RotateHalf(x).mul(sin));
}
