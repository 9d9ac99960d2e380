using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.CoLlm;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>FedCoLLM: the top-k KL, gradients reaching both adapters, and rounds through the cluster with an arbiter crash.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class FedCoLlmSpec
{
    static readonly string[] Texts =
    [
        "the cat sat on the mat and looked at the dog", "a river runs through the old town", "bread is baked in a hot oven",
        "the hammer drives the nail into the wood", "birds fly south when the winter comes",
    ];

    [Fact]
    public void The_top_k_divergence_is_the_KL_of_the_teachers_renormalised_top_k_and_zero_against_itself()
    {
        var teacher = tensor(new float[] { 2f, 1f, 0f, -1f }, [1, 1, 4]);
        var student = tensor(new float[] { 0f, 1f, 0.5f, 0f }, [1, 1, 4]);
        var mask = ones([1, 1], ScalarType.Bool);
        Assert.Equal(0, MutualDistillation.TopKDivergence(teacher, teacher, mask, 4, 1.0).item<float>(), 6);
        // k = 2: the teacher keeps tokens 0 and 1 (p ∝ e², e¹); the student's full log-softmax is read there.
        double[] t = [Math.Exp(2), Math.Exp(1)], s = [0, 1, 0.5, 0];
        var z = s.Sum(Math.Exp);
        var p = t.Select(x => x / t.Sum()).ToArray();
        var expected = p[0] * (Math.Log(p[0]) - (s[0] - Math.Log(z))) + p[1] * (Math.Log(p[1]) - (s[1] - Math.Log(z)));
        Assert.Equal(expected, MutualDistillation.TopKDivergence(student, teacher, mask, 2, 1.0).item<float>(), 5);
    }

    static CausalLm WithLora(long seed)
    {
        var m = TestSupport.TinyModel(seed: seed);
        m.Randomness.manual_seed(seed);
        PeftModel.Apply(m, new PeftConfig { Method = PeftMethod.Lora, LoraR = 4, LoraAlpha = 8, LoraDropout = 0 });
        return m;
    }

    [Fact]
    public void Co_tuning_moves_both_adapters_and_refuses_two_vocabularies()
    {
        TestSupport.CapThreads();
        using var small = WithLora(1);
        using var large = WithLora(2);
        static Dictionary<string, Tensor> LoraB(CausalLm m) => PeftModel.TrainableState(m).Where(kv => kv.Key.Contains("lora_B")).ToDictionary();
        Assert.All(LoraB(small).Values.Concat(LoraB(large).Values), b => Assert.Equal(0, b.abs().max().item<float>()));
        var o = new MutualDistillOptions(Steps: 3, BatchSize: 2, MaxTokens: 32, LearningRate: 1e-2, Lambda: 1.0, Temperature: 1.0, TopK: 16, Seed: 5);
        var r = MutualDistillation.Run(small, large, new ByteTokenizer(), Texts, o);
        Assert.Equal(3, r.Steps);
        Assert.True(r.FirstKdSmall > 0 && r.FirstKdLarge > 0);
        Assert.All(LoraB(small).Values.Concat(LoraB(large).Values), b => Assert.True(b.abs().max().item<float>() > 0, "every LoRA B moved"));

        // With λ = 0 (CE alone) the small adapter ends elsewhere: the KD term carries gradient.
        using var ceOnlySmall = WithLora(1);
        using var ceOnlyLarge = WithLora(2);
        MutualDistillation.Run(ceOnlySmall, ceOnlyLarge, new ByteTokenizer(), Texts, o with { Lambda = 0 });
        var withKd = LoraB(small);
        Assert.Contains(LoraB(ceOnlySmall), kv => TestSupport.MaxAbsDiff(kv.Value, withKd[kv.Key]) > 1e-6);

        var other = CausalLm.Create(ModelPresets.Create("llama", "tiny") with { VocabSize = 300 });
        var e = Assert.Throws<ModelFormatException>(() => MutualDistillation.Run(small, other, new ByteTokenizer(), Texts, o));
        Assert.Contains("the small model has 259 tokens, the large 300", e.Message);
    }

    [Fact]
    public void Settings_need_a_server_model_and_public_data_and_LoRA()
    {
        static JobSpec With(params (string Key, string Value)[] settings) => JobFile.Default("c", "m", [new PartySpec("a", "train", null)], "out") with
        {
            Algorithm = JobFile.Algorithm(FedCoLlmAlgorithm.AlgorithmName, settings.ToDictionary(s => s.Key, s => s.Value)),
        };
        var algorithm = AlgorithmCatalog.BuiltIn.Get(FedCoLlmAlgorithm.AlgorithmName);
        Assert.Contains("job.algorithm.server-model", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("public-data", "p.jsonl")))).Message);
        Assert.Contains("job.algorithm.public-data", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("server-model", "s")))).Message);
        var ok = With(("server-model", "s"), ("public-data", "p.jsonl"));
        algorithm.Validate(ok);
        Assert.Contains("use lora", Assert.Throws<JobSpecException>(() => algorithm.Validate(ok with { Peft = ok.Peft with { Method = PeftMethod.PtuningV2 } })).Message);
        var example = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "fedcollm.conf")));
        JobSpecValidation.Validate(example, "fedcollm.conf", AlgorithmCatalog.BuiltIn);
        Assert.Equal((50, 128, 1.0), (FedCoLlmAlgorithm.Settings.Of(example).Distill.Steps, FedCoLlmAlgorithm.Settings.Of(example).Distill.TopK,
            FedCoLlmAlgorithm.Settings.Of(example).Distill.Temperature));
        Assert.Contains("did you mean 'distill.steps'", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("server-model", "s"), ("public-data", "p"), ("distill.step", "3")))).Message);
    }
}

