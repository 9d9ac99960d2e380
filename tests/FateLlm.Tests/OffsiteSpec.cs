using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.Offsite;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>Offsite tuning's pure parts: the emulator's blocks, the sub-model, and plugging adapters back in.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class OffsiteSpec
{
    internal static bool Same(Tensor a, Tensor b) => a.eq(b).all().item<bool>();

    [Theory]
    [InlineData(12, 1, 1, 4, new[] { 1, 4, 7, 10 })]               // FATE-LLM's GPT-2 tutorial
    [InlineData(24, 2, 2, 8, new[] { 2, 5, 7, 10, 13, 16, 18, 21 })] // OPT-1.3B in the Offsite-Tuning paper
    [InlineData(6, 1, 1, 3, new[] { 1, 3, 4 })]                     // stride 1.5: round half to even, as Python's round
    [InlineData(6, 1, 1, 1, new[] { 3 })]                           // one block: the middle's centre, 1.5 → 2
    [InlineData(4, 1, 1, 2, new[] { 1, 2 })]                        // the whole middle: the sub-model is the model
    public void The_emulator_takes_middle_blocks_uniformly(int layers, int bottom, int top, int emulator, int[] expected)
    {
        var plan = EmulatorPlan.Choose(layers, bottom, top, emulator);
        Assert.Equal(expected, plan.Emulator);
        Assert.Equal(Enumerable.Range(0, bottom), plan.Bottom);
        Assert.Equal(Enumerable.Range(layers - top, top), plan.Top);
        Assert.Equal(bottom + emulator + top, plan.SubLayers);
    }

    [Theory]
    [InlineData(12, 2, 2, 11, "job.algorithm.emulator = 11 must be between 1 and the 8 middle blocks (model of 12 blocks, bottom 2, top 2); more would repeat blocks")]
    [InlineData(4, 2, 2, 1, "job.algorithm: bottom 2 + top 2 adapter blocks leave no middle block of the model's 4")]
    [InlineData(12, 0, 0, 4, "job.algorithm.bottom = 0 and job.algorithm.top = 0: the adapters need at least one block (both ≥ 0, not both 0)")]
    public void An_impossible_split_is_refused_with_the_numbers(int layers, int bottom, int top, int emulator, string message)
    {
        var e = Assert.Throws<JobSpecException>(() => EmulatorPlan.Choose(layers, bottom, top, emulator));
        Assert.Equal(message, e.Message);
    }

    static string TinyModel(string arch = "llama", bool tied = true)
    {
        var dir = TestSupport.TempDir();
        var config = ModelPresets.Create(arch, "tiny");
        var raw = (System.Text.Json.Nodes.JsonObject)config.Raw.DeepClone();
        raw["tie_word_embeddings"] = tied;
        using var m = CausalLm.Create(ModelConfig.FromJson(raw));
        m.InitializeWeights(5);
        HfCheckpoint.Save(m, dir);
        FateLlm.Training.Tokenization.ByteTokenizer.Save(dir);
        return dir;
    }

    static JobSpec Spec(string model, string adapters = "full", int emulator = 2) => JobFile.Default("ost", model, [new PartySpec("a", "train", null)], TestSupport.TempDir()) with
    {
        Algorithm = JobFile.Algorithm(OffsiteAlgorithm.AlgorithmName, new Dictionary<string, string>
        {
            ["bottom"] = "1", ["top"] = "1", ["emulator"] = emulator.ToString(), ["adapters"] = adapters, ["export-emulator"] = "off",
        }),
    };

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void With_the_whole_middle_as_emulator_the_sub_model_is_the_model(string arch)
    {
        var full = TinyModel(arch);
        var plan = EmulatorPlan.Choose(4, 1, 1, 2);
        var work = TestSupport.TempDir();
        var bundle = Path.Combine(work, "bundle");
        File.WriteAllBytes(bundle, SubModel.Bundle(full, plan));
        var folder = SubModel.Materialize(bundle, work);
        Assert.Equal(folder, SubModel.Materialize(bundle, work)); // unpacked once
        using var a = HfCheckpoint.Load(full);
        using var b = HfCheckpoint.Load(folder);
        var ids = TestSupport.Ids([1, 40, 99, 7, 200, 3]);
        using var _ = no_grad();
        Assert.Equal(0f, TestSupport.MaxAbsDiff(a.Forward(ids), b.Forward(ids)));
        Assert.True(File.Exists(Path.Combine(folder, "tokenizer_config.json")), "the tokenizer travels with the sub-model");
    }

    [Fact]
    public void A_sub_model_of_a_gemma3_keeps_each_blocks_sliding_or_global_attention()
    {
        // Full model: blocks 0, 1, 3 slide and block 2 is global (pattern 3); the sub-model keeps 0, 1 and 3, which
        // renumbered as 0, 1, 2 would make its last block global if the pattern were derived again.
        var full = ModelConfig.Load(TestSupport.FixturePath("families", "gemma3", "config.json"));
        Assert.Equal([true, true, false, true], full.SlidingLayers);
        var sub = SubModel.Config(full, EmulatorPlan.Choose(4, 1, 1, 1));
        Assert.Equal(3, sub.NumLayers);
        Assert.Equal([true, true, true], sub.SlidingLayers);
    }

    [Fact]
    public void A_smaller_emulator_keeps_every_tensor_a_forward_needs_including_an_untied_head()
    {
        var full = TinyModel(tied: false);
        var plan = EmulatorPlan.Choose(4, 1, 1, 1);
        using var m = HfCheckpoint.Load(full);
        var sub = SubModel.Tensors(m.BaseParameters().Select(p => (p.Name, (Tensor)p.Param)), plan);
        Assert.Contains("lm_head.weight", sub.Keys);
        Assert.Contains("model.embed_tokens.weight", sub.Keys);
        Assert.Contains("model.norm.weight", sub.Keys);
        Assert.Equal(3, sub.Keys.Select(BlockName.Parse).Where(b => b is not null).Select(b => b!.Value.Block).Distinct().Count());
        // Sub-model block 1 is the full model's block 2 (the centre of the middle {1, 2}, 0.5 → 0, so block 1).
        Assert.True(Same(sub["model.layers.1.mlp.up_proj.weight"], m.BaseParameters().Single(p => p.Name == "model.layers.1.mlp.up_proj.weight").Param));
        Assert.True(Same(sub["model.layers.2.mlp.up_proj.weight"], m.BaseParameters().Single(p => p.Name == "model.layers.3.mlp.up_proj.weight").Param));
    }

    [Theory]
    [InlineData("full", false)]
    [InlineData("lora", false)]
    [InlineData("lora", true)]
    public void Plugged_in_adapters_land_in_the_full_models_blocks_and_the_rest_is_untouched(string adapters, bool watermark)
    {
        var full = TinyModel();
        var spec = Spec(full, adapters) with
        {
            Peft = new PeftConfig { Method = PeftMethod.Lora, LoraR = 2, LoraAlpha = 4, LoraDropout = 0 },
            // FedIPR under LoRA adapters: the top block's norm scales train and travel next to the LoRA factors.
            Ipr = watermark ? new Training.Ipr.IprOptions { Enabled = true } : Training.Ipr.IprOptions.Off,
        };
        var s = OffsiteAlgorithm.Settings.Of(spec);
        var plan = s.Plan(4);
        var work = TestSupport.TempDir();
        var bundle = Path.Combine(work, "bundle");
        File.WriteAllBytes(bundle, SubModel.Bundle(full, plan));
        var folder = SubModel.Materialize(bundle, work);
        // A sub-model whose adapters moved: adapter blocks (or their LoRA factors) shifted by a constant.
        using var sub = HfCheckpoint.Load(folder);
        sub.Randomness.manual_seed(1);
        OffsiteAlgorithm.MakeTrainable(sub, s, spec, new EmulatorPlan(4, [0], [1, 2], [3]));
        var trainable = PeftModel.TrainableParameters(sub);
        Assert.All(trainable, p => Assert.Matches(@"^model\.layers\.[03]\.", p.Name));
        if (adapters == "lora")
            Assert.Equal(watermark ? ["model.layers.3.input_layernorm.weight", "model.layers.3.post_attention_layernorm.weight"] : [],
                trainable.Where(p => !p.Name.Contains(".lora_")).Select(p => p.Name).Order());
        using (no_grad()) foreach (var (_, p) in trainable) p.add_(0.01);
        var moved = SafeTensors.ToBytes(PeftModel.TrainableState(sub));

        var outDir = Path.Combine(work, "plugged");
        OffsiteAlgorithm.Plug(spec, s, full, moved, outDir);
        using var plugged = HfCheckpoint.Load(outDir);
        using var original = HfCheckpoint.Load(full);
        // With e = M the sub-model is the model: the plugged model computes what the trained sub-model computes.
        var ids = TestSupport.Ids([5, 17, 80, 120, 3]);
        using var _ = no_grad();
        if (adapters == "lora") PeftModel.MergeLora(sub);
        Assert.True(TestSupport.MaxAbsDiff(plugged.Forward(ids), sub.Forward(ids)) < 1e-5);
        var before = original.BaseParameters().ToDictionary(p => p.Name, p => p.Param);
        foreach (var (name, p) in plugged.BaseParameters())
        {
            var same = Same(p, before[name]);
            if (name.StartsWith("model.layers.1.") || name.StartsWith("model.layers.2.") || !name.StartsWith("model.layers.")) Assert.True(same, $"{name} must be untouched");
        }
        Assert.Contains(plugged.BaseParameters(), p => p.Name.StartsWith("model.layers.3.") && !Same(p.Param, before[p.Name]));
    }
}

