using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using static TorchSharp.torch;

namespace FateLlm.Training.Peft;

/// <summary>
/// An adapter on disk in HF PEFT layout: <c>adapter_config.json</c> + <c>adapter_model.safetensors</c>.
/// LoRA keys are <c>base_model.model.&lt;module&gt;.lora_A.weight</c>; P-Tuning v2 stores the effective
/// <c>prompt_embeddings</c> (and, with reparameterisation, the MLP under our own extra keys, which PEFT ignores).
/// Full fine-tuning is stored as a whole HF checkpoint in the same folder.
/// </summary>
public static class AdapterFolder
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    const string PeftPrefix = "base_model.model.";
    const string FullType = "FATELLM_FULL";

    public static void Save(CausalLm model, PeftConfig cfg, string folder, string baseModelPath)
    {
        Directory.CreateDirectory(folder);
        var json = ConfigJson(model, cfg, baseModelPath);
        switch (cfg.Method)
        {
            case PeftMethod.Full:
                HfCheckpoint.Save(model, folder);
                TokenizerFiles(baseModelPath, folder);
                break;
            case PeftMethod.Lora:
                SafeTensors.Save(Path.Combine(folder, WeightsFile),
                    PeftModel.TrainableParameters(model).ToDictionary(p => PeftPrefix + p.Name, p => (Tensor)p.Param));
                break;
            case PeftMethod.PtuningV2:
                using (var _ = no_grad())
                {
                    var enc = model.PromptEncoder!;
                    var tensors = new Dictionary<string, Tensor> { ["prompt_embeddings"] = enc.PromptEmbeddings().detach() };
                    if (enc.transform != null)
                        foreach (var (n, p) in PeftModel.TrainableParameters(model)) tensors[n] = p;
                    SafeTensors.Save(Path.Combine(folder, WeightsFile), tensors);
                }
                break;
        }
        File.WriteAllText(Path.Combine(folder, ConfigFile), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    static void TokenizerFiles(string baseModelPath, string folder)
    {
        if (Directory.Exists(baseModelPath)) Tokenization.TokenizerLoader.CopyFiles(baseModelPath, folder);
    }

    static JsonObject ConfigJson(CausalLm model, PeftConfig cfg, string baseModelPath)
    {
        var c = model.Config;
        var o = new JsonObject
        {
            ["base_model_name_or_path"] = Path.GetFullPath(baseModelPath),
            ["task_type"] = "CAUSAL_LM",
            ["inference_mode"] = true,
            ["revision"] = null,
        };
        switch (cfg.Method)
        {
            case PeftMethod.Lora:
                var targets = cfg.EffectiveTargets(c);
                o["peft_type"] = "LORA";
                o["r"] = cfg.LoraR;
                o["lora_alpha"] = cfg.LoraAlpha;
                o["lora_dropout"] = cfg.LoraDropout;
                o["target_modules"] = targets.Count == 1 && targets[0] == "all-linear"
                    ? new JsonArray(PeftModel.ResolveTargets(model, targets).Select(t => (JsonNode)t.Path.Split('.')[^1]).DistinctBy(n => n!.ToString()).ToArray())
                    : new JsonArray(targets.Select(t => (JsonNode)t).ToArray());
                o["fan_in_fan_out"] = c.Family == ModelFamily.Gpt2;
                o["bias"] = "none";
                // Watermarked norm scales (FedIPR) train next to LoRA; PEFT restores them from modules_to_save.
                var saved = PeftModel.TrainedModules(model);
                o["modules_to_save"] = saved.Count == 0 ? null : new JsonArray(saved.Select(m => (JsonNode)m).ToArray());
                o["init_lora_weights"] = true;
                o["layers_to_transform"] = null;
                o["layers_pattern"] = null;
                o["rank_pattern"] = new JsonObject();
                o["alpha_pattern"] = new JsonObject();
                o["use_rslora"] = false;
                o["use_dora"] = false;
                break;
            case PeftMethod.PtuningV2:
                o["peft_type"] = "PREFIX_TUNING";
                o["num_virtual_tokens"] = cfg.NumVirtualTokens;
                // PEFT sizes GQA prefixes by key/value heads.
                o["token_dim"] = c.NumKvHeads * c.HeadDim;
                o["num_attention_heads"] = c.NumKvHeads;
                o["num_layers"] = c.NumLayers;
                o["num_transformer_submodules"] = 1;
                o["encoder_hidden_size"] = cfg.EncoderHiddenSize ?? c.HiddenSize;
                o["prefix_projection"] = cfg.PrefixProjection;
                break;
            case PeftMethod.Full:
                o["peft_type"] = FullType;
                break;
        }
        return o;
    }

    /// <summary>How the adapter's training data was laid out (template, columns, caps): kept beside the adapter, not in
    /// adapter_config.json, which PEFT reads into its own config class.</summary>
    public const string DataFile = "fatellm_data.json";

    public static void SaveDataOptions(string folder, DataOptions data) =>
        File.WriteAllText(Path.Combine(folder, DataFile), JsonSerializer.Serialize(data, new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>The data layout the adapter was trained with, or null for an adapter that does not record one.</summary>
    public static DataOptions? ReadDataOptions(string folder)
    {
        var path = Path.Combine(folder, DataFile);
        if (!File.Exists(path)) return null;
        try { return JsonSerializer.Deserialize<DataOptions>(File.ReadAllText(path)); }
        catch (JsonException e) { throw new PeftException($"{path}: not valid JSON ({e.Message})"); }
    }

    public static PeftConfig ReadConfig(string folder, out string baseModelPath)
    {
        var path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) throw new PeftException($"{folder}: {ConfigFile} not found (not an adapter folder)");
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path))!.AsObject(); }
        catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException)
        { throw new PeftException($"{path}: not valid JSON ({e.Message})"); }
        baseModelPath = o["base_model_name_or_path"]?.GetValue<string>() ?? "";
        var type = o["peft_type"]?.GetValue<string>() ?? throw new PeftException($"{path}: field 'peft_type' is missing");
        T Get<T>(string f) => o[f] is JsonNode n ? n.GetValue<T>() : throw new PeftException($"{path}: field '{f}' is missing");
        return type switch
        {
            "LORA" => new PeftConfig
            {
                Method = PeftMethod.Lora, LoraR = Get<int>("r"), LoraAlpha = Get<double>("lora_alpha"),
                LoraDropout = o["lora_dropout"]?.GetValue<double>() ?? 0,
                LoraTargets = o["target_modules"] switch
                {
                    JsonArray a => a.Select(x => x!.GetValue<string>()).ToList(),
                    JsonValue v => [v.GetValue<string>()],
                    _ => throw new PeftException($"{path}: field 'target_modules' is missing"),
                },
                ModulesToSave = o["modules_to_save"] is JsonArray m ? m.Select(x => x!.GetValue<string>()).ToList() : [],
            },
            "PREFIX_TUNING" or "P_TUNING_V2" => new PeftConfig
            {
                Method = PeftMethod.PtuningV2, NumVirtualTokens = Get<int>("num_virtual_tokens"),
                PrefixProjection = o["prefix_projection"]?.GetValue<bool>() ?? false,
                EncoderHiddenSize = o["encoder_hidden_size"]?.GetValue<int>(),
            },
            FullType => new PeftConfig { Method = PeftMethod.Full },
            _ => throw new PeftException($"{path}: peft_type '{type}' is not supported (LORA, PREFIX_TUNING)"),
        };
    }

    /// <summary>Loads base model (from <paramref name="baseModelOverride"/> or the adapter's own record) with the adapter applied.</summary>
    public static (CausalLm Model, PeftConfig Config, string BasePath) Load(string folder, string? baseModelOverride = null)
    {
        var cfg = ReadConfig(folder, out var recorded);
        if (cfg.Method == PeftMethod.Full)
        {
            var full = HfCheckpoint.Load(folder);
            return (full, cfg, folder);
        }
        var basePath = baseModelOverride ?? recorded;
        if (string.IsNullOrEmpty(basePath) || !Directory.Exists(basePath))
            throw new PeftException($"{folder}: base model '{basePath}' not found; pass --model DIR");
        var model = HfCheckpoint.Load(basePath);
        var weights = SafeTensors.Load(Path.Combine(folder, WeightsFile));
        try
        {
            ApplyWeights(model, cfg, weights, folder);
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
        return (model, cfg, basePath);
    }

    static void ApplyWeights(CausalLm model, PeftConfig cfg, Dictionary<string, Tensor> weights, string origin)
    {
        if (cfg.Method == PeftMethod.PtuningV2 && cfg.PrefixProjection && !weights.Keys.Any(k => k.StartsWith("prompt_encoder.")))
            cfg = cfg with { PrefixProjection = false }; // a PEFT-made adapter carries only the folded prefix
        PeftModel.Apply(model, cfg);
        var state = cfg.Method switch
        {
            PeftMethod.Lora => weights.Where(kv => kv.Key.StartsWith(PeftPrefix))
                .ToDictionary(kv => StripAdapterName(kv.Key[PeftPrefix.Length..]), kv => kv.Value),
            _ when cfg.PrefixProjection => weights.Where(kv => kv.Key.StartsWith("prompt_encoder.")).ToDictionary(),
            _ => new Dictionary<string, Tensor>
            {
                ["prompt_encoder.embedding.weight"] = weights.TryGetValue("prompt_embeddings", out var e) ? e
                    : throw new PeftException($"{origin}: tensor 'prompt_embeddings' is missing"),
            },
        };
        PeftModel.LoadTrainableState(model, state, origin);
    }

    // PEFT writes "lora_A.weight"; some versions keep the adapter name ("lora_A.default.weight").
    static string StripAdapterName(string key) => key.Replace(".lora_A.default.", ".lora_A.").Replace(".lora_B.default.", ".lora_B.");
}
