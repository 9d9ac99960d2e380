using System.Text.Json.Nodes;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>Parties of different LoRA ranks under zero-padding (HetLoRA): the algebra, self-pruning, the job file, and a job.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class LoraRanksSpec
{
    static Dictionary<string, Tensor> Adapter(int rank, int seed) => new(StringComparer.Ordinal)
    {
        ["m.q_proj.lora_A.weight"] = randn([rank, 12], generator: new Generator((ulong)seed)),
        ["m.q_proj.lora_B.weight"] = randn([10, rank], generator: new Generator((ulong)seed + 1)),
        ["m.norm.weight"] = ones(12),
    };

    [Fact]
    public void A_party_trains_the_globals_first_components_and_its_padded_delta_sums_into_them_only()
    {
        using var scope = NewDisposeScope();
        var global = Adapter(16, 1);
        var mine = LoraRanks.Truncate(global, 4);
        Assert.Equal([4L, 12], mine["m.q_proj.lora_A.weight"].shape);
        Assert.Equal([10L, 4], mine["m.q_proj.lora_B.weight"].shape);
        // What a rank-4 party computes, s·B[:, :4]·A[:4], is the sum of the global's first 4 components.
        var (a, b) = (global["m.q_proj.lora_A.weight"], global["m.q_proj.lora_B.weight"]);
        var product = mine["m.q_proj.lora_B.weight"].matmul(mine["m.q_proj.lora_A.weight"]);
        var components = Enumerable.Range(0, 4).Select(j => b[.., j..(j + 1)].matmul(a[j..(j + 1)])).Aggregate((x, y) => x + y);
        Assert.True(product.allclose(components, rtol: 1e-5, atol: 1e-6));
        // Its delta padded to rank 16 touches only those components; truncating the padded delta gives it back.
        var delta = Adapter(4, 2);
        var padded = LoraRanks.Pad(delta, global);
        Assert.Equal(global["m.q_proj.lora_A.weight"].shape, padded["m.q_proj.lora_A.weight"].shape);
        Assert.Equal(0f, padded["m.q_proj.lora_A.weight"][4..].abs().sum().item<float>());
        Assert.Equal(0f, padded["m.q_proj.lora_B.weight"][.., 4..].abs().sum().item<float>());
        foreach (var (name, t) in LoraRanks.Truncate(padded, 4)) Assert.True(t.allclose(delta[name], 0, 0), name);
        // A tensor that is no LoRA factor must already have the global's shape.
        Assert.Throws<ArgumentException>(() => LoraRanks.Pad(new Dictionary<string, Tensor> { ["m.norm.weight"] = ones(5) }, global));
    }

    [Fact]
    public void Self_pruning_drops_the_last_component_only_when_it_contributes_little()
    {
        using var scope = NewDisposeScope();
        var adapter = Adapter(8, 3);
        Assert.Equal(8, LoraRanks.Pruned(adapter, 8, 0.1));
        Assert.Equal(8, LoraRanks.Pruned(adapter, 8, 0)); // off
        adapter["m.q_proj.lora_A.weight"][7] = adapter["m.q_proj.lora_A.weight"][7] * 1e-3;
        Assert.Equal(7, LoraRanks.Pruned(adapter, 8, 0.1));
        // Only the components up to the party's rank count: at rank 7 the shrunken 8th is not there.
        Assert.Equal(7, LoraRanks.Pruned(adapter, 7, 0.1));
        Assert.Equal(1, LoraRanks.Pruned(Adapter(1, 4), 1, 0.99));
    }

    [Fact]
    public void Flexlora_stacking_keeps_the_weighted_sum_of_products_exactly_and_svd_redistribution_loses_exactly_the_discarded_singular_values()
    {
        using var scope = NewDisposeScope();
        var layout = new Dictionary<string, Tensor> { ["m.q_proj.lora_A.weight"] = zeros(28, 12), ["m.q_proj.lora_B.weight"] = zeros(10, 28), ["m.norm.weight"] = ones(12) };
        (IReadOnlyDictionary<string, Tensor>, double)[] parties = [(Adapter(4, 1), 0.5), (Adapter(8, 3), 0.3), (Adapter(16, 5), 0.2)];
        var global = FlexLora.Stack(parties, layout);
        Tensor Product(IReadOnlyDictionary<string, Tensor> f) => f["m.q_proj.lora_B.weight"].to(ScalarType.Float64).matmul(f["m.q_proj.lora_A.weight"].to(ScalarType.Float64));
        var sum = parties.Select(p => Product(p.Item1) * p.Item2).Aggregate((x, y) => x + y);
        Assert.True(Product(global).allclose(sum, rtol: 1e-6, atol: 1e-6), "Σ p_k·B_k·A_k kept exactly in rank 28");
        Assert.Equal((1.0 * 0.5 + 0.3 + 0.2) * 1, global["m.norm.weight"].mean().item<float>(), 5); // other tensors: the weighted mean

        var sigma = linalg.svdvals(sum).data<double>().ToArray();
        foreach (var rank in new[] { 4, 8, 10 })
        {
            var (factors, discarded) = FlexLora.Redistribute(global, rank, layout);
            Assert.Equal([(long)rank, 12], factors["m.q_proj.lora_A.weight"].shape);
            var error = (sum - Product(factors)).pow(2).sum().item<double>();
            var left = sigma.Skip(rank).Sum(x => x * x);
            Assert.Equal(left, error, left * 1e-6 + 1e-9);                        // ‖ΔW − B_r·A_r‖² = Σ_{j>r} σ_j² (Eckart–Young)
            Assert.Equal(left / sigma.Sum(x => x * x), discarded, 1e-9);
        }
        // A zero global (round 1) gives every party the fallback's fresh A rows and zero B: a LoRA that can still learn.
        var fresh = Adapter(28, 9);
        var zero = new Dictionary<string, Tensor> { ["m.q_proj.lora_A.weight"] = randn(28, 12), ["m.q_proj.lora_B.weight"] = zeros(10, 28), ["m.norm.weight"] = ones(12) };
        var (start, none) = FlexLora.Redistribute(zero, 4, fresh);
        Assert.True(start["m.q_proj.lora_A.weight"].allclose(fresh["m.q_proj.lora_A.weight"][..4]));
        Assert.Equal(0f, start["m.q_proj.lora_B.weight"].abs().sum().item<float>());
        Assert.Equal(0, none);
    }

    [Fact]
    public void A_flexlora_job_gives_each_party_factors_of_its_rank_keeps_the_sum_exactly_and_exports_the_largest_rank()
    {
        var (result, parties) = RankedJob("flexlora", LoraRankRule.Svd);

        Assert.All(result.Steps, s => Assert.Equal(3, s.Contributors.Count));
        Assert.Equal(28, result.Spec.Peft.LoraR); // the global holds Σ r_k components
        using var scope = NewDisposeScope();
        foreach (var fit in result.Fits)
        {
            var rank = RankOf(parties, fit.Party);
            Assert.Equal(rank, (int)fit.Update!.Metrics[PartyRank.Metric]);
            Assert.All(SafeTensors.FromBytes(fit.Update.Update).Where(kv => LoraRanks.IsA(kv.Key)), kv => Assert.Equal(rank, kv.Value.shape[0]));
        }
        var config = AdapterConfig(result);
        Assert.Equal((16, 32.0), ((int)config["r"]!, (double)config["lora_alpha"]!));
        Assert.All(result.Evaluation.Values, e => Assert.True(double.IsFinite(e.Loss)));
    }

    [Fact]
    public void Flora_appends_each_rounds_stack_and_a_party_that_merges_it_into_its_base_computes_what_the_adapter_would()
    {
        using var scope = NewDisposeScope();
        var (global, round) = (Adapter(4, 1), Adapter(8, 2));
        Tensor Product(IReadOnlyDictionary<string, Tensor> f) => f["m.q_proj.lora_B.weight"].matmul(f["m.q_proj.lora_A.weight"]);
        var appended = LoraRanks.Append(global.Where(kv => kv.Key != "m.norm.weight").ToDictionary(), round);
        Assert.Equal(12, LoraRanks.RankOf(appended));
        Assert.True(Product(appended).allclose(Product(global) + Product(round), rtol: 1e-5, atol: 1e-5));

        // A party's private base with a stacked adapter merged in gives the logits the base with that adapter gives.
        var model = FederationFixture.Prepare().Model;
        var peft = new PeftConfig { Method = PeftMethod.Lora, LoraR = 6, LoraAlpha = 12, LoraDropout = 0 };
        using var adapted = FineTuning.Open(model, peft, 1);
        var adapter = PeftModel.TrainableState(adapted.Model).ToDictionary(kv => kv.Key, kv => kv.Key.Contains("lora_B") ? randn(kv.Value.shape) * 0.1f : kv.Value);
        PeftModel.LoadTrainableState(adapted.Model, adapter, "stacked");
        using var merged = FineTuning.Open(model, peft with { LoraR = 2, LoraAlpha = 4 }, 7); // fresh factors: B = 0
        LoraRanks.MergeIntoBase(merged.Model, adapter, 2.0);
        adapted.Model.eval();
        merged.Model.eval();
        var input = tensor(new long[] { 1, 5, 9, 3 }).unsqueeze(0);
        Assert.True(adapted.Model.Forward(input).allclose(merged.Model.Forward(input), rtol: 1e-4, atol: 1e-4));
    }

    [Fact]
    public void A_flora_job_stacks_every_round_onto_the_global_and_exports_the_stacked_adapter_and_the_merged_model()
    {
        var (result, parties) = RankedJob("flora", LoraRankRule.Stack);

        Assert.All(result.Steps, s => Assert.Equal(3, s.Contributors.Count));
        using var scope = NewDisposeScope();
        foreach (var fit in result.Fits)
            Assert.All(SafeTensors.FromBytes(fit.Update!.Update).Where(kv => LoraRanks.IsA(kv.Key)), kv => Assert.Equal(RankOf(parties, fit.Party), kv.Value.shape[0]));
        // The round-0 adapter at the largest rank (B = 0), then each round's Σ r_k = 28 components.
        var config = AdapterConfig(result);
        Assert.Equal((16 + 2 * 28, 2.0 * (16 + 2 * 28)), ((int)config["r"]!, (double)config["lora_alpha"]!));
        Assert.True(File.Exists(Path.Combine(result.OutputDir, "merged", "config.json")));
        Assert.All(result.Evaluation.Values, e => Assert.True(double.IsFinite(e.Loss)));
    }

    static readonly int[] Ranks = [4, 8, 16];

    /// <summary>A two-round job whose three parties train LoRA at ranks 4, 8 and 16 under <paramref name="rule"/>, simulated.</summary>
    static (SimulationResult Result, IReadOnlyList<SimulatedParty> Parties) RankedJob(string id, LoraRankRule rule)
    {
        var g = FederationFixture.Prepare();
        var job = FederationFixture.Job(g, id, rounds: 2);
        var spec = job with
        {
            Parties = job.Parties.Select((p, i) => p with { Peft = new PartyPeft(Ranks[i], null) }).ToArray(),
            Peft = job.Peft with { LoraR = 4, LoraAlpha = 8 },
            Aggregation = job.Aggregation with { LoraRanks = rule },
        };
        return (SimulationSpec.Simulate(g, spec, run: id), SimulationSpec.Parties(g));
    }

    static int RankOf(IReadOnlyList<SimulatedParty> parties, string org) => Ranks[parties.ToList().FindIndex(p => p.Org == org)];

    static JsonNode AdapterConfig(SimulationResult result) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(result.OutputDir, "adapter", AdapterFolder.ConfigFile)))!;

    static JobSpec Parse(string job) => JobFile.FromConfig(ConfigurationFactory.ParseString(job), "job.conf", TestSupport.TempDir(), AlgorithmCatalog.BuiltIn);

    const string Ranked = "job { model = m\npeft { r = 8, alpha = 16 }\nparties = [{ org = a, peft.r = 4 }, { org = b }, { org = c, peft { r = 16, alpha = 32 } }]\n";

    [Fact]
    public void The_job_file_reads_party_ranks_and_the_arbiter_writes_them_out_keeping_the_jobs_scaling()
    {
        var spec = Parse(Ranked + "}");
        Assert.Equal([new PartyPeft(4, null), null, new PartyPeft(16, 32)], spec.Parties.Select(p => p.Peft));
        Assert.Equal(LoraRankRule.ZeroPad, spec.Aggregation.LoraRanks);
        var resolved = LoraRanks.Resolve(spec);
        Assert.Equal((16, 32.0), (resolved.Peft.LoraR, resolved.Peft.LoraAlpha));
        Assert.Equal([new PartyPeft(4, 8), new PartyPeft(8, 16), new PartyPeft(16, 32)], resolved.Parties.Select(p => p.Peft));
        Assert.Equal(resolved, LoraRanks.Resolve(resolved));
        Assert.Equal(resolved.Parties, JobSpec.FromJson(resolved.ToJson(), "round trip").Parties);

        string Refused(string job) => Assert.ThrowsAny<Exception>(() => Parse(job)).Message;
        Assert.Contains("job.parties[2].peft.alpha", Refused(Ranked.Replace("alpha = 32", "alpha = 16") + "}"));
        Assert.Equal(LoraRankRule.Stack, Parse(Ranked + "aggregation.lora-ranks = stack }").Aggregation.LoraRanks);
        Assert.Contains("job.dp.mode cannot apply with stack (FLoRA)", Refused(Ranked + "aggregation.lora-ranks = stack, dp.mode = central }"));
        Assert.Equal(LoraRankRule.Svd, Parse(Ranked + "aggregation.lora-ranks = svd }").Aggregation.LoraRanks);
        Assert.Contains("job.secure-aggregation cannot apply with svd", Refused(Ranked + "aggregation.lora-ranks = svd, secure-aggregation = on }"));
        Assert.Contains("job.aggregation.algorithm must be fedavg", Refused(Ranked + "aggregation { lora-ranks = svd, algorithm = fedadam } }"));
        Assert.Contains("job.compression.down cannot apply under svd", Refused(Ranked + "aggregation.lora-ranks = svd, compression.down = int8 }"));
        Assert.Contains("job.aggregation.lora-ranks", Refused(Ranked + "aggregation.lora-ranks = hetero }"));
        Assert.Contains("job.parties[0].peft.r must be an integer ≥ 1", Refused(Ranked.Replace("peft.r = 4", "peft.r = 0") + "}"));
        Assert.Contains("job.parties[0].peft.rank is not a party's PEFT setting", Refused(Ranked.Replace("peft.r = 4", "peft.rank = 4") + "}"));
        Assert.Contains("job.parties cannot have LoRA ranks of their own: algorithm 'fedkseed' trains one adapter for all", Refused(Ranked + "algorithm = fedkseed }"));
        Assert.Contains("job.peft.method must be lora", Refused(Ranked + "peft.method = ptuning-v2 }"));
        Assert.Contains("job.aggregation.rank-pruning must be in [0, 1)", Refused(Ranked + "aggregation.rank-pruning = 1.5 }"));
    }

    [Fact]
    public void The_example_job_of_ranks_and_compression_loads()
    {
        var spec = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "communication.conf")));
        Assert.Equal([4, 8, 16], LoraRanks.Resolve(spec).Parties.Select(p => p.Peft!.R));
        Assert.Equal((Training.Compression.CompressionScheme.Nf4, Training.Compression.CompressionScheme.Nf4), (spec.Compression.Up, spec.Compression.Down));
    }

    [Fact]
    public void A_job_with_ranks_4_8_and_16_trains_each_party_at_its_rank_and_exports_the_rank_16_adapter()
    {
        var (result, parties) = RankedJob("ranks", LoraRankRule.ZeroPad);

        Assert.All(result.Steps, s => Assert.Equal(3, s.Contributors.Count));
        using var scope = NewDisposeScope();
        foreach (var fit in result.Fits)
        {
            // Each party trains at its rank and its delta lives in its own first components of the rank-16 layout.
            var rank = RankOf(parties, fit.Party);
            Assert.Equal(rank, (int)fit.Update!.Metrics[PartyRank.Metric]);
            var delta = SafeTensors.FromBytes(fit.Update.Update);
            Assert.All(delta.Where(kv => LoraRanks.IsA(kv.Key)), kv => Assert.Equal(16, kv.Value.shape[0]));
            Assert.All(delta.Where(kv => LoraRanks.IsA(kv.Key)), kv => Assert.Equal(0f, kv.Value[rank..].abs().sum().item<float>()));
        }
        var config = AdapterConfig(result);
        Assert.Equal((16, 32.0), ((int)config["r"]!, (double)config["lora_alpha"]!)); // the job's α/r = 2 at rank 16
    }
}

