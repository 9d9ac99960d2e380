using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>A LoRA factor: one trainable matrix under the name <c>weight</c>, as PEFT names <c>lora_A.weight</c>.</summary>
public sealed class LoraFactor : nn.Module
{
    public Parameter weight { get; }
    public LoraFactor(long rows, long cols) : base("LoraFactor")
    {
        weight = new Parameter(zeros(rows, cols));
        register_parameter("weight", weight);
    }
}

/// <summary>
/// An affine projection y = xW^T + b with an optional LoRA branch (Hu et al. 2021):
/// y += dropout(x) A^T B^T · alpha / r. GPT-2's Conv1D stores W as [in, out]; we keep that layout
/// (<see cref="Conv1DLayout"/>) so HF tensors load and save without transposes.
/// </summary>
public sealed class Projection : nn.Module<Tensor, Tensor>
{
    public Parameter weight { get; }
    public Parameter? bias { get; private set; }
    public bool Conv1DLayout { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public LoraFactor? LoraA { get; private set; }
    public LoraFactor? LoraB { get; private set; }
    public double LoraScaling { get; private set; }
    double _loraDropout;
    Generator? _randomness;
    public bool Merged { get; private set; }
    /// <summary>Computes the base projection alone, as PEFT's <c>disable_adapter()</c> (a DPO reference without a second copy).</summary>
    public bool LoraDisabled { get; set; }

    public Projection(long inFeatures, long outFeatures, bool hasBias, bool conv1dLayout = false) : base("Projection")
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Conv1DLayout = conv1dLayout;
        weight = new Parameter(conv1dLayout ? empty(inFeatures, outFeatures, dtype: BaseDtype.Current) : empty(outFeatures, inFeatures, dtype: BaseDtype.Current));
        register_parameter("weight", weight);
        if (hasBias)
        {
            bias = new Parameter(zeros(outFeatures, dtype: BaseDtype.Current));
            register_parameter("bias", bias);
        }
    }

    public bool HasLora => LoraA != null;

    /// <param name="randomness">The model's generator: A's initialisation now, the dropout masks while training.</param>
    public void AddLora(int r, double alpha, double dropout, Generator randomness)
    {
        if (HasLora) throw new InvalidOperationException("LoRA is already attached to this projection");
        if (r <= 0) throw new ArgumentOutOfRangeException(nameof(r), "LoRA rank must be positive");
        LoraA = new LoraFactor(r, InFeatures);
        LoraB = new LoraFactor(OutFeatures, r);
        using (no_grad())
            KaimingUniform(LoraA.weight, randomness);
        // B = 0 so the adapted model starts exactly at the base model.
        LoraScaling = alpha / r;
        _loraDropout = dropout;
        _randomness = randomness;
        register_module("lora_A", LoraA);
        register_module("lora_B", LoraB);
    }

    /// <summary>The LoRA update ΔW in this projection's weight layout.</summary>
    public Tensor LoraDelta()
    {
        if (LoraA is null || LoraB is null) throw new InvalidOperationException("no LoRA attached");
        var d = LoraB.weight.matmul(LoraA.weight).mul(LoraScaling);
        return Conv1DLayout ? d.t() : d;
    }

    public void Merge()
    {
        if (!HasLora || Merged) return;
        using var _ = no_grad();
        using var d = LoraDelta();
        weight.add_(d);
        Merged = true;
    }

    public void Unmerge()
    {
        if (!HasLora || !Merged) return;
        using var _ = no_grad();
        using var d = LoraDelta();
        weight.sub_(d);
        Merged = false;
    }

    public override Tensor forward(Tensor x)
    {
        var y = Conv1DLayout
            ? (bias is null ? x.matmul(weight) : addmm(bias, x.reshape(-1, InFeatures), weight, 1, 1).reshape(LeadingShape(x, OutFeatures)))
            : nn.functional.linear(x, weight, bias);
        if (LoraA is null || LoraB is null || Merged || LoraDisabled) return y;
        var h = training && _loraDropout > 0 ? Dropout(x) : x;
        // Adapters train in their own dtype (fp32) on a base that may stay bf16: cast in, and the update back.
        if (h.dtype != LoraA.weight.dtype) h = h.to_type(LoraA.weight.dtype);
        using var scaling = LoraScaling.ToScalar();
        var delta = nn.functional.linear(nn.functional.linear(h, LoraA.weight), LoraB.weight).mul_(scaling);
        return y.add_(delta.dtype == y.dtype ? delta : delta.to_type(y.dtype));
    }

