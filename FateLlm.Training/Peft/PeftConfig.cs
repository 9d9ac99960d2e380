using FateLlm.Training.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Peft;

public enum PeftMethod { Lora, PtuningV2, Full }

/// <summary>Which parameter-efficient method to apply and its hyper-parameters.</summary>
public sealed record PeftConfig
{
    public PeftMethod Method { get; init; } = PeftMethod.Lora;
    public int LoraR { get; init; } = 8;
    public double LoraAlpha { get; init; } = 16;
    public double LoraDropout { get; init; } = 0.05;
    /// <summary>Module names (last path segment or full path) or "all-linear"; empty = the family default.</summary>
    public IReadOnlyList<string> LoraTargets { get; init; } = [];
    public int NumVirtualTokens { get; init; } = 16;
    public bool PrefixProjection { get; init; }
    public int? EncoderHiddenSize { get; init; }
    public double PrefixInitStd { get; init; } = 1.0;
    /// <summary>dtype the frozen base is loaded in (bf16/fp16 halve a large model's memory); adapters stay fp32.</summary>
    /// <summary>The frozen base's dtype; null ("auto"): the checkpoint's own (bf16 stays bf16), fp32 for full fine-tuning.</summary>
    public ScalarType? BaseDtype { get; init; }
    /// <summary>PEFT's <c>modules_to_save</c>: modules (full path or last segments) whose own parameters train and are saved with the adapter.</summary>
    public IReadOnlyList<string> ModulesToSave { get; init; } = [];

    /// <summary>The dtype the base of <paramref name="modelPath"/> loads in under these settings.</summary>
    public ScalarType BaseDtypeFor(string modelPath)
    {
        // Full fine-tuning updates the base itself, which needs fp32 weights.
        if (Method == PeftMethod.Full && BaseDtype is { } asked && asked != ScalarType.Float32)
            throw new PeftException($"peft.base-dtype {asked} needs a parameter-efficient method: full fine-tuning trains the base in fp32");
        return BaseDtype ?? (Method == PeftMethod.Full ? ScalarType.Float32 : HfCheckpoint.StoredDtype(modelPath));
    }

    public static ScalarType? ParseDtype(string s) => s.ToLowerInvariant() switch
    {
        "auto" => null,
        "fp32" or "float32" => ScalarType.Float32,
        "bf16" or "bfloat16" => ScalarType.BFloat16,
        "fp16" or "float16" => ScalarType.Float16,
        _ => throw new ArgumentException($"unknown dtype '{s}' (known: auto, fp32, bf16, fp16)"),
    };

    public static PeftMethod ParseMethod(string s) => s.ToLowerInvariant() switch
    {
        "lora" => PeftMethod.Lora,
        "ptuning-v2" or "ptuning_v2" or "prefix" or "prefix-tuning" => PeftMethod.PtuningV2,
        "full" => PeftMethod.Full,
        _ => throw new ArgumentException($"unknown PEFT method '{s}' (known: lora, ptuning-v2, full)"),
    };

    public static string MethodName(PeftMethod m) => m switch
    {
        PeftMethod.Lora => "lora",
        PeftMethod.PtuningV2 => "ptuning-v2",
        _ => "full",
    };

    public IReadOnlyList<string> EffectiveTargets(ModelConfig c) =>
        LoraTargets.Count > 0 ? LoraTargets
        // PEFT's defaults per model type; Phi-3 fuses q, k and v into qkv_proj.
        : c.Family == ModelFamily.Gpt2 ? ["c_attn"] : c.ModelType == "phi3" ? ["qkv_proj"] : ["q_proj", "v_proj"];
}

/// <summary>Names and shapes of a trainable state: what every party's update must match exactly.</summary>
public sealed record AdapterSpec(IReadOnlyDictionary<string, long[]> Shapes)
{
    public long Parameters => Shapes.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
    public long Bytes => Parameters * sizeof(float);
}

public sealed class PeftException(string message) : Exception(message);

/// <summary>Applies a PEFT method to a model and moves its trainable state in and out as named tensors.</summary>
public static class PeftModel
{
    /// <summary>Freezes the base (except for full fine-tuning) and attaches LoRA factors or a prompt encoder.</summary>
    public static void Apply(CausalLm model, PeftConfig cfg)
    {
        var full = cfg.Method == PeftMethod.Full;
        foreach (var (_, p) in model.BaseParameters()) p.requires_grad = full;
        switch (cfg.Method)
        {
            case PeftMethod.Lora:
                foreach (var (_, proj) in ResolveTargets(model, cfg.EffectiveTargets(model.Config)))
                    proj.AddLora(cfg.LoraR, cfg.LoraAlpha, cfg.LoraDropout, model.Randomness);
                break;
            case PeftMethod.PtuningV2:
                model.AttachPrefix(new PrefixEncoder(model.Config, cfg.NumVirtualTokens, cfg.PrefixProjection,
                    cfg.EncoderHiddenSize ?? model.Config.HiddenSize, cfg.PrefixInitStd, model.Randomness));
                break;
        }
        foreach (var module in cfg.ModulesToSave)
        {
            var hit = model.BaseParameters().Where(p => p.Name[..p.Name.LastIndexOf('.')] is var m && (m == module || m.EndsWith("." + module))).ToList();
            if (hit.Count == 0) throw new PeftException($"modules_to_save '{module}' matches no module of this {model.Config.ModelType} model");
            foreach (var (_, p) in hit) p.requires_grad = true;
        }
    }

