using System.Text.Json.Nodes;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.Offsite;

/// <summary>
/// Which blocks of an L-block model a party receives (Offsite-Tuning, Xiao et al. 2023): the first <c>b</c> and last
/// <c>t</c> blocks as trainable adapters, and an emulator of <c>e</c> of the M = L − b − t middle blocks chosen uniformly:
/// emulator_i = middle[round(i·(M−1)/(e−1))] with round half to even (the Offsite-Tuning repository's
/// <c>uniform_choose_layers</c>, Python's rounding), or the middle's centre block when e = 1. An e larger than M would
/// repeat blocks (FATE-LLM's example does) and is refused.
/// </summary>
public sealed record EmulatorPlan(int Layers, int[] Bottom, int[] Emulator, int[] Top)
{
    public int SubLayers => Bottom.Length + Emulator.Length + Top.Length;

    /// <summary>The full-model block of each sub-model block, in sub-model order.</summary>
    public int[] FullIndices => [.. Bottom, .. Emulator, .. Top];

    /// <summary>Sub-model blocks that train (the adapters).</summary>
    public IEnumerable<int> AdapterSubIndices =>
        Enumerable.Range(0, Bottom.Length).Concat(Enumerable.Range(Bottom.Length + Emulator.Length, Top.Length));

    public static EmulatorPlan Choose(int layers, int bottom, int top, int emulator, string field = "job.algorithm")
    {
        if (bottom < 0 || top < 0 || bottom + top == 0)
            throw new JobSpecException($"{field}.bottom = {bottom} and {field}.top = {top}: the adapters need at least one block (both ≥ 0, not both 0)");
        var middle = layers - bottom - top;
        if (middle < 1)
            throw new JobSpecException($"{field}: bottom {bottom} + top {top} adapter blocks leave no middle block of the model's {layers}");
        if (emulator < 1 || emulator > middle)
            throw new JobSpecException($"{field}.emulator = {emulator} must be between 1 and the {middle} middle blocks (model of {layers} blocks, bottom {bottom}, top {top}); more would repeat blocks");
        var chosen = emulator == 1
            ? [bottom + (int)Math.Round((middle - 1) / 2.0, MidpointRounding.ToEven)]
            : Enumerable.Range(0, emulator).Select(i => bottom + (int)Math.Round(i * (middle - 1) / (double)(emulator - 1), MidpointRounding.ToEven)).ToArray();
        return new EmulatorPlan(layers, Enumerable.Range(0, bottom).ToArray(), chosen, Enumerable.Range(layers - top, top).ToArray());
    }
}

/// <summary>
/// The sub-model a party trains: the plan's blocks renumbered 0…b+e+t−1 plus every tensor a forward pass needs
/// (embeddings, positions, final norm, an untied head — FATE-LLM forgets LLaMA's). It travels as one safetensors blob
/// whose metadata carries config.json and the tokenizer files, so a party needs nothing of the full model.
/// </summary>
public static class SubModel
{
    const string ConfigKey = "fate-llm.config", FilePrefix = "fate-llm.file.";

    /// <summary>The full model's config with the sub-model's block count (and each kept block's attention type).</summary>
    public static ModelConfig Config(ModelConfig full, EmulatorPlan plan)
    {
        if (full.ScaleAttnByInverseLayerIdx)
            throw new JobSpecException("job.algorithm: offsite tuning renumbers blocks, which changes GPT-2's scale_attn_by_inverse_layer_idx scaling; that model cannot be split");
        var raw = JsonNode.Parse(full.Raw.ToJsonString())!.AsObject();
        raw[full.Family == ModelFamily.Gpt2 ? (raw.ContainsKey("n_layer") ? "n_layer" : "num_hidden_layers") : "num_hidden_layers"] = plan.SubLayers;
        // Gemma 2/3 derive sliding and global layers from the block index; renumbered blocks keep their own by listing them.
        if (full.SlidingLayers is { } sliding)
            raw["layer_types"] = new JsonArray(plan.FullIndices.Select(i => (JsonNode)(sliding[i] ? "sliding_attention" : "full_attention")).ToArray());
        return ModelConfig.FromJson(raw, "sub-model config");
    }

    /// <summary>The sub-model's tensors taken from the full model's (views, not copies).</summary>
    public static Dictionary<string, Tensor> Tensors(IEnumerable<(string Name, Tensor Value)> full, EmulatorPlan plan)
    {
        var subOf = plan.FullIndices.Select((f, s) => (f, s)).ToDictionary(p => p.f, p => p.s);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, value) in full)
        {
            if (BlockName.Parse(name) is not { } b) result[name] = value;
            else if (subOf.TryGetValue(b.Block, out var sub)) result[BlockName.Format(b.Prefix, sub, b.Tail)] = value;
        }
        return result;
    }

    /// <summary>The blob a party downloads: sub-model weights, config.json and the tokenizer files of the full model's folder.</summary>
    public static byte[] Bundle(string fullModelFolder, EmulatorPlan plan)
    {
        using var scope = NewDisposeScope();
        using var full = HfCheckpoint.Load(fullModelFolder);
        return Bundle(Config(full.Config, plan), Tensors(full.BaseParameters().Select(p => (p.Name, (Tensor)p.Param)), plan), fullModelFolder);
    }

    /// <summary>A bundle of a sub-model held in memory (a distilled emulator), with the tokenizer files of <paramref name="tokenizerFolder"/>.</summary>
    public static byte[] Bundle(ModelConfig config, IReadOnlyDictionary<string, Tensor> tensors, string tokenizerFolder)
    {
        var metadata = new Dictionary<string, string> { [ConfigKey] = config.Raw.ToJsonString() };
        foreach (var file in TokenizerLoader.Files)
        {
            var path = Path.Combine(tokenizerFolder, file);
            if (File.Exists(path)) metadata[FilePrefix + file] = Convert.ToBase64String(File.ReadAllBytes(path));
        }
        return SafeTensors.ToBytes(tensors, metadata);
    }

    /// <summary>
    /// Unpacks a bundle as an HF model folder (config.json, model.safetensors, tokenizer files) once. Pass the
    /// bundle's <paramref name="digest"/> when it is known (a download the transfer verified, a store blob) to spare
    /// hashing the whole bundle on every round.
    /// </summary>
    public static string Materialize(string bundlePath, string workspace, string? digest = null)
    {
        digest ??= BlobStore.DigestOfFile(bundlePath);
        var folder = Path.Combine(workspace, "submodel-" + ContentDigest.Stem(digest)[..16]);
        if (File.Exists(Path.Combine(folder, HfCheckpoint.SingleFile))) return folder;
        var building = folder + ".building";
        if (Directory.Exists(building)) Directory.Delete(building, true);
        Directory.CreateDirectory(building);
        var metadata = SafeTensors.ReadMetadata(bundlePath);
        if (!metadata.TryGetValue(ConfigKey, out var config))
            throw new ModelFormatException($"{bundlePath}: not an offsite sub-model (no '{ConfigKey}' in its metadata)");
        File.WriteAllText(Path.Combine(building, HfCheckpoint.ConfigFile), config);
        foreach (var (key, value) in metadata.Where(kv => kv.Key.StartsWith(FilePrefix, StringComparison.Ordinal)))
            File.WriteAllBytes(Path.Combine(building, Path.GetFileName(key[FilePrefix.Length..])), Convert.FromBase64String(value));
        File.Copy(bundlePath, Path.Combine(building, HfCheckpoint.SingleFile));
        if (Directory.Exists(folder)) Directory.Delete(folder, true);
        Directory.Move(building, folder);
        return folder;
    }
}
