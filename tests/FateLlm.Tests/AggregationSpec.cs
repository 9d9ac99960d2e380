using FateLlm.Training.Aggregation;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class AggregationSpec
{
    static Dictionary<string, Tensor> State(float a, float b) => new() { ["x.lora_A.weight"] = tensor(new[] { a, a }), ["y.lora_B.weight"] = tensor(new[] { b }) };
    static float At(IReadOnlyDictionary<string, Tensor> s, string name, int i = 0) => s[name].data<float>()[i];

    [Fact]
    public void FedAvg_weights_each_delta_by_its_sample_count()
    {
        var global = State(1, 1);
        var outcome = new FedAvg().Aggregate(global, [new AdapterDelta("a", State(2, 0), 10), new AdapterDelta("b", State(-1, 3), 30)], new Dictionary<string, Tensor>());
        // Δ = (10·2 + 30·(−1)) / 40 = −0.25 ; (10·0 + 30·3) / 40 = 2.25
        Assert.Equal(0.75f, At(outcome.Global, "x.lora_A.weight"), 6);
        Assert.Equal(3.25f, At(outcome.Global, "y.lora_B.weight"), 6);
    }

    [Fact]
    public void The_running_mean_gives_the_batch_mean_whatever_order_the_updates_come_in()
    {
        var gen = new Generator(7);
        Dictionary<string, Tensor> Random() => new() { ["a"] = randn([64, 16], generator: gen), ["b"] = randn([16, 8], generator: gen) };
        var global = Random();
        var deltas = Enumerable.Range(0, 7).Select(i => new AdapterDelta($"p{i}", Random(), 1 + 13 * i)).ToList();
        double total = deltas.Sum(d => (double)d.Samples);
        // The batch formula in fp64, written out: Σ n_k Δ_k / Σ n_k.
        var expected = global.Keys.ToDictionary(n => n, n => deltas.Select(d => d.Tensors[n].to_type(ScalarType.Float64).mul(d.Samples / total)).Aggregate((x, y) => x.add(y)));
        foreach (var order in new[] { deltas, Enumerable.Reverse(deltas).ToList(), deltas.OrderBy(d => d.Samples % 5).ToList() })
        {
            var running = new RunningWeightedMean(global, total);
            foreach (var d in order)
            {
                using var scope = NewDisposeScope(); // a round frees each update after folding it
                running.Add(new AdapterDelta(d.Party, d.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value.clone()), d.Samples));
            }
            Assert.Equal(7, running.Count);
            foreach (var (name, t) in running.Result())
                Assert.True(TestSupport.MaxAbsDiff(t, expected[name].to_type(ScalarType.Float32)) < 1e-5, name);
        }
        // FedAvg over the list is the running mean in the list's order, bit for bit.
        var again = new RunningWeightedMean(global, total);
        foreach (var d in deltas) again.Add(d);
        var next = new FedAvg().Aggregate(global, deltas, new Dictionary<string, Tensor>()).Global;
        foreach (var (name, m) in again.Result()) Assert.True(next[name].eq(global[name].add(m)).all().item<bool>(), name);
    }

    [Fact]
    public void Deltas_are_matched_by_name_not_by_position()
    {
        var global = State(0, 0);
        var reordered = new Dictionary<string, Tensor> { ["y.lora_B.weight"] = tensor(new[] { 5f }), ["x.lora_A.weight"] = tensor(new[] { 1f, 1f }) };
        var outcome = new FedAvg().Aggregate(global, [new AdapterDelta("a", reordered, 1)], new Dictionary<string, Tensor>());
        Assert.Equal(1f, At(outcome.Global, "x.lora_A.weight"));
        Assert.Equal(5f, At(outcome.Global, "y.lora_B.weight"));
    }

    [Fact]
    public void An_update_with_a_wrong_name_or_shape_is_rejected_naming_party_and_tensor()
    {
        var global = State(0, 0);
        var wrongShape = new Dictionary<string, Tensor> { ["x.lora_A.weight"] = zeros(3), ["y.lora_B.weight"] = zeros(1) };
        var e = Assert.Throws<AggregationException>(() => new FedAvg().Aggregate(global, [new AdapterDelta("globex", wrongShape, 1)], new Dictionary<string, Tensor>()));
        Assert.Equal("party 'globex': tensor 'x.lora_A.weight' has shape [3], expected [2]", e.Message);
        var extra = new Dictionary<string, Tensor>(State(0, 0)) { ["z"] = zeros(1) };
        e = Assert.Throws<AggregationException>(() => new FedAvg().Aggregate(global, [new AdapterDelta("acme", extra, 1)], new Dictionary<string, Tensor>()));
        Assert.Contains("unknown tensor 'z'", e.Message);
    }

    [Fact]
    public void FedAvgM_accumulates_momentum_across_rounds()
    {
        var s = AggregationStrategies.Create("fedavgm", new ServerOptimizerOptions { Momentum = 0.5, LearningRate = 1 });
        var r1 = s.Aggregate(State(0, 0), [new AdapterDelta("a", State(1, 1), 1)], new Dictionary<string, Tensor>());
        var r2 = s.Aggregate(r1.Global, [new AdapterDelta("a", State(1, 1), 1)], r1.ServerState);
        // m1 = 1, θ1 = 1 ; m2 = 0.5 + 1 = 1.5, θ2 = 2.5
        Assert.Equal(2.5f, At(r2.Global, "x.lora_A.weight"), 6);
        Assert.Equal(1.5f, At(r2.ServerState, "m/x.lora_A.weight"), 6);
    }

    [Theory]
    [InlineData("fedadam", 0.9900505f)]    // m = 0.1, v = 0.99·1e-6 + 0.01·1 = 0.01000099 → θ = 0.1 / (0.1000049 + 1e-3)
    [InlineData("fedadagrad", 0.0999000f)] // v = 1e-6 + 1 → θ = 0.1 / (1.0000005 + 1e-3)
    [InlineData("fedyogi", 0.9900500f)]    // v = 1e-6 − 0.01·1·sign(1e-6 − 1) = 0.010001 → θ = 0.1 / (0.1000050 + 1e-3)
    public void Adaptive_server_optimizers_follow_reddi_et_al(string name, float expected)
    {
        var s = AggregationStrategies.Create(name);
        var r = s.Aggregate(State(0, 0), [new AdapterDelta("a", State(1, 1), 1)], new Dictionary<string, Tensor>());
        Assert.Equal(expected, At(r.Global, "x.lora_A.weight"), 5);
        Assert.True(r.ServerState.ContainsKey("v/x.lora_A.weight"));
    }
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class RobustAggregationSpec
{
    static Dictionary<string, Tensor> Update(Generator g, double scale = 1) =>
        new() { ["w.lora_A.weight"] = randn([4, 16], generator: g).mul(0.1).add(1.0).mul(scale), ["w.lora_B.weight"] = randn([16, 4], generator: g).mul(0.1).sub(0.5).mul(scale) };

    [Theory]
    [InlineData("median"), InlineData("trimmed-mean"), InlineData("krum"), InlineData("multi-krum"), InlineData("norm-bound")]
    public void With_one_of_five_parties_poisoned_the_robust_aggregate_stays_near_the_honest_mean_while_fedavg_does_not(string rule)
    {
        var g = new Generator(7);
        var global = new Dictionary<string, Tensor> { ["w.lora_A.weight"] = zeros(4, 16), ["w.lora_B.weight"] = zeros(16, 4) };
        var honest = Enumerable.Range(0, 4).Select(i => new AdapterDelta("honest" + i, Update(g), 100)).ToList();
        // The attacker scales its update by -20 and claims a huge sample count to dominate a weighted mean.
        var poisoned = new AdapterDelta("mallory", Update(g, scale: -20), 10_000);
        var all = honest.Append(poisoned).ToList();
        var honestMean = AggregationStrategies.WeightedMean(global, honest);
        double Distance(IReadOnlyDictionary<string, Tensor> agg) =>
            Math.Sqrt(agg.Sum(kv => kv.Value.sub(honestMean[kv.Key]).pow(2).sum().item<float>()));
        var honestNorm = Math.Sqrt(honestMean.Values.Sum(t => t.pow(2).sum().item<float>()));

        var fedavg = new FedAvg().Aggregate(global, all, new Dictionary<string, Tensor>()).Global;
        var options = new ServerOptimizerOptions { Byzantine = 1, KrumSelect = 3, TrimFraction = 0.2, NormBound = honestNorm * 1.2 };
        var robust = AggregationStrategies.Create(rule, options).Aggregate(global, all, new Dictionary<string, Tensor>()).Global;

        Assert.True(Distance(fedavg) > 5 * honestNorm, $"FedAvg should be dragged away: {Distance(fedavg):F3} vs honest norm {honestNorm:F3}");
        // Norm bounding limits the attacker's pull rather than removing it; the others discard it.
        var bound = rule == "norm-bound" ? 1.2 * honestNorm : 0.25 * honestNorm;
        Assert.True(Distance(robust) < bound, $"{rule}: distance {Distance(robust):F3} to the honest mean exceeds {bound:F3}");
    }

    [Fact]
    public void Krum_needs_more_updates_than_the_byzantine_count_plus_two()
    {
        var global = new Dictionary<string, Tensor> { ["w"] = zeros(2) };
        var updates = Enumerable.Range(0, 3).Select(i => new AdapterDelta("p" + i, new Dictionary<string, Tensor> { ["w"] = ones(2) }, 1)).ToList();
        var e = Assert.Throws<AggregationException>(() => AggregationStrategies.Create("krum", new ServerOptimizerOptions { Byzantine = 1 })
            .Aggregate(global, updates, new Dictionary<string, Tensor>()));
        Assert.Contains("more than 3 updates", e.Message);
    }
}