    /// <summary>Modules whose own (base) parameters train next to the adapter: PEFT's <c>modules_to_save</c> when saved.</summary>
    public static IReadOnlyList<string> TrainedModules(CausalLm model) =>
        TrainableParameters(model).Where(p => !CausalLm.IsAdapterName(p.Name)).Select(p => p.Name[..p.Name.LastIndexOf('.')]).Distinct().ToList();

    /// <summary>Projections a target list selects; "all-linear" is every projection but the output head.</summary>
    public static List<(string Path, Projection Module)> ResolveTargets(CausalLm model, IReadOnlyList<string> targets)
    {
        var all = model.Projections().Where(p => !p.Path.StartsWith("prompt_encoder.") && p.Path != "lm_head").ToList();
        if (targets.Count == 1 && targets[0] == "all-linear") return all;
        var chosen = new List<(string, Projection)>();
        foreach (var t in targets)
        {
            var hit = all.Where(p => p.Path == t || p.Path.EndsWith("." + t)).ToList();
            if (hit.Count == 0)
                throw new PeftException($"LoRA target '{t}' matches no module of this {model.Config.ModelType} model (available: {string.Join(", ", all.Select(p => p.Path.Split('.')[^1]).Distinct())}, all-linear)");
            chosen.AddRange(hit);
        }
        return chosen.DistinctBy(c => c.Item1).ToList();
    }

    public static IReadOnlyList<(string Name, Parameter Param)> TrainableParameters(CausalLm model) =>
        model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)).ToList();

    public static AdapterSpec Spec(CausalLm model) =>
        new(TrainableParameters(model).ToDictionary(p => p.Name, p => p.Param.shape.ToArray()));

    /// <summary>Detached copies of the trainable tensors by name: the unit a party sends.</summary>
    public static Dictionary<string, Tensor> TrainableState(CausalLm model) =>
        TrainableParameters(model).ToDictionary(p => p.Name, p => p.Param.detach().clone());

    /// <summary>Loads a trainable state; names and shapes must match exactly (never by position).</summary>
    public static void LoadTrainableState(CausalLm model, IReadOnlyDictionary<string, Tensor> state, string origin)
    {
        var own = TrainableParameters(model);
        var missing = own.Where(p => !state.ContainsKey(p.Name)).Select(p => p.Name).ToList();
        if (missing.Count > 0) throw new PeftException($"{origin}: trainable tensor '{missing[0]}' is missing ({missing.Count} in all)");
        var names = own.Select(p => p.Name).ToHashSet();
        var extra = state.Keys.Where(k => !names.Contains(k)).ToList();
        if (extra.Count > 0) throw new PeftException($"{origin}: tensor '{extra[0]}' is not trainable in this model ({extra.Count} in all)");
        using var _ = no_grad();
        foreach (var (name, p) in own)
        {
            var t = state[name];
            if (!t.shape.SequenceEqual(p.shape))
                throw new PeftException($"{origin}: tensor '{name}' has shape [{string.Join(",", t.shape)}], expected [{string.Join(",", p.shape)}]");
            p.copy_(t);
        }
    }

    public static void MergeLora(CausalLm model)
    {
        foreach (var (_, p) in model.Projections()) p.Merge();
    }

    /// <summary>
    /// Merges LoRA into the weights and writes a plain HF checkpoint in the base's own dtype (a bf16 base stays bf16
    /// whatever dtype it was loaded in), with the base's tokenizer files.
    /// </summary>
    public static void SaveMerged(CausalLm model, string folder, string baseFolder)
    {
        MergeLora(model);
        HfCheckpoint.Save(model, folder, dtype: HfCheckpoint.StoredDtype(baseFolder));
        Tokenization.TokenizerLoader.CopyFiles(baseFolder, folder);
    }

    public static void UnmergeLora(CausalLm model)
    {
        foreach (var (_, p) in model.Projections()) p.Unmerge();
    }

    /// <summary>Until disposed, the model computes as its base: every LoRA branch is skipped (PEFT's <c>disable_adapter()</c>).</summary>
    public static IDisposable AdapterDisabled(CausalLm model)
    {
        var adapted = model.Projections().Select(p => p.Module).Where(p => p.HasLora && !p.LoraDisabled).ToList();
        if (model.Projections().Any(p => p.Module.Merged)) throw new InvalidOperationException("a merged adapter cannot be disabled (unmerge it first)");
        foreach (var p in adapted) p.LoraDisabled = true;
        return new Restore(adapted);
    }

    sealed class Restore(List<Projection> adapted) : IDisposable
    {
        public void Dispose()
        {
            foreach (var p in adapted) p.LoraDisabled = false;
        }
    }
}