    /// <summary>Inverted dropout with the model's generator: the same masks as torch's dropout drawing from a generator seeded alike.</summary>
    Tensor Dropout(Tensor x)
    {
        var keep = 1 - _loraDropout;
        using var kept = keep.ToScalar();
        using var noise = empty_like(x).bernoulli_(keep, _randomness).div_(kept);
        return x.mul(noise);
    }

    /// <summary>
    /// torch's kaiming_uniform_(w, a = √5), the PEFT and nn.Linear default, with a generator: U(−1/√fan_in, 1/√fan_in).
    /// (TorchSharp's init functions either take no generator or, for uniform_, do not draw as Tensor.uniform_ does.)
    /// </summary>
    public static void KaimingUniform(Tensor weight, Generator randomness)
    {
        var bound = 1 / Math.Sqrt(weight.shape[1]);
        weight.uniform_(-bound, bound, randomness);
    }

    static long[] LeadingShape(Tensor x, long last)
    {
        var s = x.shape.ToArray();
        s[^1] = last;
        return s;
    }
}

/// <summary>
/// RMSNorm as HF computes it, in fp32: LLaMA casts back before x · weight; Gemma multiplies by (1 + weight) in fp32
/// and then casts (its weights are stored as offsets from one).
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight { get; }
    readonly double _eps;
    readonly bool _plusOne;
    public RmsNorm(long dim, double eps, bool plusOne = false) : base("RmsNorm")
    {
        _eps = eps;
        _plusOne = plusOne;
        weight = new Parameter(plusOne ? zeros(dim, dtype: BaseDtype.Current) : ones(dim, dtype: BaseDtype.Current));
        register_parameter("weight", weight);
    }
    public bool PlusOne => _plusOne;
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var xf = x.to_type(ScalarType.Float32);
        using var eps = _eps.ToScalar();
        var normed = xf.mul(xf.pow(HeldScalars.Two).mean([-1L], keepdim: true).add(eps).rsqrt());
        var y = _plusOne ? normed.mul(weight.to_type(ScalarType.Float32).add(HeldScalars.One)).to_type(x.dtype) : weight.mul(normed.to_type(x.dtype));
        return y.MoveToOuterDisposeScope();
    }
}

public sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight { get; }
    public Parameter bias { get; }
    readonly double _eps;
    readonly long _dim;
    public LayerNorm(long dim, double eps) : base("LayerNorm")
    {
        _eps = eps;
        _dim = dim;
        weight = new Parameter(ones(dim, dtype: BaseDtype.Current));
        bias = new Parameter(zeros(dim, dtype: BaseDtype.Current));
        register_parameter("weight", weight);
        register_parameter("bias", bias);
    }
    public override Tensor forward(Tensor x) => nn.functional.layer_norm(x, [_dim], weight, bias, _eps);
}

/// <summary>An embedding table registered as <c>weight</c>, as HF names it.</summary>
public sealed class Embedding : nn.Module<Tensor, Tensor>
{
    public Parameter weight { get; }
    public Embedding(long count, long dim) : base("Embedding")
    {
        weight = new Parameter(empty(count, dim, dtype: BaseDtype.Current));
        register_parameter("weight", weight);
    }
    public override Tensor forward(Tensor ids) => weight.index_select(0, ids.reshape(-1)).reshape([.. ids.shape, weight.shape[1]]);
}

/// <summary>An ordered list of layers named "0", "1", … like torch's ModuleList.</summary>
public sealed class LayerList<T> : nn.Module where T : nn.Module
{
    public IReadOnlyList<T> Items { get; }
    public LayerList(IEnumerable<T> items) : base("LayerList")
    {
        Items = items.ToList();
        for (int i = 0; i < Items.Count; i++) register_module(i.ToString(), Items[i]);
    }
}

/// <summary>
/// The dtype base-model parameters are created in (fp32 unless a checkpoint is loaded as bf16/fp16). Per thread, so a
/// load on one thread never changes what another creates; adapters (LoRA factors, prompt encoders) are always fp32.
/// </summary>
public static class BaseDtype
{
    [ThreadStatic] static ScalarType? _current;
    public static ScalarType Current => _current ?? ScalarType.Float32;

    public static IDisposable Use(ScalarType dtype)
    {
        var previous = _current;
        _current = dtype;
        return new Restore(previous);
    }

    sealed class Restore(ScalarType? previous) : IDisposable
    {
        public void Dispose() => _current = previous;
    }
}
