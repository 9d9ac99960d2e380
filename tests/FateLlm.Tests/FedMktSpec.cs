using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.Mkt;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>FedMKT's logit blocks and their checks, and rounds through the cluster with three tokenizers and a party killed mid-round.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class FedMktSpec
{
    static PublicLogits Block() => new(50, 2, new Dictionary<int, string> { [3] = " cat", [7] = "s" },
        [new ExampleLogits(1.5f, "cats", [0, 3], [3, 7, 7, 3], [(Half)2.0, (Half)1.0, (Half)0.5, (Half)(-1.0)])]);

    static readonly PublicLogits.Limits Limits = new(Examples: 1, MaxTokens: 16, MaxK: 4, MaxVocab: 100);

    [Fact]
    public void A_block_round_trips_and_a_malformed_one_is_refused_naming_the_party_and_the_fault()
    {
        var bytes = Block().ToBytes();
        var back = PublicLogits.Parse(bytes, Limits);
        Assert.Equal(Block().Surfaces, back.Surfaces);
        Assert.Equal(Block().Examples[0].Ids, back.Examples[0].Ids);
        Assert.Equal(Block().Examples[0].Values, back.Examples[0].Values);
        Assert.InRange(bytes.LongLength, 1, Limits.MaxBytes);

        var codec = AlgorithmCatalog.BuiltIn.Get(FedMktAlgorithm.AlgorithmName).Codec;
        var exchange = new Exchange(FedMktAlgorithm.FitPhase, new Dictionary<string, PartyInstruction>
        {
            ["acme"] = PartyInstruction.Of(new Dictionary<string, string>(), new Dictionary<string, string> { ["examples"] = "1", ["max-tokens"] = "16", ["top-k"] = "4" }),
        });
        var context = new UpdateCheckContext(exchange, "acme", new UpdateLimits { MaxNorm = 1e6, MaxBytes = 1 << 20 }, null);
        string Refusal(byte[] b) => codec.Check(context, b).Problem!;
        Assert.Null(codec.Check(context, bytes).Problem);
        Assert.Contains("party 'acme' sent a malformed logit block: the block ends", Refusal(bytes[..^3]));
        Assert.Contains("not a FedMKT logit block", Refusal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        var nan = Block() with { Examples = [Block().Examples[0] with { Values = [Half.NaN, (Half)1, (Half)1, (Half)1] }] };
        Assert.Contains("logit 0 is NaN", Refusal(nan.ToBytes()));
        var foreign = Block() with { Examples = [Block().Examples[0] with { Ids = [3, 9, 7, 3] }] };
        Assert.Contains("token id 9 outside the vocabulary of 50 or the surface table", Refusal(foreign.ToBytes()));
        var backwards = Block() with { Examples = [Block().Examples[0] with { Starts = [3, 0] }] };
        Assert.Contains("token 1 starts at 0", Refusal(backwards.ToBytes()));
        Assert.Contains("2 examples for a public set of 1", Refusal((Block() with { Examples = [Block().Examples[0], Block().Examples[0]] }).ToBytes()));
    }

    [Fact]
    public void Settings_need_a_model_for_every_party_and_public_data()
    {
        var spec = JobFile.Default("m", "server", [new PartySpec("acme", "train", null), new PartySpec("globex", "train", null)], "out") with
        {
            Algorithm = JobFile.Algorithm(FedMktAlgorithm.AlgorithmName, new Dictionary<string, string> { ["public-data"] = "p.jsonl", ["party-models.acme"] = "slm-gpt2" }),
        };
        var algorithm = AlgorithmCatalog.BuiltIn.Get(FedMktAlgorithm.AlgorithmName);
        Assert.Contains("job.algorithm.party-models.globex: party 'globex' needs its small model", Assert.Throws<JobSpecException>(() => algorithm.Validate(spec)).Message);
        var example = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "fedmkt.conf")));
        JobSpecValidation.Validate(example, "fedmkt.conf", AlgorithmCatalog.BuiltIn);
        var settings = FedMktAlgorithm.Settings.Of(example);
        Assert.Equal("slm-gpt2", settings.Models["acme"]);
        Assert.Equal((64, 128, 0.9, 1), (settings.PublicLimit, settings.TopK, settings.Transfer.Alpha, settings.Transfer.Epochs));
        var typo = spec with { Algorithm = spec.Algorithm with { Settings = new Dictionary<string, string>(spec.Algorithm.Settings) { ["party-models.globx"] = "x" } } };
        Assert.Contains("did you mean 'party-models.globex'", Assert.Throws<JobSpecException>(() => algorithm.Validate(typo)).Message);
        Assert.False(settings.OneWay || settings.PostFedAvg);
        JobSpec With(params (string Key, string Value)[] extra)
        {
            var settings = new Dictionary<string, string>(spec.Algorithm.Settings) { ["party-models.globex"] = "slm-llama" };
            foreach (var (k, v) in extra) settings[k] = v;
            return spec with { Algorithm = spec.Algorithm with { Settings = settings } };
        }
        Assert.Contains("job.algorithm.mode = 'both' must be two-way", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("mode", "both")))).Message);
        Assert.Contains("post-fedavg = on averages the parties' LoRA, so every party-models.<org> must name the same model (got acme → slm-gpt2, globex → slm-llama)",
            Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("post-fedavg", "on")))).Message);
        var same = FedMktAlgorithm.Settings.Of(With(("post-fedavg", "on"), ("mode", "one-way"), ("party-models.globex", "slm-gpt2")));
        Assert.True(same.OneWay && same.PostFedAvg);
    }
}

