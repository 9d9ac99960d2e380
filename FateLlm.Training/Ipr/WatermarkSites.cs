using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Ipr;

/// <summary>One norm scale that carries part of a sign watermark, named by its block counted from the end (0 = last) so
/// the same site is found in a full model and in an offsite sub-model whose last blocks are the full model's.</summary>
public sealed record WatermarkSite(int FromEnd, string Tail, long Length);

/// <summary>
/// Where FedIPR's feature-based watermark lives: the scales (γ) of every norm layer inside the last blocks, as FATE's
/// <c>SignatureLayerNorm</c> does for GPT-2's <c>ln_1</c>/<c>ln_2</c> of blocks 10–11. Ordered by block from the end,
/// then by name, so every party and the verifier enumerate them alike.
/// </summary>
public static class WatermarkSites
{
    public static IReadOnlyList<(WatermarkSite Site, string Name, Parameter Param)> Of(CausalLm model, int lastBlocks)
    {
        var layers = model.Config.NumLayers;
        if (lastBlocks < 1 || lastBlocks > layers)
            throw new JobSpecException($"job.ipr.blocks = {lastBlocks} must be between 1 and the model's {layers} blocks");
        var norms = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (path, module) in model.named_modules())
            if (module is RmsNorm or Models.LayerNorm && !path.Contains('<')) norms.Add(path + ".weight");
        var sites = new List<(WatermarkSite, string, Parameter)>();
        foreach (var (name, p) in model.BaseParameters())
        {
            if (!norms.Contains(name) || BlockName.Parse(name) is not { } b || b.Block < layers - lastBlocks) continue;
            sites.Add((new WatermarkSite(layers - 1 - b.Block, b.Tail, p.numel()), name, p));
        }
        if (sites.Count == 0) throw new ModelFormatException($"a {model.Config.ModelType} model has no norm layer in its last {lastBlocks} blocks to carry a watermark");
        return sites.OrderBy(s => s.Item1.FromEnd).ThenBy(s => s.Item1.Tail, StringComparer.Ordinal).ToList();
    }

    /// <summary>The parameter of a recorded site in this model, or a clear error when the model has no such site.</summary>
    public static Parameter Find(CausalLm model, WatermarkSite site, string origin)
    {
        var layers = model.Config.NumLayers;
        var block = layers - 1 - site.FromEnd;
        var p = block < 0 ? null : model.BaseParameters().FirstOrDefault(x => BlockName.Parse(x.Name) is { } b && b.Block == block && b.Tail == site.Tail).Param;
        if (p is null) throw new ModelFormatException($"{origin}: the model has no norm scale '{site.Tail}' in block {block} ({site.FromEnd} from the end of {layers})");
        if (p.numel() != site.Length)
            throw new ModelFormatException($"{origin}: norm scale '{site.Tail}' of block {block} has {p.numel()} values, the keys expect {site.Length}");
        return p;
    }

    /// <summary>
    /// Makes the sites of a watermarking job trainable (under LoRA they become part of the trainable state, so they
    /// are uploaded and aggregated with the adapter). Called on every node that opens the job's model, keys or not,
    /// so the arbiter's global state has the same tensors as the parties'. Refuses a bit budget over the capacity bound
    /// (on the arbiter this refuses the job before round 1).
    /// </summary>
    public static void MakeTrainable(CausalLm model, JobSpec spec)
    {
        var ipr = spec.Ipr;
        if (!ipr.Enabled) return;
        var sites = Of(model, ipr.Blocks);
        BitsPerParty(sites, spec);
        foreach (var (_, name, p) in sites)
        {
            if (p.dtype != ScalarType.Float32)
                throw new Peft.PeftException($"job.ipr: the watermarked norm scale '{name}' is {p.dtype}; watermarks train in fp32 (set job.peft.base-dtype = fp32)");
            p.requires_grad = true;
        }
    }

    /// <summary>Each party's bits for these sites under the job's budget; refuses one over the capacity bound.</summary>
    public static int BitsPerParty(IReadOnlyList<(WatermarkSite Site, string Name, Parameter Param)> sites, JobSpec spec) =>
        spec.Ipr.BitsPerParty(sites.Sum(s => s.Site.Length), spec.Parties.Length, $"the last {spec.Ipr.Blocks} block(s)");
}