/// <summary>Rules that need every update read them from the store a tensor at a time, with the same result as in memory.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class RobustAggregationOnDiskSpec
{
    [Theory]
    [InlineData("median")]
    [InlineData("trimmed-mean")]
    [InlineData("krum")]
    [InlineData("multi-krum")]
    [InlineData("norm-bound")]
    public void A_robust_rule_over_updates_on_disk_equals_the_rule_over_updates_in_memory(string rule)
    {
        var gen = new Generator(3);
        Dictionary<string, Tensor> Random(double scale) => new() { ["a.lora_A.weight"] = randn([16, 8], generator: gen).mul(scale), ["b.lora_B.weight"] = randn([8, 4], generator: gen).mul(scale) };
        var global = Random(1);
        // Five parties, one of them poisoned (a large update), so the rules have something to reject.
        var deltas = Enumerable.Range(0, 5).Select(i => new AdapterDelta($"p{i}", Random(i == 4 ? 50 : 0.1), 10 + i)).ToList();
        var store = new FateLlm.Training.IO.BlobStore(TestSupport.TempDir());
        var onDisk = deltas.Select(d => d with { Tensors = new FateLlm.Training.IO.TensorsOnDisk(store.PathOf(store.Put(FateLlm.Training.IO.SafeTensors.ToBytes(d.Tensors)))) }).ToList();
        var strategy = AggregationStrategies.Create(rule, new ServerOptimizerOptions { NormBound = 0.5, KrumSelect = 3, Byzantine = 1 });
        Assert.False(strategy.NeedsMeanOnly);
        var inMemory = strategy.Aggregate(global, deltas, new Dictionary<string, Tensor>()).Global;
        var fromDisk = strategy.Aggregate(global, onDisk, new Dictionary<string, Tensor>()).Global;
        foreach (var (name, t) in inMemory) Assert.True(TestSupport.MaxAbsDiff(t, fromDisk[name]) < 1e-6, $"{rule}: {name}");
        Assert.True(TestSupport.MaxAbsDiff(inMemory["a.lora_A.weight"], global["a.lora_A.weight"]) < 5, $"{rule} let the poisoned update through");
    }

    [Fact]
    public void A_trimmed_mean_round_reads_the_updates_from_the_store_and_gives_the_global_of_the_rule_over_them_in_memory()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "trimmed", rounds: 1);
        spec = spec with { Aggregation = spec.Aggregation with { Algorithm = "trimmed-mean" }, Local = spec.Local with { Steps = 2 } };
        var parties = g.Datasets.Select(kv => new FateLlm.Training.Federation.SimulatedParty(kv.Key, kv.Value)).ToList();
        var simulated = new FateLlm.Training.Federation.FederatedSimulation(FateLlm.Training.Algorithms.AlgorithmCatalog.BuiltIn.For(spec),
            spec with { OutputDir = Path.Combine(g.Root, "out-simulated") }, g.Model, parties, Path.Combine(g.Root, "simulation")).Run();

        var global = FateLlm.Training.Federation.FederatedComputation.InitialAdapter(spec, g.Model);
        var deltas = spec.Parties.OrderBy(p => p.Org, StringComparer.Ordinal).Select(p =>
        {
            var r = FateLlm.Training.Federation.FederatedComputation.LocalRound(spec, g.Model, global, g.Datasets[p.Org]["train"], g.Datasets[p.Org]["dev"], 1, default);
            return new AdapterDelta(p.Org, FateLlm.Training.IO.SafeTensors.FromBytes(r.Delta), r.Samples);
        }).ToList();
        var expected = spec.Strategy().Aggregate(FateLlm.Training.IO.SafeTensors.FromBytes(global), deltas, new Dictionary<string, Tensor>()).Global;
        Assert.Equal(FateLlm.Training.IO.BlobStore.Digest(FateLlm.Training.IO.SafeTensors.ToBytes(expected)),
            simulated.State.Get(FateLlm.Training.Algorithms.AlgorithmState.Global));
    }
}