/// <summary>Offsite tuning through the real cluster: parties without the full model, adapters only upward, a crash survived.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class OffsiteFederationSpec
{
    static bool Same(Tensor a, Tensor b) => OffsiteSpec.Same(a, b);

    [Fact]
    public async Task Parties_without_the_base_model_tune_adapters_upload_only_them_survive_a_crash_and_the_arbiter_plugs_them_in()
    {
        var g = FederationFixture.Prepare();
        // Only the arbiter finds the model: by name under its models root. Parties get no models root and no path to it.
        var models = Path.Combine(g.Root, "arbiter-models");
        Directory.CreateDirectory(models);
        var baseModel = Path.Combine(models, "offsite-base");
        Directory.Move(g.Model, baseModel);
        var arbiterSide = ConfigurationFactory.ParseString($"fate-llm.models-root = \"{models.Replace("\\", "/")}\"");
        await using var fed = await Actors.Nodes.LocalFederation.StartAsync(Path.Combine(g.Root, "nodes"),
            new Dictionary<string, IReadOnlyDictionary<string, string>>(), arbiterSide.WithFallback(FederationFixture.FastCluster));
        var partySide = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 2, action = terminate }]")
            .WithFallback(FederationFixture.FastCluster);
        foreach (var org in FederationFixture.Orgs) fed.StartParty(org, g.Datasets[org], partySide);
        await Task.WhenAll(FederationFixture.Orgs.Select(o => fed.Parties[o].WhenUp(TimeSpan.FromSeconds(60))));

        var spec = FederationFixture.Job(g, "offsite", rounds: 2, quorum: 2, deadlineSeconds: 40) with
        {
            ModelPath = "offsite-base",
            Algorithm = JobFile.Algorithm(OffsiteAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["bottom"] = "1", ["top"] = "1", ["emulator"] = "1", ["adapters"] = "full", ["export-emulator"] = "off",
            }),
        };
        Assert.False(Directory.Exists(spec.ModelPath), "the job's model path must not resolve on a party");
        var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(180));

        Assert.Equal([1, 2], status.Rounds.Select(r => r.Round));
        Assert.All(status.Rounds[0].Parties, p => Assert.True(p.Succeeded, p.Reason));
        var round2 = status.Rounds[1].Parties.ToDictionary(p => p.Org);
        Assert.False(round2["food"].Succeeded);
        Assert.True(round2["animal"].Succeeded && round2["artifact"].Succeeded);

        // Upward: the adapter blocks' deltas only (2 of the tiny model's 4 blocks, no embeddings or head).
        using var full = HfCheckpoint.Load(baseModel);
        long adapterBytes = full.BaseParameters().Where(p => p.Name.StartsWith("model.layers.0.") || p.Name.StartsWith("model.layers.3."))
            .Sum(p => p.Param.numel() * 4);
        long modelBytes = full.BaseParameters().Sum(p => p.Param.numel() * 4);
        foreach (var p in status.Rounds[0].Parties)
        {
            Assert.InRange(p.UploadBytes, adapterBytes, adapterBytes + 16_384);
            // Downward in round 1: the sub-model (3 blocks + embeddings + head) and the adapters, less than the whole model plus adapters.
            Assert.InRange(p.DownloadBytes, adapterBytes, modelBytes + adapterBytes);
        }

        // The plug-in: an HF checkpoint of the full model whose adapter blocks moved and whose middle did not.
        using var plugged = HfCheckpoint.Load(Path.Combine(spec.OutputDir, "model"));
        var before = full.BaseParameters().ToDictionary(p => p.Name, p => p.Param);
        Assert.All(plugged.BaseParameters().Where(p => p.Name.StartsWith("model.layers.1.") || p.Name.StartsWith("model.layers.2.")),
            p => Assert.True(Same(p.Param, before[p.Name]), p.Name));
        Assert.Contains(plugged.BaseParameters(), p => p.Name.StartsWith("model.layers.0.") && !Same(p.Param, before[p.Name]));
        Assert.False(Directory.Exists(Path.Combine(spec.OutputDir, "emulator")), "the emulator stays home unless asked for");
    }
}

