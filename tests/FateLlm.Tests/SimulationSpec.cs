using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.KSeed;
using FateLlm.Training.Federation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// Plug-ins driven through <see cref="FederatedSimulation"/>: a whole job's numerics — prepare, rounds, the framework's
/// server step, evaluation, export — with no cluster, so they do not depend on timing (the cluster's own specs check
/// that the federation computes the same bits).
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
public class SimulationSpec
{
    static IReadOnlyList<SimulatedParty> Parties(FederationFixture.Ground g) =>
        g.Datasets.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new SimulatedParty(kv.Key, kv.Value)).ToList();

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