[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class FedMktFederationSpec
{
    internal static string SmallModel(string root, string name, string arch, string? tokenizerDir)
    {
        var dir = Path.Combine(root, name);
        var tok = tokenizerDir is null ? new ByteTokenizer() : TokenizerLoader.Load(tokenizerDir, null);
        var raw = (System.Text.Json.Nodes.JsonObject)ModelPresets.Create(arch, "tiny").Raw.DeepClone();
        raw["vocab_size"] = tok.VocabSize;
        using (var m = CausalLm.Create(ModelConfig.FromJson(raw)))
        {
            m.InitializeWeights(name.Length);
            HfCheckpoint.Save(m, dir);
        }
        if (tokenizerDir is null) ByteTokenizer.Save(dir);
        else TokenizerLoader.CopyFiles(tokenizerDir, dir);
        return dir;
    }

    [Fact]
    public async Task Three_tokenizers_exchange_logits_through_the_cluster_and_a_party_killed_in_the_distil_phase_is_left_out()
    {
        var g = FederationFixture.Prepare();
        var texts = g.Datasets.Values.SelectMany(d => TokenizerTraining.ReadCorpus(d["train"])).ToList();
        TokenizerTraining.Train(TokenizerKind.Gpt2Bpe, texts, 400, Path.Combine(g.Root, "bpe"));
        TokenizerTraining.Train(TokenizerKind.SentencePieceBpe, texts, 400, Path.Combine(g.Root, "sp"));
        var models = new Dictionary<string, string>
        {
            ["party-models.animal"] = SmallModel(g.Root, "slm-gpt2", "gpt2", Path.Combine(g.Root, "bpe")),
            ["party-models.artifact"] = SmallModel(g.Root, "slm-llama", "llama", Path.Combine(g.Root, "sp")),
            ["party-models.food"] = SmallModel(g.Root, "slm-bytes", "llama", null),
        };
        var (_, publicSet) = DemoCorpus.Write(Path.Combine(g.Root, "public"));
        // food's node dies when asked to distil in round 1, after its logits were used: the phase and round 2 go on without it.
        var crash = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 1, phase = 2, action = terminate }]");
        await using var fed = await FederationFixture.Start(g, crash);
        var spec = FederationFixture.Job(g, "mkt", rounds: 2, quorum: 2, deadlineSeconds: 60) with
        {
            Algorithm = JobFile.Algorithm(FedMktAlgorithm.AlgorithmName, new Dictionary<string, string>(models)
            {
                ["public-data"] = publicSet, ["public-limit"] = "6", ["top-k"] = "8", ["batch-size"] = "3",
            }),
        };
        var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(240));

        Assert.Equal([1, 2], status.Rounds.Select(r => r.Round));
        var round1 = status.Rounds[0].Parties.ToDictionary(p => p.Org);
        Assert.True(round1["animal"].Succeeded && round1["artifact"].Succeeded, $"{round1["animal"].Reason} {round1["artifact"].Reason}");
        Assert.False(round1["food"].Succeeded);
        Assert.All(status.Rounds[1].Parties.Where(p => p.Org != "food"), p => Assert.True(p.Succeeded, p.Reason));
        // Each distilling party aligned part of the server's logits into its own tokenization (the rest fell back to one-hots).
        Assert.All(status.Rounds[1].Parties.Where(p => p.Succeeded), p => Assert.InRange(p.Metrics["mkt.aligned"], 0.05, 1.0));
        // The server model moved; the small models never left their nodes (only logits did).
        using var before = HfCheckpoint.Load(g.Model);
        using var after = HfCheckpoint.Load(Path.Combine(spec.OutputDir, "server-merged"));
        Assert.Contains(after.BaseParameters().Zip(before.BaseParameters()), x => !OffsiteSpec.Same(x.Item1.Param, x.Item2.Param));
    }
}