/// <summary>Parties of ranks 4, 8 and 16 through a real in-process federation, one of them killed mid-round.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class LoraRanksFederationSpec
{
    [Theory]
    [InlineData(LoraRankRule.ZeroPad)]
    [InlineData(LoraRankRule.Svd)]
    [InlineData(LoraRankRule.Stack)]
    public async Task Ranks_4_8_and_16_train_through_the_federation_and_a_party_killed_mid_round_rejoins_at_its_rank(LoraRankRule rule)
    {
        var g = FederationFixture.Prepare();
        var crash = ConfigurationFactory.ParseString("""
            fate-llm.fault-injection.points = [{ at = party.fit, org = artifact, round = 2, action = terminate }]
            fate-llm.round.absent-grace = 25s
            """);
        await using var fed = await FederationFixture.Start(g, crash);
        var job = FederationFixture.Job(g, "ranks-crash-" + rule.ToString().ToLowerInvariant(), rounds: 3, quorum: 2, deadlineSeconds: 40);
        var ranks = new Dictionary<string, int> { ["animal"] = 4, ["artifact"] = 8, ["food"] = 16 };
        var spec = job with
        {
            Parties = job.Parties.Select(p => p with { Peft = new PartyPeft(ranks[p.Org], null) }).ToArray(),
            Aggregation = job.Aggregation with { LoraRanks = rule },
        };
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        await fed.Parties["artifact"].System.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(150));
        await fed.CrashParty("artifact");
        await fed.WaitAsync(spec.JobId, TimeSpan.FromSeconds(150), s => s.CompletedRounds >= 2);
        fed.StartParty("artifact", overrides: FederationFixture.FastCluster);
        var status = await fed.WaitAsync(spec.JobId, TimeSpan.FromSeconds(150));

        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.False(status.Rounds[1].Parties.Single(p => p.Org == "artifact").Succeeded);
        foreach (var round in status.Rounds)
            foreach (var p in round.Parties.Where(p => p.Succeeded))
                Assert.Equal(ranks[p.Org], p.Metrics[PartyRank.Metric]);
        Assert.Contains(status.Rounds[2].Parties, p => p.Org == "artifact" && p.Succeeded);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(spec.OutputDir, "adapter", AdapterFolder.ConfigFile)))!;
        // The largest rank (zero-pad's global, svd's approximation of its rank-28 global); stack: the round-0 adapter's 16
        // components and Σ r_k = 28 for each of the 3 rounds (artifact's zeros in round 2).
        Assert.Equal(rule == LoraRankRule.Stack ? 16 + 3 * 28 : 16, (int)config["r"]!);
    }
}
