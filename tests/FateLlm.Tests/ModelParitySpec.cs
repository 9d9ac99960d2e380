using System.Text.Json;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>Checkpoints written by an independent PyTorch implementation (tests/reference/make_fixtures.py).</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ModelParitySpec
{
    public static TheoryData<string> Cases => new() { "gpt2", "llama-gqa", "qwen2-bias-sharded", "llama-tied-bf16" };

    static (Tensor Ids, Tensor Logits) Expected(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestSupport.FixturePath(name, "expected_logits.json")));
        var r = doc.RootElement;
        var ids = r.GetProperty("input_ids").EnumerateArray().Select(row => row.EnumerateArray().Select(x => x.GetInt64()).ToArray()).ToArray();
        var shape = r.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        var logits = r.GetProperty("logits").EnumerateArray().Select(x => x.GetSingle()).ToArray();
        return (TestSupport.Ids(ids), tensor(logits, shape));
    }

    [Theory, MemberData(nameof(Cases))]
    public void Logits_match_the_pytorch_reference_within_1e_4(string name)
    {
        using var model = HfCheckpoint.Load(TestSupport.FixturePath(name));
        model.eval();
        var (ids, expected) = Expected(name);
        using var _ = no_grad();
        var logits = model.Forward(ids);
        Assert.Equal(expected.shape, logits.shape);
        Assert.True(TestSupport.MaxAbsDiff(logits, expected) < 1e-4, $"max |Δ| = {TestSupport.MaxAbsDiff(logits, expected)}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void Saving_and_reloading_keeps_every_tensor_and_the_logits(string name)
    {
        using var model = HfCheckpoint.Load(TestSupport.FixturePath(name));
        var dir = TestSupport.TempDir();
        HfCheckpoint.Save(model, dir, maxShardBytes: 40_000);
        using var again = HfCheckpoint.Load(dir);
        var (ids, expected) = Expected(name);
        using var _ = no_grad();
        Assert.True(TestSupport.MaxAbsDiff(again.Forward(ids), expected) < 1e-4);
        Assert.True(File.Exists(Path.Combine(dir, HfCheckpoint.IndexFile)), "small shard limit should produce a sharded checkpoint");
    }

    [Fact]
    public void Unknown_model_type_is_rejected_by_name()
    {
        var dir = CopyFixture("gpt2");
        var cfg = File.ReadAllText(Path.Combine(dir, "config.json")).Replace("\"gpt2\"", "\"bloom\"");
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg);
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("model_type 'bloom'", e.Message);
    }

    [Fact]
    public void A_missing_shard_names_the_index_and_the_field()
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath("qwen2-bias-sharded"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors"));
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Load(dir));
        Assert.StartsWith(Path.Combine(dir, HfCheckpoint.IndexFile), e.Message);
        Assert.Matches(@"shard 'model-00002-of-00002\.safetensors' listed in field 'weight_map\.[^']+' is missing", e.Message);
    }

    [Fact]
    public void A_bf16_base_loads_tensor_by_tensor_and_trains_fp32_lora_on_it()
    {
        using var full = HfCheckpoint.Load(TestSupport.FixturePath("llama-gqa"));
        using var half = HfCheckpoint.Load(TestSupport.FixturePath("llama-gqa"), ScalarType.BFloat16);
        Assert.All(half.BaseParameters(), p => Assert.Equal(ScalarType.BFloat16, p.Param.dtype));
        var (ids, expected) = Expected("llama-gqa");
        using (no_grad())
        {
            var logits = half.Forward(ids);
            Assert.Equal(ScalarType.Float32, logits.dtype);
            // bf16 keeps 8 bits of mantissa: the logits stay close to fp32's, not equal.
            Assert.True(TestSupport.MaxAbsDiff(logits, expected) < 0.25, $"max |Δ| = {TestSupport.MaxAbsDiff(logits, expected)}");
        }
        PeftModel.Apply(half, new PeftConfig { Method = PeftMethod.Lora, LoraR = 4, LoraAlpha = 8, LoraDropout = 0 });
        var trainable = PeftModel.TrainableParameters(half);
        Assert.All(trainable, p => Assert.Equal(ScalarType.Float32, p.Param.dtype));
        Assert.All(trainable, p => Assert.Contains(".lora_", p.Name));
        using var opt = optim.AdamW(trainable.Select(p => p.Param), lr: 1e-2);
        var before = half.BaseParameters().First().Param.detach().clone();
        var loss = nn.functional.cross_entropy(half.Forward(ids).reshape(-1, 67), ids.reshape(-1));
        loss.backward();
        opt.step();
        Assert.All(trainable.Where(p => p.Name.Contains("lora_A")), p => Assert.NotNull(p.Param.grad));
        Assert.True(half.BaseParameters().First().Param.eq(before).all().item<bool>(), "the frozen bf16 base must not move");
        // Full fine-tuning would train the bf16 weights themselves: refused, naming the field.
        var e = Assert.Throws<PeftException>(() => FateLlm.Training.Trainer.FineTuning.Open(TestSupport.FixturePath("llama-gqa"),
            new PeftConfig { Method = PeftMethod.Full, BaseDtype = ScalarType.BFloat16 }, 1));
        Assert.Contains("peft.base-dtype", e.Message);
    }

    [Fact]
    public void The_base_keeps_the_checkpoints_dtype_unless_another_is_asked_for()
    {
        var fp32 = TestSupport.FixturePath("families", "llama3");
        var bf16 = TestSupport.TempDir();
        using (var m = HfCheckpoint.Load(fp32, ScalarType.BFloat16)) HfCheckpoint.Save(m, bf16);
        var auto = new PeftConfig { Method = PeftMethod.Lora };
        Assert.Null(FateLlm.Actors.Jobs.JobFile.Default("j", fp32, [], "out").Peft.BaseDtype); // reference.conf: auto
        Assert.Equal(ScalarType.BFloat16, auto.BaseDtypeFor(bf16));
        Assert.Equal(ScalarType.Float32, auto.BaseDtypeFor(fp32));
        Assert.Equal(ScalarType.Float32, (auto with { BaseDtype = ScalarType.Float32 }).BaseDtypeFor(bf16));
        Assert.Equal(ScalarType.Float32, (auto with { Method = PeftMethod.Full }).BaseDtypeFor(bf16));
    }

    [Fact]
    public void A_missing_tensor_is_named()
    {
        var dir = CopyFixture("llama-gqa");
        var path = Path.Combine(dir, "model.safetensors");
        var tensors = SafeTensors.Load(path);
        tensors.Remove("model.layers.1.mlp.up_proj.weight");
        SafeTensors.Save(path, tensors);
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("model.layers.1.mlp.up_proj.weight", e.Message);
    }

    [Fact]
    public void A_shape_mismatch_is_named()
    {
        var dir = CopyFixture("llama-gqa");
        var cfg = File.ReadAllText(Path.Combine(dir, "config.json")).Replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg);
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Load(dir));
        // The first tensor in file order that the config shapes differently, with both shapes.
        Assert.Matches(@"tensor 'model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' has shape \[(96,48|48,96)\] but the config needs \[(100,48|48,100)\]", e.Message);
    }

    static string CopyFixture(string name)
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath(name))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }
}