/// <summary>FedMKT's numerics through <see cref="FederatedSimulation"/>, no cluster.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class FedMktSimulationSpec
{
    [Fact]
    public void A_distillation_killed_at_step_k_resumes_at_its_checkpoint_and_ends_with_the_tensors_of_an_uninterrupted_run()
    {
        var dir = TestSupport.TempDir();
        foreach (var (name, seed) in new[] { ("student", 3), ("teacher", 4) })
        {
            using var m = CausalLm.Create(ModelPresets.Create("llama", "tiny"));
            m.InitializeWeights(seed);
            HfCheckpoint.Save(m, Path.Combine(dir, name));
            ByteTokenizer.Save(Path.Combine(dir, name));
        }
        var data = new DataOptions { MaxPromptTokens = 32, MaxResponseTokens = 32, MaxTotalTokens = 64 };
        var publicSet = Enumerable.Range(0, 12).Select(i => new Example($"word: fox {i}", "a quick brown animal", $"public:{i}")).ToList();
        var peft = new Training.Peft.PeftConfig { LoraDropout = 0.1 }; // the dropout stream must be resumed too
        var options = new TransferOptions(Alpha: 0.5, Temperature: 2, Epochs: 4, BatchSize: 4, LearningRate: 1e-2, Seed: 2);
        PublicLogits teacherBlock;
        using (var teacher = Training.Trainer.FineTuning.Open(Path.Combine(dir, "teacher"), peft, 1))
            teacherBlock = KnowledgeTransfer.Compute(teacher.Model, teacher.Tokenizer, TokenVocabulary.Of(teacher.Tokenizer), publicSet, data, 4);
        var folder = Path.Combine(dir, "ckpt");
        byte[] Run(Training.Trainer.AdapterStepsCheckpoints? c, CancellationToken ct = default)
        {
            using var run = Training.Trainer.FineTuning.Open(Path.Combine(dir, "student"), peft, 1);
            var vocab = TokenVocabulary.Of(run.Tokenizer);
            var own = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, data, 1);
            var aligned = KnowledgeTransfer.Align(teacherBlock, run.Tokenizer, vocab, publicSet, data, options.Temperature);
            var teachers = KnowledgeTransfer.Select([aligned], own.Examples.Select(e => e.Metric).ToList());
            KnowledgeTransfer.Train(run.Model, run.Tokenizer, publicSet, teachers, data, options, ct, c);
            return run.TrainableBytes();
        }
        var uninterrupted = Run(null);
        // Killed after step 7 (of 12; 3 an epoch): the checkpoint every 2 steps is step 6's, inside epoch 2.
        using (var cts = new CancellationTokenSource())
            Assert.ThrowsAny<OperationCanceledException>(() =>
                Run(new Training.Trainer.AdapterStepsCheckpoints(folder, 2, new InferDptSpec.Steps(s => { if (s == 7) cts.Cancel(); })), cts.Token));
        var steps = new List<int>();
        var resumed = Run(new Training.Trainer.AdapterStepsCheckpoints(folder, 2, new InferDptSpec.Steps(steps.Add)));
        Assert.Equal(Enumerable.Range(7, 6), steps);
        Assert.Equal(uninterrupted, resumed);
    }

    [Fact]
    public void One_way_with_post_fedavg_is_one_exchange_per_round_leaves_the_server_untouched_and_averages_the_parties_lora()
    {
        var g = FederationFixture.Prepare();
        var small = FedMktFederationSpec.SmallModel(g.Root, "slm-bytes", "llama", null);
        var (_, publicSet) = DemoCorpus.Write(Path.Combine(g.Root, "public"));
        var spec = FederationFixture.Job(g, "mkt-oneway", rounds: 2, quorum: 3, deadlineSeconds: 60) with
        {
            Algorithm = JobFile.Algorithm(FedMktAlgorithm.AlgorithmName, new Dictionary<string, string>(g.Datasets.Keys.ToDictionary(o => "party-models." + o, _ => small))
            {
                ["public-data"] = publicSet, ["public-limit"] = "6", ["top-k"] = "8", ["batch-size"] = "3", ["mode"] = "one-way", ["post-fedavg"] = "on",
            }),
        };
        var root = Path.Combine(g.Root, "simulation");
        var result = new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec, g.Model,
            g.Datasets.Select(kv => new SimulatedParty(kv.Key, kv.Value)).ToList(), root).Run();

        Assert.Equal(2, result.Steps.Count); // fit and distil in one exchange per round
        Assert.All(result.Steps, s => Assert.Equal(3, s.Metrics["mkt.parties-averaged"]));
        Assert.All(result.Fits, f => Assert.True(f.Update is not null && f.Update.Metrics.ContainsKey("mkt.fit-loss.last"), f.Dropped));
        // The average the arbiter exports is Σ n_k·LoRA_k / Σ n_k over the adapters the parties ended round 2 with, n_k their private examples.
        var average = SafeTensors.Load(Path.Combine(spec.OutputDir, "party-average.safetensors"));
        var parties = g.Datasets.Keys.Select(o => (Lora: SafeTensors.Load(Path.Combine(root, "party-" + o, "work", spec.JobId, "fedmkt-r0002-distill.safetensors")),
            N: (double)File.ReadLines(g.Datasets[o]["train"]).Count(l => l.Trim().Length > 0))).ToList();
        Assert.NotEmpty(average);
        foreach (var (name, t) in average)
        {
            var expected = parties.Select(x => x.Lora[name] * (x.N / parties.Sum(y => y.N))).Aggregate((a, b) => a + b);
            Assert.True(t.allclose(expected, rtol: 1e-5, atol: 1e-7), name);
        }
        // One-way: the server model is not tuned.
        using var before = HfCheckpoint.Load(g.Model);
        using var after = HfCheckpoint.Load(Path.Combine(spec.OutputDir, "server-merged"));
        Assert.All(after.BaseParameters().Zip(before.BaseParameters()), x => Assert.True(OffsiteSpec.Same(x.Item1.Param, x.Item2.Param), x.Item1.Name));
    }
}
