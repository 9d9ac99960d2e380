using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Metrics;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>Example-level DP-SGD's pieces, each against an independent computation or a published figure.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class DpSgdSpec
{
    static (CausalLm Model, List<TokenizedExample> Data, int Pad) LoraModel(int examples)
    {
        TestSupport.CapThreads();
        var m = TestSupport.TinyModel();
        PeftModel.Apply(m, new PeftConfig { LoraR = 4, LoraDropout = 0 });
        var tok = new ByteTokenizer();
        var data = Enumerable.Range(0, examples).Select(i => InstructionData.Tokenize(new Example($"word {i}", $"meaning number {i * 7}", "x"), tok, new DataOptions())).ToList();
        return (m, data, tok.PadId!.Value);
    }

    [Fact]
    public void Per_example_clipping_equals_a_loop_of_batch_one_backward_passes_and_never_exceeds_the_clip_norm()
    {
        var (m, data, pad) = LoraModel(6);
        using var _ = m;
        using var scope = NewDisposeScope();
        var trainable = PeftModel.TrainableParameters(m);
        const double clip = 0.05;
        var (sum, norms, _) = DpSgd.ClippedSum(m, data, trainable, clip, pad, null);
        // Independently: each example alone, its full gradient read off, clipped, summed.
        var expected = trainable.ToDictionary(p => p.Name, p => zeros_like(p.Param));
        foreach (var example in data)
        {
            foreach (var (_, p) in trainable) p.grad?.zero_();
            using var batch = InstructionData.Collate([example], pad, null);
            LanguageModelLoss.Compute(m, batch).backward();
            var grads = trainable.ToDictionary(p => p.Name, p => p.Param.grad!.clone());
            var norm = Math.Sqrt(grads.Values.Sum(g => g.pow(2).sum().item<float>()));
            Assert.True(norm > clip, $"example gradient norm {norm} should exceed the clip to test clipping");
            var clipped = grads.ToDictionary(kv => kv.Key, kv => kv.Value.mul(clip / norm));
            Assert.True(Math.Sqrt(clipped.Values.Sum(g => g.pow(2).sum().item<float>())) <= clip * (1 + 1e-5));
            foreach (var (name, g) in clipped) expected[name].add_(g);
        }
        foreach (var (name, t) in expected) Assert.True(TestSupport.MaxAbsDiff(t, sum[name]) < 1e-6, $"{name}: {TestSupport.MaxAbsDiff(t, sum[name])}");
        Assert.All(norms, n => Assert.True(n > clip));
        // Every clipped contribution is at most C: the sum of n of them is at most n·C.
        Assert.True(Math.Sqrt(sum.Values.Sum(g => g.pow(2).sum().item<float>())) <= data.Count * clip * (1 + 1e-5));
    }

    [Fact]
    public void The_noise_has_standard_deviation_sigma_times_c_and_is_reproducible_per_seed()
    {
        using var scope = NewDisposeScope();
        var a = new Dictionary<string, Tensor> { ["w"] = zeros(200_000) };
        var b = new Dictionary<string, Tensor> { ["w"] = zeros(200_000) };
        DpSgd.AddNoise(a, 1.1 * 0.5, seed: 9);
        DpSgd.AddNoise(b, 1.1 * 0.5, seed: 9);
        Assert.Equal(0.55, a["w"].std().item<float>(), 2);
        Assert.Equal(0, a["w"].mean().item<float>(), 2);
        Assert.Equal(0, TestSupport.MaxAbsDiff(a["w"], b["w"]));
    }

    [Fact]
    public void Poisson_sampling_takes_each_example_with_probability_q()
    {
        const int n = 200_000;
        const double q = 0.01;
        var picked = DpSgd.PoissonSample(n, q, new Random(3));
        var sd = Math.Sqrt(n * q * (1 - q));
        Assert.InRange(picked.Count, n * q - 4 * sd, n * q + 4 * sd);
        Assert.Equal(picked.Count, picked.Distinct().Count());
        // Sizes vary from step to step (Binomial(n, q)), unlike a fixed batch.
        var sizes = Enumerable.Range(0, 50).Select(i => DpSgd.PoissonSample(1000, 0.05, new Random(i)).Count).ToList();
        Assert.True(sizes.Distinct().Count() > 5);
    }

    [Fact]
    public void The_accountant_reproduces_tf_privacys_mnist_figure_with_its_conversion_and_solves_sigma_for_a_target()
    {
        // TF Privacy's MNIST tutorial (tutorials/README.md, its parameter table's first line): q = 256/60000, σ = 1.12,
        // 60 epochs (int(60·60000/256) = 14062 steps), δ = 1e-5 → ε = 2.92, with the RDP → (ε, δ) conversion of
        // Mironov 2017 (ε = min_α RDP(α) − log δ/(α−1)) over its orders 1.1…10.9, 12…63.
        const double q = 256.0 / 60000, sigma = 1.12, delta = 1e-5;
        const int steps = 14062;
        double[] orders = [.. Enumerable.Range(1, 99).Select(x => 1 + x / 10.0), .. Enumerable.Range(12, 52).Select(x => (double)x)];
        var rdp = RdpAccountant.SampledGaussianRdp(q, sigma, orders).Select(r => r * steps).ToArray();
        var mironov = orders.Select((a, i) => rdp[i] - Math.Log(delta) / (a - 1)).Min();
        Assert.Equal(2.92, mironov, 2);
        // The conversion the product uses (Balle et al. 2020) is tighter on the same RDP curve.
        var used = DpSgd.Epsilon(q, sigma, steps, delta);
        Assert.InRange(used, 2.0, mironov);
        // target-epsilon: the σ solved for a target gives that ε (to the bisection's tolerance) and no smaller σ does.
        var solved = DpSgd.NoiseFor(used, q, steps, delta);
        Assert.Equal(sigma, solved, 2);
        Assert.True(DpSgd.Epsilon(q, solved, steps, delta) <= used * (1 + 1e-6));
    }

    [Fact]
    public void Dp_sgd_trains_with_poisson_batches_and_the_partys_ledger_charges_a_round_once_and_refuses_one_past_the_target()
    {
        var (m, data, pad) = LoraModel(32);
        using var _ = m;
        var before = PeftModel.TrainableState(m).ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var r = new LocalTrainer(m, new TrainOptions { Epochs = 1, BatchSize = 8, LearningRate = 1e-2, Seed = 5, Private = new PrivateTraining(1.0, 0.5, 0.25) }, pad).Train(data);
        Assert.Equal(4, r.Steps); // one epoch at q = 1/4
        Assert.InRange(r.Samples, 8, 64); // Binomial batches: 32 expected over the epoch
        Assert.Contains(PeftModel.TrainableState(m), kv => TestSupport.MaxAbsDiff(kv.Value, before[kv.Key]) > 0);

        var spec = JobFile.Default("dpsgd", "-", [new PartySpec("a", "train", null)], TestSupport.TempDir()) with { Rounds = 2 };
        spec = spec with { Local = spec.Local with { BatchSize = 8, Epochs = 1, DpSgd = spec.Local.DpSgd with { Enabled = true, TargetEpsilon = 3 } } };
        var workspace = TestSupport.TempDir();
        var first = DpSgdLedger.Plan(spec, workspace, "a", 1, "g1", 32);
        Assert.Equal(0.25, first.Spent.SamplingRate);
        Assert.True(first.Spent.Epsilon < 3);
        // The same round from the same global (a retry, a restarted node) releases the same update: charged once.
        Assert.Equal(first.Spent.Epsilon, DpSgdLedger.Plan(spec, workspace, "a", 1, "g1", 32).Spent.Epsilon, 12);
        var second = DpSgdLedger.Plan(spec, workspace, "a", 2, "g2", 32);
        Assert.Equal(3, second.Spent.Epsilon, 2);
        // A third round would go past the target the noise was solved for.
        var e = Assert.Throws<DpBudgetExceededException>(() => DpSgdLedger.Plan(spec, workspace, "a", 3, "g3", 32));
        Assert.Contains("party 'a': DP-SGD in round 3 would take its ε from 3.0", e.Message);
        Assert.Contains("past local.dp-sgd.target-epsilon = 3", e.Message);
    }

    [Fact]
    public void The_job_file_reads_dp_sgd_and_refuses_what_it_cannot_honour_naming_the_field()
    {
        static JobSpec Parse(string job) => JobFile.FromConfig(Akka.Configuration.ConfigurationFactory.ParseString(job), "job.conf", TestSupport.TempDir(), AlgorithmCatalog.BuiltIn);
        const string minimal = "job { model = m, parties = [{ org = a }, { org = b }]\n";
        Assert.Equal(DpSgdOptions.Off, Parse(minimal + "}").Local.DpSgd);
        var spec = Parse(minimal + "local.dp-sgd { enabled = on, target-epsilon = 3, clip-norm = 0.5 } }");
        Assert.Equal(DpSgdOptions.Off with { Enabled = true, TargetEpsilon = 3, ClipNorm = 0.5 }, spec.Local.DpSgd);
        Assert.Equal(spec.Local.DpSgd, JobSpec.FromJson(spec.ToJson(), "round trip").Local.DpSgd);
        string Refused(string job) => Assert.ThrowsAny<Exception>(() => Parse(minimal + "local.dp-sgd.enabled = on, " + job + " }")).Message;
        Assert.Contains("job.local.dp-sgd microbatch = 4 would clip the summed gradient of 4 examples together", Refused("local.dp-sgd.microbatch = 4"));
        Assert.Contains("job.local.dp-sgd.sampling = 'shuffle': only poisson sampling is accounted for", Refused("local.dp-sgd.sampling = shuffle"));
        Assert.Contains("job.local.dp-sgd noise-multiplier must be > 0", Refused("local.dp-sgd.noise-multiplier = 0"));
        Assert.Contains("job.local.fedprox-mu must be 0 under local.dp-sgd", Refused("local.fedprox-mu = 0.01"));
        Assert.Contains("job.ipr cannot apply under local.dp-sgd", Refused("ipr.enabled = on"));
        Assert.Contains("job.local.dp-sgd cannot apply: algorithm 'fedkseed'", Refused("algorithm = fedkseed"));
    }

    [Fact]
    public void A_federated_job_under_dp_sgd_spends_each_partys_target_over_its_rounds_and_reports_no_private_losses()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "dp-sgd", rounds: 2);
        spec = spec with { Local = spec.Local with { DpSgd = spec.Local.DpSgd with { Enabled = true, TargetEpsilon = 8, ClipNorm = 0.5 } } };
        var result = SimulationSpec.Simulate(g, spec);
        foreach (var org in FederationFixture.Orgs)
        {
            var fits = result.Fits.Where(f => f.Party == org).OrderBy(f => f.Round).Select(f => f.Update!.Metrics).ToList();
            Assert.Equal(2, fits.Count);
            Assert.True(fits[0]["dpsgd.epsilon"] < fits[1]["dpsgd.epsilon"]);
            Assert.Equal(8, fits[1]["dpsgd.epsilon"], 2); // σ was solved for the job's two rounds
            Assert.All(fits, m => Assert.True(double.IsNaN(m[ClientUpdate.FirstLoss]) && !m.ContainsKey(ClientUpdate.EvalLoss)));
        }
        Assert.True(File.Exists(Path.Combine(result.OutputDir, "adapter", "adapter_model.safetensors")));
    }

    [Fact]
    public void The_loss_threshold_attacks_auc_is_mann_whitney_with_ties_halved_and_its_advantage_the_best_threshold()
    {
        // scikit-learn's roc_auc_score example: y = [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8] → 0.75; a member's score is −loss.
        Assert.Equal(0.75, MembershipInference.LossThresholdAuc([-0.35, -0.8], [-0.1, -0.4]), 12);
        Assert.Equal(1.0, MembershipInference.LossThresholdAuc([1, 2], [3, 4]));
        Assert.Equal(0.0, MembershipInference.LossThresholdAuc([3, 4], [1, 2]));
        Assert.Equal(0.5, MembershipInference.LossThresholdAuc([2, 2], [2, 2]));
        Assert.Equal(0.875, MembershipInference.LossThresholdAuc([1, 2], [2, 3]), 12); // three of four pairs ordered, one tie
        Assert.Equal(0.5, MembershipInference.Advantage([1, 2], [2, 3]), 12); // t = 1: TPR 1/2, FPR 0
        Assert.Throws<ArgumentException>(() => MembershipInference.LossThresholdAuc([], [1]));
    }

    [Fact]
    public void A_synthetic_example_reproduces_a_training_one_when_their_longest_common_substring_covers_half_of_it()
    {
        Assert.Equal(4, Verbatim.LongestCommonSubstring("xabcdy", "zabcdw"));
        Assert.Equal(0, Verbatim.LongestCommonSubstring("", "abc"));
        Assert.True(Verbatim.Reproduces("the gloss: a small domesticated feline", "a small domesticated feline animal"));
        Assert.False(Verbatim.Reproduces("a small cat", "a small domesticated feline animal"));
        Assert.Equal(0.5, Verbatim.Rate(["copy of the training text here", "something new"], ["the training text here"]), 12);
    }
}