/// <summary>Emulator distillation on the arbiter: the emulator alone moves, the KD loss falls, and the result is cached by content.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class EmulatorDistillationSpec
{
    [Fact]
    public void Distillation_trains_only_the_emulator_lowers_the_kd_loss_and_is_reused_for_the_same_inputs()
    {
        var root = TestSupport.TempDir();
        var full = Path.Combine(root, "model");
        var config = ModelPresets.Create("llama", "tiny");
        using (var m = CausalLm.Create(config))
        {
            m.InitializeWeights(9);
            HfCheckpoint.Save(m, full);
            FateLlm.Training.Tokenization.ByteTokenizer.Save(full);
        }
        var corpus = Path.Combine(root, "public.jsonl");
        File.WriteAllLines(corpus, Enumerable.Range(0, 60).Select(i => System.Text.Json.JsonSerializer.Serialize(new { text = $"entry {i}: a word and its gloss, number {i * 7 % 13}" })));
        var spec = JobFile.Default("distil", full, [new PartySpec("a", "train", null)], Path.Combine(root, "out")) with
        {
            Algorithm = JobFile.Algorithm(OffsiteAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["bottom"] = "1", ["top"] = "1", ["emulator"] = "1", ["adapters"] = "full", ["distill.steps"] = "40", ["distill.data"] = corpus,
                ["distill.learning-rate"] = "0.005", ["distill.batch-size"] = "4", ["distill.max-tokens"] = "32",
            }),
        };
        var store = new BlobStore(Path.Combine(root, "blobs"));
        var log = new List<string>();
        var ctx = new ServerContext(spec, store, full, log.Add);
        var algorithm = new OffsiteAlgorithm();
        var first = algorithm.Server.Prepare(ctx);
        var line = Assert.Single(log, l => l.Contains("emulator distilled"));
        var kd = System.Text.RegularExpressions.Regex.Match(line, @"KD ([\d.]+) → ([\d.]+)");
        Assert.True(double.Parse(kd.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) < double.Parse(kd.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), line);

        // Only the emulator (sub-model block 1 = the middle's centre, full block 1) differs from the plain split.
        var distilled = SafeTensors.FromBytes(store.Read(first.Initial.Get(OffsiteAlgorithm.SubModelArtifact)), "distilled");
        var plain = SafeTensors.FromBytes(SubModel.Bundle(full, EmulatorPlan.Choose(4, 1, 1, 1)), "plain");
        foreach (var (name, t) in plain)
        {
            var same = OffsiteSpec.Same(t, distilled[name]);
            Assert.True(name.StartsWith("model.layers.1.") ? !same || name.EndsWith("norm.weight") : same, name);
        }
        Assert.Contains(plain, kv => kv.Key.StartsWith("model.layers.1.") && !OffsiteSpec.Same(kv.Value, distilled[kv.Key]));

        log.Clear();
        var second = algorithm.Server.Prepare(ctx);
        Assert.Equal(first.Initial.Get(OffsiteAlgorithm.SubModelArtifact), second.Initial.Get(OffsiteAlgorithm.SubModelArtifact));
        Assert.Contains(log, l => l.Contains("distilled emulator reused"));
    }

    [Fact]
    public void Distillation_without_a_corpus_is_refused_naming_the_field()
    {
        var spec = JobFile.Default("distil", "m", [new PartySpec("a", "train", null)], TestSupport.TempDir()) with
        {
            Algorithm = JobFile.Algorithm(OffsiteAlgorithm.AlgorithmName, new Dictionary<string, string> { ["distill.steps"] = "10" }),
        };
        var e = Assert.Throws<JobSpecException>(() => new OffsiteAlgorithm().Validate(spec));
        Assert.Equal("job.algorithm.distill.data (a public corpus JSONL on the arbiter) is required when distill.steps = 10", e.Message);
    }
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class OffsiteJobFileSpec
{
    [Fact]
    public void The_example_offsite_job_parses_and_validates()
    {
        var spec = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "offsite.conf")));
        Assert.Equal(OffsiteAlgorithm.AlgorithmName, spec.Algorithm.Name);
        var s = OffsiteAlgorithm.Settings.Of(spec);
        Assert.Equal((1, 1, 2, false, false, 0), (s.Bottom, s.Top, s.Emulator, s.LoraAdapters, s.ExportEmulator, s.Distill.Steps));
        JobSpecValidation.Validate(spec, "offsite.conf", AlgorithmCatalog.BuiltIn);
        var typo = spec with { Algorithm = spec.Algorithm with { Settings = new Dictionary<string, string>(spec.Algorithm.Settings) { ["emulater"] = "3" } } };
        var e = Assert.Throws<JobSpecException>(() => JobSpecValidation.Validate(typo, "offsite.conf", AlgorithmCatalog.BuiltIn));
        Assert.Contains("job.algorithm.emulater is not a setting of algorithm 'offsite' (did you mean 'emulator'?)", e.Message);
    }
}
