using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

// The LLaMA family (HF modeling_llama; mistral, qwen2/3, phi3 and gemma 1/2/3 share it): RMSNorm, RoPE, gated MLP,
// grouped-query attention.
public sealed class LlamaAttention : nn.Module
{
    // Separate projections, or Phi-3's fused qkv_proj (queries, then keys, then values along the output).
    public Projection? q_proj { get; }
    public Projection? k_proj { get; }
    public Projection? v_proj { get; }
    public Projection? qkv_proj { get; }
    public Projection o_proj { get; }
    public RmsNorm? q_norm { get; }
    public RmsNorm? k_norm { get; }
    readonly ModelConfig _c;
    readonly int _layer;
    readonly bool _local;
    public LlamaAttention(ModelConfig c, int layer) : base("LlamaAttention")
    {
        _c = c;
        _layer = layer;
        _local = c.IsSliding(layer);
        long q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim;
        if (c.FusedProjections)
        {
            qkv_proj = new Projection(c.HiddenSize, q + 2 * kv, c.QkvBias);
            register_module("qkv_proj", qkv_proj);
        }
        else
        {
            q_proj = new Projection(c.HiddenSize, q, c.QkvBias);
            k_proj = new Projection(c.HiddenSize, kv, c.QkvBias);
            v_proj = new Projection(c.HiddenSize, kv, c.QkvBias);
            register_module("q_proj", q_proj);
            register_module("k_proj", k_proj);
            register_module("v_proj", v_proj);
        }
        o_proj = new Projection(q, c.HiddenSize, c.OutputBias);
        register_module("o_proj", o_proj);
        if (c.QkNorm)
        {
            q_norm = new RmsNorm(c.HeadDim, c.NormEps, c.GemmaNorm);
            k_norm = new RmsNorm(c.HeadDim, c.NormEps, c.GemmaNorm);
            register_module("q_norm", q_norm);
            register_module("k_norm", k_norm);
        }
    }

    internal Tensor Forward(Tensor x, DecoderStep step)
    {
        long b = x.shape[0], s = x.shape[1];
        Tensor q, k, v;
        if (qkv_proj is not null)
        {
            long qn = (long)_c.NumHeads * _c.HeadDim, kvn = (long)_c.NumKvHeads * _c.HeadDim;
            var qkv = qkv_proj.forward(x);
            (q, k, v) = (qkv.narrow(-1, 0, qn), qkv.narrow(-1, qn, kvn), qkv.narrow(-1, qn + kvn, kvn));
        }
        else (q, k, v) = (q_proj!.forward(x), k_proj!.forward(x), v_proj!.forward(x));
        q = q.reshape(b, s, _c.NumHeads, _c.HeadDim);
        k = k.reshape(b, s, _c.NumKvHeads, _c.HeadDim);
        if (q_norm is not null) (q, k) = (q_norm.forward(q), k_norm!.forward(k));
        (q, k) = (q.transpose(1, 2), k.transpose(1, 2));
        v = v.reshape(b, s, _c.NumKvHeads, _c.HeadDim).transpose(1, 2);
        var (cos, sin) = _local && step.LocalCos is not null ? (step.LocalCos, step.LocalSin!) : (step.Cos!, step.Sin!);
        q = Rotary.Apply(q, cos, sin);
        k = Rotary.Apply(k, cos, sin);
        (k, v) = step.Extend(_layer, k, v);
        var o = step.Attend(q, k, v, _local, _c.AttentionScale, _c.AttentionSoftcap).transpose(1, 2).reshape(b, s, (long)_c.NumHeads * _c.HeadDim);
        return o_proj.forward(o);
    }
}

public sealed class LlamaMlp : nn.Module
{
    // gate/up separately, or Phi-3's fused gate_up_proj (gate first, then up).
    public Projection? gate_proj { get; }
    public Projection? up_proj { get; }
    public Projection? gate_up_proj { get; }
    public Projection down_proj { get; }
    readonly string _act;
    readonly long _inter;
    public LlamaMlp(ModelConfig c) : base("LlamaMlp")
    {
        _act = c.Activation;
        _inter = c.IntermediateSize;
        if (c.FusedProjections)
        {
            gate_up_proj = new Projection(c.HiddenSize, 2L * c.IntermediateSize, c.MlpBias);
            register_module("gate_up_proj", gate_up_proj);
        }
        else
        {
            gate_proj = new Projection(c.HiddenSize, c.IntermediateSize, c.MlpBias);
            up_proj = new Projection(c.HiddenSize, c.IntermediateSize, c.MlpBias);
            register_module("gate_proj", gate_proj);
            register_module("up_proj", up_proj);
        }
        down_proj = new Projection(c.IntermediateSize, c.HiddenSize, c.MlpBias);
        register_module("down_proj", down_proj);
    }
    internal Tensor Forward(Tensor x)
    {
        Tensor gate, up;
        if (gate_up_proj is not null)
        {
            var gu = gate_up_proj.forward(x);
            (gate, up) = (gu.narrow(-1, 0, _inter), gu.narrow(-1, _inter, _inter));
        }
        else (gate, up) = (gate_proj!.forward(x), up_proj!.forward(x));
        return down_proj.forward(DecoderStep.Activate(gate, _act).mul(up));
    }
}

