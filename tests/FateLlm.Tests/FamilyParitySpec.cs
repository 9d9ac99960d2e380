using System.Text.Json;
using FateLlm.Training.Evaluation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>
/// Today's model families and every rope_scaling type against an independent PyTorch implementation
/// (tests/reference/make_family_fixtures.py): logits after a save/reload round trip, greedy generation with a KV
/// cache, and LoRA on PEFT's default targets (merge equal to W + (alpha/r)·B·A).
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class FamilyParitySpec
{
    public static TheoryData<string> Cases => new()
    {
        "llama3", "qwen2.5", "qwen3", "mistral", "phi3", "phi3.5-longrope", "gemma", "gemma2", "gemma3",
        "rope-linear", "rope-dynamic", "rope-yarn", "rope-yarn-mscale",
    };

    sealed record Expected(Tensor Ids, Tensor Logits, Tensor LoraLogits, int R, double Alpha, string[] Targets, int[] Prompt, int[] Greedy);

    static Expected Read(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path(name, "expected.json")));
        var r = doc.RootElement;
        var ids = r.GetProperty("input_ids").EnumerateArray().Select(row => row.EnumerateArray().Select(x => x.GetInt64()).ToArray()).ToArray();
        var shape = r.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        Tensor Floats(JsonElement e) => tensor(e.EnumerateArray().Select(x => x.GetSingle()).ToArray(), shape);
        var lora = r.GetProperty("lora");
        return new Expected(TestSupport.Ids(ids), Floats(r.GetProperty("logits")), Floats(lora.GetProperty("logits")),
            lora.GetProperty("r").GetInt32(), lora.GetProperty("alpha").GetDouble(),
            lora.GetProperty("targets").EnumerateArray().Select(x => x.GetString()!).ToArray(),
            r.GetProperty("prompt").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
            r.GetProperty("greedy").EnumerateArray().Select(x => x.GetInt32()).ToArray());
    }

    static string Path(string name, string file = "") => TestSupport.FixturePath("families", name, file);

    [Theory, MemberData(nameof(Cases))]
    public void Logits_match_the_reference_after_a_save_and_reload(string name)
    {
        var e = Read(name);
        using var loaded = HfCheckpoint.Load(Path(name));
        var dir = TestSupport.TempDir();
        HfCheckpoint.Save(loaded, dir);
        using var model = HfCheckpoint.Load(dir);
        model.eval();
        using var _ = no_grad();
        var logits = model.Forward(e.Ids);
        Assert.Equal(e.Logits.shape, logits.shape);
        Assert.True(TestSupport.MaxAbsDiff(logits, e.Logits) < 1e-4, $"{name}: max |Δ| = {TestSupport.MaxAbsDiff(logits, e.Logits)}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void Greedy_generation_with_the_kv_cache_equals_the_reference(string name)
    {
        var e = Read(name);
        using var model = HfCheckpoint.Load(Path(name));
        model.eval();
        var output = TextGeneration.Generate(model, e.Prompt, new SamplingOptions { MaxNewTokens = e.Greedy.Length, Temperature = 0, StopAtEos = false }, null);
        Assert.Equal(e.Greedy, output);
    }

    [Theory, MemberData(nameof(Cases))]
    public void Lora_on_the_family_default_targets_merges_as_peft_does(string name)
    {
        var e = Read(name);
        using var model = HfCheckpoint.Load(Path(name));
        model.eval();
        var peft = new PeftConfig { Method = PeftMethod.Lora, LoraR = e.R, LoraAlpha = e.Alpha, LoraDropout = 0 };
        // The family's default targets are PEFT's (qkv_proj and gate_up_proj are Phi-3's fused names).
        Assert.Equal(e.Targets.Where(t => t is not "gate_up_proj"), peft.EffectiveTargets(model.Config));
        PeftModel.Apply(model, peft with { LoraTargets = e.Targets });
        var file = SafeTensors.Load(Path(name, "lora.safetensors"));
        PeftModel.LoadTrainableState(model, file.Where(kv => !kv.Key.StartsWith("merged.")).ToDictionary(), "lora.safetensors");
        using var _ = no_grad();
        Assert.True(TestSupport.MaxAbsDiff(model.Forward(e.Ids), e.LoraLogits) < 1e-4, "unmerged LoRA forward");
        PeftModel.MergeLora(model);
        var weights = model.BaseParameters().ToDictionary(p => p.Name, p => (Tensor)p.Param);
        foreach (var (key, expected) in file.Where(kv => kv.Key.StartsWith("merged.")))
            Assert.True(TestSupport.MaxAbsDiff(weights[key["merged.".Length..]], expected) < 1e-5, key);
        Assert.True(TestSupport.MaxAbsDiff(model.Forward(e.Ids), e.LoraLogits) < 1e-4, "merged LoRA forward");
    }
}

/// <summary>What a folder cannot be loaded as is refused in one line naming the file and the field.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class FamilyRefusalSpec
{
    [Theory]
    [InlineData("gemma3", "\"model_type\": \"gemma3_text\"", "\"model_type\": \"gemma3\"", "model_type 'gemma3' is not supported: the multimodal Gemma 3")]
    [InlineData("qwen3", "\"use_sliding_window\": false", "\"use_sliding_window\": true", "field 'use_sliding_window' = true is not supported for qwen3")]
    [InlineData("gemma3", "\"sliding_window_pattern\": 3,", "\"layer_types\": [\"sliding_attention\", \"full_attention\"],", "field 'layer_types' lists 2 layers but num_hidden_layers is 4")]
    [InlineData("llama3", "\"rope_type\": \"llama3\"", "\"rope_type\": \"ntk-by-parts\"", "field 'rope_scaling.rope_type' = 'ntk-by-parts' is not supported")]
    [InlineData("llama3", "\"low_freq_factor\": 1.0,", "", "field 'rope_scaling.low_freq_factor' is missing for rope_type 'llama3'")]
    [InlineData("qwen2.5", "\"use_sliding_window\": false", "\"use_sliding_window\": true", "field 'use_sliding_window' = true is not supported for qwen2")]
    [InlineData("phi3.5-longrope", "\"long_factor\": [", "\"long_factor\": [9.0, ", "field 'rope_scaling.long_factor' has 4 values but the rotary dimension 6 needs 3")]
    [InlineData("mistral", "\"sliding_window\": 5", "\"sliding_window\": 0", "field 'sliding_window' = 0 must be positive")]
    [InlineData("gemma", "\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"final_logit_softcapping\": 30.0,", "field 'final_logit_softcapping' = 30 (logit soft-capping) is not supported for gemma")]
    public void An_unsupported_config_is_refused_naming_file_and_field(string fixture, string find, string replace, string message)
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath("families", fixture))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var config = Path.Combine(dir, "config.json");
        var text = File.ReadAllText(config);
        Assert.Contains(find, text);
        File.WriteAllText(config, text.Replace(find, replace));
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Load(dir));
        Assert.StartsWith(config, e.Message);
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}

