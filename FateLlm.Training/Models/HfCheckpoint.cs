using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>Loads and saves HF model folders: config.json + model.safetensors, or sharded with model.safetensors.index.json.</summary>
public static class HfCheckpoint
{
    public const string ConfigFile = "config.json";
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    // Buffers some writers save that carry no learned state.
    static readonly string[] IgnoredSuffixes = [".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"];

    public sealed record LoadReport(IReadOnlyList<string> IgnoredTensors);

    public static CausalLm Load(string folder, ScalarType? dtype = null) => Load(folder, out _, dtype);

    /// <summary>
    /// Builds the model from config.json and reads every tensor of the checkpoint (single file or all shards of the
    /// index) straight into its parameter, one tensor at a time: never two copies of the model. With
    /// <paramref name="dtype"/> (bf16, fp16) the base stays in that dtype; adapters attached later stay fp32.
    /// </summary>
    public static CausalLm Load(string folder, out LoadReport report, ScalarType? dtype = null)
    {
        if (!Directory.Exists(folder)) throw new ModelFormatException($"{folder}: model folder not found");
        var config = ModelConfig.Load(Path.Combine(folder, ConfigFile));
        var files = WeightFiles(folder);
        CausalLm model;
        using (BaseDtype.Use(dtype ?? ScalarType.Float32)) model = CausalLm.Create(config);
        try
        {
            report = Stream(model, files, folder);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }

    /// <summary>The weight files of a folder: the single file, or every shard the index lists (each must exist).</summary>
    /// <summary>The floating-point dtype most of the checkpoint's weights are stored in (its first weight file's), as
    /// transformers' <c>torch_dtype="auto"</c> reads it from the weights.</summary>
    public static ScalarType StoredDtype(string folder)
    {
        var file = WeightFiles(folder)[0];
        var floats = SafeTensors.ReadEntries(file).Entries.Where(e => e.DType is "F32" or "BF16" or "F16")
            .GroupBy(e => e.DType).OrderByDescending(g => g.Sum(e => e.Shape.Aggregate(1L, (a, b) => a * b))).FirstOrDefault();
        return floats is null ? ScalarType.Float32 : SafeTensors.StoredType(floats.First(), file);
    }

    public static IReadOnlyList<string> WeightFiles(string folder)
    {
        var single = Path.Combine(folder, SingleFile);
        var index = Path.Combine(folder, IndexFile);
        if (File.Exists(single)) return [single];
        if (!File.Exists(index))
            throw new ModelFormatException($"{folder}: neither {SingleFile} nor {IndexFile} found");
        JsonObject map;
        try { map = JsonNode.Parse(File.ReadAllText(index))!["weight_map"]!.AsObject(); }
        catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException)
        { throw new ModelFormatException($"{index}: no valid 'weight_map' ({e.Message})"); }
        var files = new List<string>();
        foreach (var (tensor, shard) in map)
        {
            var name = shard?.GetValue<string>() ?? throw new ModelFormatException($"{index}: field 'weight_map.{tensor}' names no shard");
            var path = Path.Combine(folder, name);
            if (!File.Exists(path)) throw new ModelFormatException($"{index}: shard '{name}' listed in field 'weight_map.{tensor}' is missing");
            if (!files.Contains(path)) files.Add(path);
        }
        return files;
    }