public sealed class LlamaDecoderLayer : nn.Module
{
    public RmsNorm input_layernorm { get; }
    public LlamaAttention self_attn { get; }
    public RmsNorm post_attention_layernorm { get; }
    public RmsNorm? pre_feedforward_layernorm { get; }
    public RmsNorm? post_feedforward_layernorm { get; }
    public LlamaMlp mlp { get; }
    public LlamaDecoderLayer(ModelConfig c, int layer) : base("LlamaDecoderLayer")
    {
        self_attn = new LlamaAttention(c, layer);
        mlp = new LlamaMlp(c);
        input_layernorm = new RmsNorm(c.HiddenSize, c.NormEps, c.GemmaNorm);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.NormEps, c.GemmaNorm);
        register_module("self_attn", self_attn);
        register_module("mlp", mlp);
        register_module("input_layernorm", input_layernorm);
        register_module("post_attention_layernorm", post_attention_layernorm);
        if (c.SandwichNorms)
        {
            pre_feedforward_layernorm = new RmsNorm(c.HiddenSize, c.NormEps, c.GemmaNorm);
            post_feedforward_layernorm = new RmsNorm(c.HiddenSize, c.NormEps, c.GemmaNorm);
            register_module("pre_feedforward_layernorm", pre_feedforward_layernorm);
            register_module("post_feedforward_layernorm", post_feedforward_layernorm);
        }
    }
    internal Tensor Forward(Tensor x, DecoderStep step)
    {
        var attended = self_attn.Forward(input_layernorm.forward(x), step);
        if (pre_feedforward_layernorm is null)
        {
            var h = x.add(attended);
            return h.add(mlp.Forward(post_attention_layernorm.forward(h)));
        }
        // Gemma 2/3: post_attention_layernorm normalises the attention output, and the MLP has a norm on both sides.
        var g = x.add(post_attention_layernorm.forward(attended));
        return g.add(post_feedforward_layernorm!.forward(mlp.Forward(pre_feedforward_layernorm.forward(g))));
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
        norm = new RmsNorm(c.HiddenSize, c.NormEps, c.GemmaNorm);
        register_module("embed_tokens", embed_tokens);
        register_module("layers", layers);
        register_module("norm", norm);
    }
}

/// <summary>
/// LLaMA family (LLaMA 2/3, Mistral, Qwen2/2.5, Phi-3, Gemma): RMSNorm, RoPE, gated MLP, grouped-query attention.
/// Phi-3 fuses projections; Gemma scales embeddings by √hidden and norms by (1 + w).
/// </summary>
public sealed class LlamaForCausalLm : CausalLm
{
    public LlamaModelBody model { get; }
    public Projection? lm_head { get; }
    public override Parameter InputEmbeddings => model.embed_tokens.weight;

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
        var x = model.embed_tokens.forward(ids);
        // HF computes the tables in fp32 and casts them to the activations' dtype.
        (Tensor, Tensor) Cast((Tensor Cos, Tensor Sin) t) => t.Cos.dtype == x.dtype ? t : (t.Cos.to_type(x.dtype), t.Sin.to_type(x.dtype));
        (step.Cos, step.Sin) = Cast(Rotary.Tables(step.Positions, Config.Rope, Config.RopeTheta, Config.RotaryDim));
        if (Config.LocalRopeTheta is double local)
            (step.LocalCos, step.LocalSin) = Cast(Rotary.Tables(step.Positions, new RopeScaling(), local, Config.RotaryDim));
        // HF rounds √hidden to the activations' dtype before multiplying.
        if (Config.GemmaNorm) x = x.mul(tensor(Math.Sqrt(Config.HiddenSize), dtype: x.dtype));
        for (int i = 0; i < model.layers.Items.Count; i++) x = step.Capture(i, model.layers.Items[i].Forward(x, step));
        x = model.norm.forward(x);
        var logits = lm_head is null ? nn.functional.linear(x, model.embed_tokens.weight) : lm_head.forward(x);
        if (Config.FinalSoftcap is not double cap) return logits;
        using var capped = cap.ToScalar();
        return logits.div(capped).tanh().mul(capped);
    }
}

/// <summary>Rotary position embedding exactly as HF: cat(freqs, freqs) tables and rotate_half, on the leading rotary dims.</summary>
public static class Rotary
{
    public static (Tensor Cos, Tensor Sin) Tables(Tensor positions, RopeScaling rope, double theta, int rotaryDim)
    {
        using var scope = NewDisposeScope();
        // Length-dependent scalings (dynamic NTK, LongRoPE) see the largest position of this pass, as HF's dynamic update does.
        var seqLen = rope.DependsOnLength ? positions.max().ToInt64() + 1 : 0;
        var (invFreq, scaling) = rope.Frequencies(rotaryDim, theta, seqLen, positions.device);
        var freqs = positions.to_type(ScalarType.Float32).unsqueeze(-1).mul(invFreq); // [b, s, d/2]
        var emb = cat([freqs, freqs], -1).unsqueeze(1); // [b, 1, s, d]
        var (cos, sin) = (emb.cos(), emb.sin());
        if (scaling != 1.0)
        {
            using var scaled = scaling.ToScalar();
            (cos, sin) = (cos.mul(scaled), sin.mul(scaled));
        }
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    public static Tensor RotateHalf(Tensor x)
    {
        var half = x.shape[^1] / 2;
        return cat([x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1);
    }

    /// <summary>Rotates the first cos.shape[-1] dims of each head; any remaining dims (partial rotary) pass unchanged.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        var rot = cos.shape[^1];
        if (rot == x.shape[^1]) return x.mul(cos).add(RotateHalf(x).mul(sin));
        var head = x.narrow(-1, 0, rot);
        return cat([head.mul(cos).add(RotateHalf(head).mul(sin)), x.narrow(-1, rot, x.shape[^1] - rot)], -1);
    }
}
