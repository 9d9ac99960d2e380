using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Federation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The buffered schedule through a real in-process cluster: the journal on disk, the wire, a killed arbiter and party.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class BufferedFederationSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(150);
    /// <summary>Enough versions that the job is still running when food is caught training (echo fits are instant).</summary>
    const int Versions = 24;

    [Fact]
    public async Task A_buffered_job_survives_its_arbiter_killed_after_a_flush_and_a_party_killed_mid_training_applying_no_update_twice()
    {
        var g = FederationFixture.Prepare();
        // The arbiter's node dies right after version 2 is journaled; later food's node dies while it trains.
        var crash = ConfigurationFactory.ParseString("""
            fate-llm.fault-injection.points = [
              { at = job.round-completed, job = buffered-crash, round = 2, action = terminate }
            ]
            fate-llm.job.buffered-retry = 1s
            """);
        var spec = FederationFixture.Echo(FederationFixture.Job(g, "buffered-crash", rounds: Versions, deadlineSeconds: 40));
        spec = spec with
        {
            Schedule = spec.Schedule with { Mode = ScheduleMode.Buffered, Buffer = 2, MaxStaleness = 5, Weighting = StalenessWeighting.Polynomial, Concurrency = 3 },
        };
        await using var fed = await FederationFixture.Start(g, crash);
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        await fed.Arbiter.System.WhenTerminated.WaitAsync(Generous);
        // From now on food's and artifact's fits wait at a gate: food's node will die with work in flight. animal alone
        // cannot fill a buffer (one update per party per buffer), so the job waits for them instead of finishing all its
        // versions between two polls of its status (echo fits are instant).
        EchoAlgorithm.Hold("food");
        EchoAlgorithm.Hold("artifact");
        await fed.RestartArbiter(overrides: FederationFixture.FastCluster);
        var caught = await fed.WaitAsync(spec.JobId, Generous, s => s.State != JobState.Running || s.CompletedRounds >= 2 && s.Buffer?.InFlight.Any(w => w.Org == "food") == true);
        Assert.Equal(JobState.Running, caught.State);
        await fed.CrashParty("food");
        EchoAlgorithm.Release("food");
        EchoAlgorithm.Release("artifact");
        fed.StartParty("food", overrides: FederationFixture.FastCluster);
        var status = await fed.WaitAsync(spec.JobId, Generous);

        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.Equal(Enumerable.Range(1, Versions), status.Rounds.Select(r => r.Round));
        var applied = status.Rounds.SelectMany(r => r.Buffer!.Contributions).ToList();
        Assert.Equal(2 * Versions, applied.Count);
        Assert.Equal(applied.Count, applied.Select(c => c.UpdateId).Distinct().Count());
        Assert.All(applied, c => Assert.Equal(Math.Pow(1 + c.Staleness, -0.5), c.Weight, 12));
        // The echo total is every applied update's value (its party's name length) times its weight, once.
        var total = EchoAlgorithm.Read(File.ReadAllBytes(Path.Combine(status.OutputDir!, "total.txt")));
        Assert.Equal(applied.Sum(c => c.Org.Length * c.Weight), total, 6);
        // The journal (read back by the restarted arbiter) holds one dispatch per update id.
        var events = File.ReadAllLines(Path.Combine(status.OutputDir!, "events.jsonl")).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).ToList();
        var dispatched = events.Where(e => (string?)e["type"] == nameof(UpdateDispatched)).Select(e => (int)e["event"]!["UpdateId"]!).ToList();
        Assert.Equal(dispatched.Count, dispatched.Distinct().Count());
        // What food had in flight when its node died is lost, and only that: the others' versions went on without waiting.
        var lost = caught.Buffer!.InFlight.Single(w => w.Org == "food").UpdateId;
        Assert.DoesNotContain(applied, c => c.UpdateId == lost);
    }
}
