using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.CoLlm;
using FateLlm.Training.Algorithms.KSeed;
using FateLlm.Training.Algorithms.Offsite;
using FateLlm.Training.Algorithms.Pdss;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// Plug-ins driven through <see cref="FederatedSimulation"/>: a whole job's numerics — prepare, rounds, the framework's
/// server step, evaluation, export — with no cluster, so they do not depend on timing (the cluster's own specs check
/// that the federation computes the same bits).
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class SimulationSpec
{
    internal static IReadOnlyList<SimulatedParty> Parties(FederationFixture.Ground g) =>
        g.Datasets.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new SimulatedParty(kv.Key, kv.Value)).ToList();

    internal static SimulationResult Simulate(FederationFixture.Ground g, JobSpec spec, string? model = null, string run = "sim") =>
        new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec, model ?? g.Model, Parties(g), Path.Combine(g.Root, run)).Run();

    [Fact]
    public void Pdss_trains_on_rationales_and_a_party_whose_file_lacks_the_column_drops_out_naming_file_and_line()
    {
        var g = PdssSpec.WithRationales(FederationFixture.Prepare());
        var datasets = g.Datasets;
        var spec = FederationFixture.Job(g, "pdss-sim", rounds: 1, quorum: 2) with
        {
            Algorithm = JobFile.Algorithm(PdssAlgorithm.AlgorithmName, new Dictionary<string, string> { ["alpha"] = "0.5" }),
        };
        var result = Simulate(g, spec);

        var fits = result.Fits.ToDictionary(f => f.Party);
        Assert.Contains("food-rationales.jsonl:1: missing field 'rationale'", fits["food"].Dropped);
        foreach (var org in new[] { "animal", "artifact" })
        {
            var examples = File.ReadLines(datasets[org]["train"]).Count();
            Assert.Equal(examples - (examples + 2) / 3, fits[org].Update!.Metrics["pdss.with-rationale"]);
        }
        Assert.Equal(["animal", "artifact"], result.Steps.Single().Contributors);
        Assert.True(File.Exists(Path.Combine(result.OutputDir, "adapter", "adapter_model.safetensors")));
    }

    [Fact]
    public void Fedcollm_co_tunes_the_server_model_each_round_and_a_second_run_gives_the_same_models()
    {
        var g = FederationFixture.Prepare();
        var (server, Spec) = FedCoLlmFederationSpec.Ground(g);
        var first = Simulate(g, Spec("collm-a"), run: "a");
        var second = Simulate(g, Spec("collm-b"), run: "b");

        foreach (var folder in new[] { "adapter", "merged", "server-adapter", "server-merged" })
            Assert.True(Directory.Exists(Path.Combine(first.OutputDir, folder)), folder);
        using (var before = HfCheckpoint.Load(server))
        using (var after = HfCheckpoint.Load(Path.Combine(first.OutputDir, "server-merged")))
            Assert.Contains(after.BaseParameters().Zip(before.BaseParameters()), x => !OffsiteSpec.Same(x.Item1.Param, x.Item2.Param));
        // Seeded by job seed and round: the same job id aside, the same models.
        Assert.Equal(first.State.Get(AlgorithmState.Global), second.State.Get(AlgorithmState.Global));
    }

    [Fact]
    public void Offsite_parties_train_the_adapter_blocks_of_the_sub_model_and_the_plug_in_moves_only_them()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "offsite-sim", rounds: 2) with
        {
            Algorithm = JobFile.Algorithm(OffsiteAlgorithm.AlgorithmName, new Dictionary<string, string> { ["emulator"] = "1" }),
        };
        var result = Simulate(g, spec);

        Assert.All(result.Fits, f => Assert.True(f.Update is not null, f.Dropped));
        using var full = HfCheckpoint.Load(g.Model);
        // Upward: the adapter blocks' deltas only (2 of the tiny model's 4 blocks, no embeddings or head).
        long adapterBytes = full.BaseParameters().Where(p => p.Name.StartsWith("model.layers.0.") || p.Name.StartsWith("model.layers.3."))
            .Sum(p => p.Param.numel() * 4);
        Assert.All(result.Fits, f => Assert.InRange(f.Update!.Update.Length, adapterBytes, adapterBytes + 16_384));
        using var plugged = HfCheckpoint.Load(Path.Combine(result.OutputDir, "model"));
        var before = full.BaseParameters().ToDictionary(p => p.Name, p => p.Param);
        Assert.All(plugged.BaseParameters().Where(p => p.Name.StartsWith("model.layers.1.") || p.Name.StartsWith("model.layers.2.")),
            p => Assert.True(OffsiteSpec.Same(p.Param, before[p.Name]), p.Name));
        Assert.Contains(plugged.BaseParameters(), p => p.Name.StartsWith("model.layers.0.") && !OffsiteSpec.Same(p.Param, before[p.Name]));
    }

    [Fact]
    public void Homo_peft_trains_every_party_each_round_leaves_a_dropout_out_of_the_step_and_exports_an_adapter()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "simulated", rounds: 3, quorum: 2);
        var result = new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec, g.Model, Parties(g), Path.Combine(g.Root, "sim"))
            .Run(dropout: (round, _, party) => round == 2 && party == "food");

        Assert.Equal(3, result.Steps.Count);
        Assert.Equal(["animal", "artifact"], result.Steps[1].Contributors);
        Assert.Equal(FederationFixture.Orgs, result.Steps[2].Contributors);
        Assert.Equal("dropped by the simulation", result.Fits.Single(f => f.Round == 2 && f.Party == "food").Dropped);
        // Each party's loss on the global adapter it receives falls from round 1 to round 3.
        foreach (var org in FederationFixture.Orgs)
        {
            double EvalLoss(int round) => result.Fits.Single(f => f.Round == round && f.Party == org).Update!.Metrics[ClientUpdate.EvalLoss];
            Assert.True(EvalLoss(3) < EvalLoss(1), $"{org}: dev loss {EvalLoss(1):F4} → {EvalLoss(3):F4}");
        }
        Assert.Equal(FederationFixture.Orgs, result.Evaluation.Keys.Order());
        Assert.True(File.Exists(Path.Combine(result.OutputDir, "adapter", "adapter_model.safetensors")));
    }

    [Fact]
    public void Fedkseed_appends_one_history_per_round_uploads_only_seed_scalar_pairs_and_exports_its_history()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "simulated-kseed", rounds: 2) with
        {
            Algorithm = JobFile.Algorithm(FedKSeedAlgorithm.AlgorithmName, new Dictionary<string, string> { ["seeds"] = "64", ["steps"] = "4", ["batch-size"] = "2" }),
        };
        var result = new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec, g.Model, Parties(g), Path.Combine(g.Root, "sim"))
            .Run();

        Assert.Equal(["round-0001", "round-0002"], result.State.Artifacts.Keys.Where(k => k.StartsWith(FedKSeedAlgorithm.RoundPrefix)).Order(StringComparer.Ordinal));
        // 4 two-point steps: 8 + 8·4 bytes of (seed, scalar) pairs per party and round.
        Assert.All(result.Fits, f => Assert.Equal(8 + 8 * 4, f.Update!.Update.Length));
        Assert.Equal(FederationFixture.Orgs, result.Evaluation.Keys.Order());
        Assert.All(result.Evaluation.Values, e => Assert.True(double.IsFinite(e.Loss)));
        Assert.True(Directory.Exists(Path.Combine(result.OutputDir, "history")));
    }

    [Fact]
    public void A_job_summed_securely_is_refused_naming_what_it_needs()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Secure(FederationFixture.Job(g, "simulated-secure"), 10);
        var e = Assert.Throws<NotSupportedException>(() =>
            new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec, g.Model, Parties(g), Path.Combine(g.Root, "sim")).Run());
        Assert.Contains("secure aggregation needs the round's actors", e.Message);
    }
}
