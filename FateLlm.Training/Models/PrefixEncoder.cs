using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>The optional reparameterisation MLP, named as PEFT's <c>transform.0</c> / <c>transform.2</c>.</summary>
public sealed class PrefixMlp : nn.Module
{
    public Projection First { get; }
    public Projection Second { get; }
    public PrefixMlp(long input, long hidden, long output) : base("PrefixMlp")
    {
        First = new Projection(input, hidden, true);
        Second = new Projection(hidden, output, true);
        register_module("0", First);
        register_module("2", Second);
    }
    public Tensor Forward(Tensor x) => Second.forward(First.forward(x).tanh());
}

/// <summary>
/// P-Tuning v2 / prefix tuning (Li &amp; Liang 2021; Liu et al. 2022): trainable key/value prefixes of
/// <see cref="NumVirtualTokens"/> slots for every layer, entering attention through the past-key-value path.
/// Flat layout [tokens, layers·2·kv_heads·head_dim] ordered (layer, key|value, head, dim), as PEFT's
/// <c>prompt_embeddings</c>, so the export is a plain copy.
/// </summary>
public sealed class PrefixEncoder : nn.Module
{
    public Embedding embedding { get; }
    public PrefixMlp? transform { get; }
    public int NumVirtualTokens { get; }
    readonly ModelConfig _c;

    public PrefixEncoder(ModelConfig c, int numVirtualTokens, bool projection, int encoderHidden, double initStd, Generator randomness) : base("PrefixEncoder")
    {
        if (numVirtualTokens <= 0) throw new ArgumentOutOfRangeException(nameof(numVirtualTokens), "num_virtual_tokens must be positive");
        _c = c;
        NumVirtualTokens = numVirtualTokens;
        var flat = FlatWidth(c);
        embedding = new Embedding(numVirtualTokens, projection ? c.HiddenSize : flat);
        using (no_grad()) embedding.weight.normal_(0, initStd, randomness);
        register_module("embedding", embedding);
        if (projection)
        {
            transform = new PrefixMlp(c.HiddenSize, encoderHidden, flat);
            using (no_grad())
                foreach (var p in new[] { transform.First, transform.Second })
                {
                    Projection.KaimingUniform(p.weight, randomness);
                    p.bias!.zero_();
                }
            register_module("transform", transform);
        }
    }

    public static long FlatWidth(ModelConfig c) => 2L * c.NumLayers * c.NumKvHeads * c.HeadDim;

    /// <summary>The effective prefix [tokens, flat width] (the MLP folded in): what PEFT exports.</summary>
    public Tensor PromptEmbeddings()
    {
        var w = embedding.weight;
        return transform is null ? w : transform.Forward(w);
    }

    /// <summary>Per layer (key, value), each [batch, kv_heads, tokens, head_dim].</summary>
    public IReadOnlyList<(Tensor Key, Tensor Value)> KeyValues(long batch)
    {
        var kv = PromptEmbeddings()
            .view(NumVirtualTokens, 2L * _c.NumLayers, _c.NumKvHeads, _c.HeadDim)
            .permute(1, 2, 0, 3); // [L*2, heads, P, d]
        var result = new List<(Tensor, Tensor)>(_c.NumLayers);
        for (int l = 0; l < _c.NumLayers; l++)
            result.Add((kv[2 * l].unsqueeze(0).expand(batch, -1, -1, -1), kv[2 * l + 1].unsqueeze(0).expand(batch, -1, -1, -1)));
        return result;
    }
}
