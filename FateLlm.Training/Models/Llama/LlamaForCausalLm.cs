using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

// The LLaMA family (HF modeling_llama; mistral and qwen2 share it): RMSNorm, RoPE, SwiGLU, grouped-query attention.
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