/// <summary>The spec-sized form of the real-size benchmark: it runs end to end and its checkpoint loads as HF writes them.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class CheckpointBenchSpec
{
    [Fact]
    public void Bench_train_with_a_config_writes_a_checkpoint_loads_it_generates_and_steps()
    {
        var work = Path.Combine(TestSupport.TempDir(), "ckpt");
        var (o, e) = (new StringWriter(), new StringWriter());
        var code = FateLlm.Host.Cli.CliApp.Run(["bench", "train", "--config", TestSupport.FixturePath("families", "llama3", "config.json"),
            "--work", work, "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--gen-tokens", "2", "--json"], o, e);
        Assert.True(code == 0, e.ToString());
        var line = o.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
        var r = System.Text.Json.Nodes.JsonNode.Parse(line)!.AsObject();
        Assert.Equal("bf16", r["dtype"]!.GetValue<string>());
        Assert.Equal(2, r["generated_tokens"]!.GetValue<int>());
        foreach (var field in new[] { "load_seconds", "peak_rss_load_mib", "peak_rss_train_mib", "ms_per_token", "ms_per_step", "cpu_utilization" })
            Assert.True(r[field]!.GetValue<double>() > 0, field);
        using var model = HfCheckpoint.Load(work, ScalarType.BFloat16);
        Assert.Equal(r["parameters"]!.GetValue<long>(), model.BaseParameters().Sum(p => p.Param.numel()));
    }
}