[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class FedCoLlmFederationSpec
{
    /// <summary>A tiny server model beside the parties' and three public lines; jobs of two rounds with 4 co-tuning steps each.</summary>
    internal static (string Server, Func<string, JobSpec> Spec) Ground(FederationFixture.Ground g)
    {
        var server = Path.Combine(g.Root, "server");
        using (var m = CausalLm.Create(ModelPresets.Create("llama", "tiny")))
        {
            m.InitializeWeights(11);
            HfCheckpoint.Save(m, server);
        }
        ByteTokenizer.Save(server);
        var publicData = Path.Combine(g.Root, "public.jsonl");
        File.WriteAllLines(publicData, new[] { "tools and machines", "plants grow in the garden", "people walk and run" }.Select(t => $"{{\"text\": \"{t}\"}}"));
        return (server, id => FederationFixture.Job(g, id, rounds: 2) with
        {
            Algorithm = JobFile.Algorithm(FedCoLlmAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["server-model"] = server, ["public-data"] = publicData, ["distill.steps"] = "4", ["distill.batch-size"] = "2", ["distill.max-tokens"] = "32",
            }),
        });
    }

    static readonly TimeSpan Generous = TimeSpan.FromSeconds(180);

    [Fact]
    public async Task Rounds_run_under_secure_aggregation_and_after_an_arbiter_crash_mid_round_the_job_resumes_to_the_same_models()
    {
        var g = FederationFixture.Prepare();
        var (server, Spec) = Ground(g);

        string reference;
        await using (var fed = await FederationFixture.Start(g))
        {
            var secure = FederationFixture.Secure(Spec("collm-secure"), 30);
            var done = await FederationFixture.RunToCompletion(fed, secure, Generous);
            Assert.All(done.Rounds.SelectMany(r => r.Parties), p => Assert.True(p.Succeeded, p.Reason));
            foreach (var folder in new[] { "adapter", "merged", "server-adapter", "server-merged" })
                Assert.True(Directory.Exists(Path.Combine(secure.OutputDir, folder)), folder);
            // The server model moved (its LoRA B started at zero), and its tokenizer came along.
            using (var before = HfCheckpoint.Load(server))
            using (var after = HfCheckpoint.Load(Path.Combine(secure.OutputDir, "server-merged")))
                Assert.Contains(after.BaseParameters().Zip(before.BaseParameters()), x => !OffsiteSpec.Same(x.Item1.Param, x.Item2.Param));
            Assert.True(File.Exists(Path.Combine(secure.OutputDir, "server-merged", TokenizerLoader.ConfigFile)));
            // Secure aggregation rounds stochastically (fresh entropy), so the reproducibility reference runs without it.
            reference = (await FederationFixture.RunToCompletion(fed, Spec("collm-clean"), Generous)).GlobalDigest!;
        }

        var crashAt = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = round.collected, job = collm-crash, round = 2, action = terminate }]");
        var g2 = g with { Root = Path.Combine(g.Root, "crash") };
        await using (var fed = await FederationFixture.Start(g2, crashAt))
        {
            var crash = Spec("collm-crash");
            Assert.IsType<JobAccepted>(await fed.SubmitAsync(crash));
            await fed.Arbiter.System.WhenTerminated.WaitAsync(Generous);
            await fed.RestartArbiter(overrides: FederationFixture.FastCluster);
            var resumed = await fed.WaitAsync(crash.JobId, Generous);
            Assert.True(resumed.State == JobState.Completed, resumed.Reason);
            Assert.Equal([1, 2], resumed.Rounds.Select(r => r.Round));
            // The distilled small adapter of the resumed job is the clean job's, bit for bit: the server side re-ran from persisted state.
            Assert.Equal(reference, resumed.GlobalDigest);
        }
    }
}
