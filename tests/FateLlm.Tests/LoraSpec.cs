using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class LoraSpec
{
    static readonly PeftConfig Lora = new() { Method = PeftMethod.Lora, LoraR = 4, LoraAlpha = 8, LoraDropout = 0 };

    [Theory, InlineData("gpt2"), InlineData("llama")]
    public void A_fresh_adapter_with_B_zero_leaves_the_model_unchanged(string arch)
    {
        using var m = TestSupport.TinyModel(arch);
        var ids = randint(0, 256, [2, 9]);
        using var _ = no_grad();
        var before = m.Forward(ids);
        PeftModel.Apply(m, Lora with { LoraTargets = ["all-linear"] });
        m.eval();
        Assert.True(TestSupport.MaxAbsDiff(before, m.Forward(ids)) == 0);
    }

    [Theory, InlineData("gpt2"), InlineData("llama")]
    public void Merged_weights_give_the_same_logits_as_the_unmerged_adapter_and_unmerge_restores_the_base(string arch)
    {
        using var m = TestSupport.TinyModel(arch);
        PeftModel.Apply(m, Lora with { LoraTargets = ["all-linear"] });
        RandomizeLoraB(m);
        m.eval();
        var ids = randint(0, 256, [2, 9]);
        using var _ = no_grad();
        var baseWeight = m.Projections()[0].Module.weight.clone();
        var unmerged = m.Forward(ids);
        PeftModel.MergeLora(m);
        Assert.True(TestSupport.MaxAbsDiff(unmerged, m.Forward(ids)) < 1e-4);
        PeftModel.UnmergeLora(m);
        Assert.True(TestSupport.MaxAbsDiff(baseWeight, m.Projections()[0].Module.weight) < 1e-6);
    }

    [Fact]
    public void Only_adapter_tensors_receive_gradients()
    {
        using var m = TestSupport.TinyModel();
        PeftModel.Apply(m, Lora);
        m.train();
        var ids = randint(0, 256, [2, 8]);
        using var batch = new Batch(ids, ids.clone(), ones_like(ids), 16);
        LanguageModelLoss.Compute(m, batch).backward();
        foreach (var (name, p) in m.named_parameters())
        {
            var isAdapter = name.Contains(".lora_");
            Assert.Equal(isAdapter, p.requires_grad);
            if (isAdapter) Assert.NotNull(p.grad);
            else Assert.Null(p.grad);
        }
        var spec = PeftModel.Spec(m);
        Assert.All(spec.Shapes.Keys, k => Assert.Matches(@"^model\.layers\.\d+\.self_attn\.[qv]_proj\.lora_[AB]\.weight$", k));
        Assert.Equal(m.Config.NumLayers * 2 * 2, spec.Shapes.Count);
    }

    [Fact]
    public void An_unknown_target_module_is_rejected_with_the_available_names()
    {
        using var m = TestSupport.TinyModel();
        var e = Assert.Throws<PeftException>(() => PeftModel.Apply(m, Lora with { LoraTargets = ["query_key_value"] }));
        Assert.Contains("'query_key_value'", e.Message);
        Assert.Contains("q_proj", e.Message);
    }

    [Theory, InlineData("gpt2", "c_attn"), InlineData("llama", "q_proj")]
    public void The_peft_export_uses_peft_key_names_and_loads_back_to_the_same_outputs(string arch, string target)
    {
        var baseDir = TestSupport.TempDir();
        using var m = TestSupport.TinyModel(arch);
        HfCheckpoint.Save(m, baseDir);
        var cfg = Lora with { LoraTargets = [target] };
        PeftModel.Apply(m, cfg);
        RandomizeLoraB(m);
        m.eval();
        var adapterDir = TestSupport.TempDir();
        AdapterFolder.Save(m, cfg, adapterDir, baseDir);

        var keys = SafeTensors.ReadShapes(Path.Combine(adapterDir, AdapterFolder.WeightsFile)).Keys.ToList();
        var prefix = arch == "gpt2" ? "base_model.model.transformer.h.0.attn.c_attn" : "base_model.model.model.layers.0.self_attn.q_proj";
        Assert.Contains($"{prefix}.lora_A.weight", keys);
        Assert.Contains($"{prefix}.lora_B.weight", keys);
        var json = File.ReadAllText(Path.Combine(adapterDir, AdapterFolder.ConfigFile));
        Assert.Contains("\"peft_type\": \"LORA\"", json);
        Assert.Contains($"\"fan_in_fan_out\": {(arch == "gpt2" ? "true" : "false")}", json);

        var (loaded, loadedCfg, _) = AdapterFolder.Load(adapterDir);
        using var l = loaded;
        l.eval();
        Assert.Equal(PeftMethod.Lora, loadedCfg.Method);
        var ids = randint(0, 256, [1, 7]);
        using var _ = no_grad();
        Assert.True(TestSupport.MaxAbsDiff(m.Forward(ids), l.Forward(ids)) < 1e-5);
    }

    internal static void RandomizeLoraB(CausalLm m)
    {
        using var _ = no_grad();
        foreach (var (_, p) in m.Projections().Where(x => x.Module.HasLora)) p.LoraB!.weight.normal_(0, 0.05);
    }
}
