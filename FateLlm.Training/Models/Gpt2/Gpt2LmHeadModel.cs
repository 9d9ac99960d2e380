using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

// GPT-2 (HF modeling_gpt2): learned positions, LayerNorm, GELU-new, Conv1D weights kept in HF's [in, out] layout.
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
        if (_c.ScaleAttnByInverseLayerIdx)
        {
            using var layer = (_layer + 1).ToScalar();
            q = q.div(layer);
        }
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
    public override Parameter InputEmbeddings => transformer.wte.weight;

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
        for (int i = 0; i < transformer.h.Items.Count; i++) x = step.Capture(i, transformer.h.Items[i].Forward(x, step));
        x = transformer.ln_f.forward(x);
        return lm_head is null ? nn.functional.linear(x, transformer.wte.weight) : lm_head.forward(x);
    }
}
