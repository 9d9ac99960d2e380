using System.Text.Json;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The seam proved by a plug-in the product does not ship: two exchanges per round, no tensors, a party whose node dies
/// between the exchanges — through the real cluster, with no change to the job, round or party actors.
/// </summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class PluginSeamSpec
{
    [Fact]
    public async Task A_two_exchange_plug_in_runs_through_the_cluster_and_survives_a_party_dying_between_its_exchanges()
    {
        var g = FederationFixture.Prepare();
        // food's node terminates itself when asked for exchange 2 of round 1, after it answered exchange 1.
        var crash = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 1, phase = 2, action = terminate }]");
        await using var fed = await FederationFixture.Start(g, crash);
        var spec = FederationFixture.Job(g, "stats", rounds: 1, quorum: 2, deadlineSeconds: 30) with
        {
            Algorithm = new AlgorithmSpec(ResponseStatistics.AlgorithmName, new Dictionary<string, string> { ["unit"] = "words" }),
        };
        var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(150));

        Assert.True(fed.Parties["food"].System.WhenTerminated.IsCompleted, "the fault injection crashed food's node");
        var round = Assert.Single(status.Rounds);
        Assert.Equal(2, round.Exchanges);
        var food = round.Parties.Single(p => p.Org == "food");
        Assert.False(food.Succeeded);
        Assert.StartsWith("exchange 2 ('spread')", food.Reason);
        Assert.All(round.Parties.Where(p => p.Org != "food"), p => Assert.True(p.Succeeded, p.Reason));

        // The federation's mean covers all three parties (exchange 1); the variance the two that answered exchange 2.
        var lengths = FederationFixture.Orgs.ToDictionary(o => o, o => ResponseStatistics.Lengths(spec, g.Datasets[o]["train"]));
        var all = lengths.Values.SelectMany(x => x).ToList();
        var mean = all.Average();
        var survivors = lengths.Where(kv => kv.Key != "food").SelectMany(kv => kv.Value).ToList();
        var variance = survivors.Sum(x => (x - mean) * (x - mean)) / survivors.Count;
        var stats = JsonSerializer.Deserialize<ResponseStatistics.Statistics>(File.ReadAllBytes(Path.Combine(spec.OutputDir, "stats.json")))!;
        Assert.Equal(all.Count, stats.N);
        Assert.Equal(mean, stats.Mean, 9);
        Assert.Equal(variance, stats.Variance, 9);
        Assert.Equal(FederationFixture.Orgs, stats.MeanOver);
        Assert.Equal(["animal", "artifact"], stats.VarianceOver);
        Assert.Equal(mean, round.Metrics["stats.mean"], 9);
        Assert.Equal([ResponseStatistics.Result, "mean"], status.Artifacts.Keys.Order().Reverse());
    }

    [Fact]
    public void An_algorithm_block_with_an_unknown_key_or_an_unregistered_name_is_refused_naming_the_field()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "bad");
        var typo = spec with { Algorithm = new AlgorithmSpec(ResponseStatistics.AlgorithmName, new Dictionary<string, string> { ["units"] = "words" }) };
        var e = Assert.Throws<JobSpecException>(() => JobSpecValidation.Validate(typo, "job.conf", ActorSpecs.Algorithms));
        Assert.Equal("job.conf: job.algorithm.units is not a setting of algorithm 'response-stats' (did you mean 'unit'?)", e.Message);
        var unknown = spec with { Algorithm = new AlgorithmSpec("fedfoo", new Dictionary<string, string>()) };
        e = Assert.Throws<JobSpecException>(() => JobSpecValidation.Validate(unknown, "job.conf", ActorSpecs.Algorithms));
        Assert.StartsWith("job.conf: job.algorithm.name: 'fedfoo' is not a registered algorithm (known: ", e.Message);
        Assert.Contains("homo-peft", e.Message);
        var secure = FederationFixture.Secure(spec with { Algorithm = typo.Algorithm with { Settings = new Dictionary<string, string>() } }, 10);
        e = Assert.Throws<JobSpecException>(() => JobSpecValidation.Validate(secure, "job.conf", ActorSpecs.Algorithms));
        Assert.Equal("job.conf: job.secure-aggregation cannot apply: algorithm 'response-stats' exchanges no summable updates", e.Message);
    }
}
