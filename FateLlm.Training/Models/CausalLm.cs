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

    /// <summary>
    /// This model's own random stream: adapter initialisation and LoRA dropout draw from it, never from torch's process-wide
    /// generator, so parties hosted in one process (the demo, the experiments, the specs) cannot reseed or consume each
    /// other's randomness. Seeded as torch's global generator was, it gives the same numbers.
    /// </summary>
    public Generator Randomness { get; } = new(0);

    protected override void Dispose(bool disposing)
    {
        if (disposing) Randomness.Dispose();
        base.Dispose(disposing);
    }

    protected CausalLm(string name, ModelConfig config) : base(name) => Config = config;

    public static CausalLm Create(ModelConfig config) => config.Family switch
    {
        ModelFamily.Gpt2 => new Gpt2LmHeadModel(config),
        _ => new LlamaForCausalLm(config),
    };

    /// <summary>Logits [batch, new tokens, vocab]. With a cache, only the new tokens are given and the cache grows.</summary>
    public Tensor Forward(Tensor inputIds, KvCache? cache = null, Tensor? attentionMask = null) => Run(inputIds, cache, attentionMask, null).Logits;

    /// <summary>Logits and the hidden state [batch, tokens, hidden] after block <paramref name="block"/> (0-based).</summary>
    public (Tensor Logits, Tensor Hidden) ForwardCapturing(Tensor inputIds, int block, Tensor? attentionMask = null)
    {
        if (block < 0 || block >= Config.NumLayers) throw new ArgumentOutOfRangeException(nameof(block), $"block {block} of a {Config.NumLayers}-block model");
        var (logits, hidden) = Run(inputIds, null, attentionMask, block);
        return (logits, hidden!);
    }

    (Tensor Logits, Tensor? Hidden) Run(Tensor inputIds, KvCache? cache, Tensor? attentionMask, int? captureAfter)
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
        if (prefixLen > 0)
        {
            using var shift = prefixLen.ToScalar();
            positions = positions.add(shift);
        }
        var layers = Enumerable.Range(0, Config.NumLayers);
        Tensor? MaskFor(int? window) => DecoderStep.BuildMask(batch, len, past, prefixLen, attentionMask, device, window);
        var step = new DecoderStep
        {
            Positions = positions,
            Cache = cache,
            Prefix = prefix,
            Mask = layers.All(Config.IsSliding) ? null : MaskFor(null),
            LocalMask = layers.Any(Config.IsSliding) ? MaskFor(Config.SlidingWindow) : null,
            CaptureAfter = captureAfter,
        };
        var logits = ForwardCore(inputIds, step);
        // A bf16/fp16 base still yields fp32 logits, as HF upcasts them for the loss.
        return (logits.dtype == ScalarType.Float32 ? logits : logits.to_type(ScalarType.Float32), step.Captured);
    }

    internal abstract Tensor ForwardCore(Tensor inputIds, DecoderStep step);

    /// <summary>The input token embedding matrix [vocab, hidden] (InferDPT builds its perturbation kit from it).</summary>
    public abstract Parameter InputEmbeddings { get; }

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
            else if (IsNormName(name)) p.fill_(Config.GemmaNorm ? 0.0 : 1.0); // Gemma stores norm weights as offsets from one
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