    /// <summary>
    /// The model of a folder with every tensor checked against the checkpoint's headers (names, shapes) but none read:
    /// weights stay unwritten memory, which the OS does not commit until touched. What needs only shapes (an initial
    /// adapter) gets them without reading gigabytes; <see cref="ReadTensors"/> reads the few tensors it does need.
    /// </summary>
    public static CausalLm Skeleton(string folder, ScalarType dtype)
    {
        if (!Directory.Exists(folder)) throw new ModelFormatException($"{folder}: model folder not found");
        CausalLm model;
        using (BaseDtype.Use(dtype)) model = CausalLm.Create(ModelConfig.Load(Path.Combine(folder, ConfigFile)));
        try
        {
            Stream(model, WeightFiles(folder), folder, _ => false);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Reads the named base tensors of <paramref name="model"/> from its checkpoint folder.</summary>
    public static void ReadTensors(CausalLm model, string folder, IReadOnlySet<string> names) =>
        Stream(model, WeightFiles(folder), folder, names.Contains);

    static LoadReport Stream(CausalLm model, IReadOnlyList<string> files, string origin, Func<string, bool>? read = null)
    {
        var byKey = new Dictionary<string, (string Name, Parameter Param)>(StringComparer.Ordinal);
        foreach (var (name, p) in model.BaseParameters())
        {
            byKey[name] = (name, p);
            // A bare GPT2Model checkpoint has no "transformer." prefix.
            if (model.Config.Family == ModelFamily.Gpt2 && name.StartsWith("transformer.", StringComparison.Ordinal))
                byKey.TryAdd(name["transformer.".Length..], (name, p));
        }
        var loaded = new HashSet<string>();
        var ignored = new List<string>();
        foreach (var file in files)
        {
            var (entries, dataStart) = SafeTensors.ReadEntries(file);
            using var handle = File.OpenHandle(file);
            foreach (var e in entries.OrderBy(e => e.Begin))
            {
                if (!byKey.TryGetValue(e.Name, out var target))
                {
                    // Tied heads are stored by some writers; equal to the embedding, so nothing is lost by skipping them.
                    if (e.Name == "lm_head.weight" || IgnoredSuffixes.Any(e.Name.EndsWith)) { ignored.Add(e.Name); continue; }
                    throw new ModelFormatException($"{file}: unexpected tensor '{e.Name}' does not belong to a {model.Config.ModelType} model with this config");
                }
                if (!e.Shape.SequenceEqual(target.Param.shape))
                    throw new ModelFormatException($"{file}: tensor '{e.Name}' has shape [{string.Join(",", e.Shape)}] but the config needs [{string.Join(",", target.Param.shape)}]");
                if (read is null || read(target.Name)) SafeTensors.ReadInto(handle, e, dataStart, target.Param, file);
                loaded.Add(target.Name);
            }
        }
        var missing = model.BaseParameters().Select(p => p.Name).FirstOrDefault(n => !loaded.Contains(n));
        if (missing != null) throw new ModelFormatException($"{origin}: tensor '{missing}' is missing from the checkpoint");
        return new LoadReport(ignored);
    }

    /// <summary>
    /// Writes the model as a HF folder, its weights in <paramref name="dtype"/> (cast one shard at a time) or as they
    /// are, sharded above <paramref name="maxShardBytes"/>; config.json's <c>torch_dtype</c> names the dtype written.
    /// </summary>
    public static void Save(CausalLm model, string folder, long maxShardBytes = 2L << 30, ScalarType? dtype = null)
    {
        Directory.CreateDirectory(folder);
        var tensors = model.BaseParameters().ToDictionary(p => p.Name, p => (Tensor)p.Param);
        model.Config.Save(Path.Combine(folder, ConfigFile), TorchDtypeName(dtype ?? model.InputEmbeddings.dtype));
        SaveWeights(tensors, folder, maxShardBytes, dtype);
    }

    /// <summary>Deletes a folder's weight file and index, so weights written there replace them whatever their sharding.</summary>
    public static void RemoveWeights(string folder)
    {
        foreach (var stale in new[] { SingleFile, IndexFile }.Select(f => Path.Combine(folder, f)).Where(File.Exists)) File.Delete(stale);
    }

    /// <summary>config.json's name for a dtype (<c>torch_dtype</c>).</summary>
    public static string TorchDtypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", ScalarType.Float32 => "float32",
        _ => throw new ModelFormatException($"weights cannot be written as {dtype}"),
    };

    public static void SaveWeights(IReadOnlyDictionary<string, Tensor> tensors, string folder, long maxShardBytes = 2L << 30, ScalarType? dtype = null)
    {
        RemoveWeights(folder);
        void Write(string file, IReadOnlyDictionary<string, Tensor> shard)
        {
            using var scope = NewDisposeScope();
            SafeTensors.Save(Path.Combine(folder, file), dtype is { } d
                ? shard.ToDictionary(kv => kv.Key, kv => kv.Value.dtype == d || !kv.Value.is_floating_point() ? kv.Value : kv.Value.detach().to_type(d))
                : shard);
        }
        long Bytes(Tensor t) => t.numel() * (dtype is { } d && t.is_floating_point() ? d.ElementSize() : t.ElementSize);
        var total = tensors.Values.Sum(Bytes);
        if (total <= maxShardBytes)
        {
            Write(SingleFile, tensors);
            return;
        }
        var shards = new List<Dictionary<string, Tensor>> { new() };
        long current = 0;
        foreach (var (name, t) in tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var size = Bytes(t);
            if (current > 0 && current + size > maxShardBytes) { shards.Add(new()); current = 0; }
            shards[^1][name] = t;
            current += size;
        }
        var weightMap = new JsonObject();
        for (int i = 0; i < shards.Count; i++)
        {
            var file = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            Write(file, shards[i]);
            foreach (var name in shards[i].Keys) weightMap[name] = file;
        }
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = weightMap };
        File.WriteAllText(Path.Combine(folder, IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The content digest (BLAKE3) over the weight files' bytes in name order, cached (<see cref="Models.WeightsDigest"/>).</summary>
    public static string WeightsDigest(string folder) => Models.WeightsDigest.Of(folder);
}
