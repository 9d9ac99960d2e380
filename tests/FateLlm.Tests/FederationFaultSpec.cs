using Akka.Actor;
using Akka.Cluster.Sharding;
using Akka.Configuration;
using Akka.Remote;
using Akka.Remote.Transport;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Faults the federation must survive, injected for real: crashed actor systems, lost chunks, blackholed links, bad data.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class FederationFaultSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(150);

    [Fact]
    public async Task A_party_crashed_mid_round_is_dropped_for_that_round_then_rejoins_and_trains_again()
    {
        var g = FederationFixture.Prepare();
        // food's node dies the moment it is asked to train in round 2: deterministically inside the round.
        // The absent grace and the deadline leave the restarted party time to rejoin, be placed and train in round 3 on a
        // busy machine (round 3 starts as soon as round 2 ends, while the new node is still joining).
        var crash = ConfigurationFactory.ParseString("""
            fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 2, action = terminate }]
            fate-llm.round.absent-grace = 25s
            """);
        await using var fed = await FederationFixture.Start(g, crash);
        var spec = FederationFixture.Echo(FederationFixture.Job(g, "party-crash", rounds: 3, quorum: 2, deadlineSeconds: 40));
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        await fed.Parties["food"].System.WhenTerminated.WaitAsync(Generous);
        await fed.CrashParty("food");
        await fed.WaitAsync(spec.JobId, Generous, s => s.CompletedRounds >= 2);
        // The restarted node runs without the crash point: requests of round 2 buffered while it was gone still reach it.
        fed.StartParty("food", overrides: FederationFixture.FastCluster);
        var status = await fed.WaitAsync(spec.JobId, Generous);

        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.Equal([1, 2, 3], status.Rounds.Select(r => r.Round));
        var round2 = status.Rounds[1].Parties.ToDictionary(p => p.Org);
        Assert.False(round2["food"].Succeeded);
        Assert.True(round2["animal"].Succeeded && round2["artifact"].Succeeded);
        var food3 = status.Rounds[2].Parties.Single(p => p.Org == "food");
        Assert.True(food3.Succeeded, $"the restarted party works again in round 3 (it reported: {food3.Reason})");
    }

    [Fact]
    public async Task An_arbiter_crash_loses_no_completed_round_and_lost_chunks_are_retransmitted_without_changing_the_result()
    {
        var g = FederationFixture.Prepare();
        string reference;
        // The arbiter's node dies once it has collected round 2's updates of that job, before aggregating them.
        var crashAt = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = round.collected, job = arbiter-crash, round = 2, action = terminate }]");
        await using (var fed = await FederationFixture.Start(g, crashAt))
        {
            // Same settings for both runs; the echo plug-in's state (its running total) says whether a round was applied twice.
            var clean = FederationFixture.Echo(FederationFixture.Job(g, "clean", rounds: 3));
            var done = await FederationFixture.RunToCompletion(fed, clean, Generous);
            var total = done.Artifacts[Plugins.EchoAlgorithm.Total];

            var crash = FederationFixture.Echo(FederationFixture.Job(g, "arbiter-crash", rounds: 3));
            Assert.IsType<JobAccepted>(await fed.SubmitAsync(crash));
            await fed.Arbiter.System.WhenTerminated.WaitAsync(Generous);
            await fed.RestartArbiter(overrides: FederationFixture.FastCluster);
            var resumed = await fed.WaitAsync(crash.JobId, Generous);
            Assert.True(resumed.State == JobState.Completed, resumed.Reason);
            // Each round completed exactly once, in order: nothing lost, nothing recomputed.
            Assert.Equal([1, 2, 3], resumed.Rounds.Select(r => r.Round));
            Assert.Equal([1, 2, 1], resumed.Rounds.Select(r => r.Attempt)); // only round 2's attempt in flight was lost
            Assert.Equal(total, resumed.Artifacts[Plugins.EchoAlgorithm.Total]);
        }

        // Lost chunks need adapters of some size: this part trains.
        var lossy = ConfigurationFactory.ParseString("fate-llm.transfer.drop-rate = 0.1\nfate-llm.transfer.chunk-size = 4KiB");
        var g2 = g with { Root = Path.Combine(g.Root, "lossy") };
        // What a lossless federation computes (the simulation gives the cluster's bits: FederationDeterminismSpec).
        var plain = FederationFixture.Job(g2, "lossy", rounds: 3) with { ModelPath = g.Model };
        reference = new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(plain), plain with { OutputDir = Path.Combine(g2.Root, "out-simulated") }, g.Model,
            g.Datasets.Select(kv => new SimulatedParty(kv.Key, kv.Value)).ToList(), Path.Combine(g2.Root, "simulation")).Run().State.Get(AlgorithmState.Global);
        await using (var fed = await FederationFixture.Start(g2, lossy))
        {
            var spec = plain;
            var done = await FederationFixture.RunToCompletion(fed, spec, Generous);
            Assert.True(done.Rounds.SelectMany(r => r.Parties).Sum(p => p.Retransmissions) > 0, "10% loss must cause retransmissions");
            Assert.Equal(reference, done.GlobalDigest);
        }
    }

    [Fact]
    public async Task A_blackholed_party_is_downed_and_the_round_proceeds_with_the_quorum()
    {
        var g = FederationFixture.Prepare();
        var throttled = ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.applied-adapters = [trttl]");
        await using var fed = await FederationFixture.Start(g, throttled);
        // Three rounds: on a loaded machine food may finish round 2 before the blackhole lands (a tiny model trains in
        // about a second); a later round then runs without it.
        var spec = FederationFixture.Job(g, "partition", rounds: 3, quorum: 2, deadlineSeconds: 10);
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        await fed.WaitAsync(spec.JobId, Generous, s => s.CompletedRounds >= 1);

        var food = fed.Parties["food"].System;
        var transport = ((RemoteActorRefProvider)((ExtendedActorSystem)food).Provider).Transport;
        foreach (var m in Akka.Cluster.Cluster.Get(food).State.Members.Where(m => m.Address != Akka.Cluster.Cluster.Get(food).SelfAddress))
            await transport.ManagementCommand(new SetThrottle(m.Address, ThrottleTransportAdapter.Direction.Both, Blackhole.Instance));

        var status = await fed.WaitAsync(spec.JobId, Generous);
        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.Contains(status.Rounds.Skip(1), r => !r.Parties.Single(p => p.Org == "food").Succeeded);
        Assert.All(status.Rounds.Skip(1), r => Assert.True(r.Parties.Count(p => p.Succeeded) >= 2, $"round {r.Round} ran with the quorum"));
        // The split-brain resolver downed the isolated party: it is gone from the majority's view.
        var arbiterView = Akka.Cluster.Cluster.Get(fed.Arbiter.System).State.Members;
        Assert.DoesNotContain(arbiterView, m => m.HasRole("org-food"));
    }

    [Fact]
    public async Task A_trainer_that_throws_counts_as_a_dropout_and_its_party_node_stays_up()
    {
        var g = FederationFixture.Prepare();
        var bad = g.Datasets["food"]["train"];
        File.AppendAllText(bad, "{ this is not json\n");
        await using var fed = await FederationFixture.Start(g);
        var spec = FederationFixture.Job(g, "bad-data", rounds: 2, quorum: 2);
        var status = await FederationFixture.RunToCompletion(fed, spec, Generous);
        foreach (var round in status.Rounds)
        {
            var food = round.Parties.Single(p => p.Org == "food");
            Assert.False(food.Succeeded);
            Assert.Contains($"{bad}:", food.Reason);
        }
        Assert.False(fed.Parties["food"].System.WhenTerminated.IsCompleted);
    }

    [Fact]
    public async Task A_job_naming_an_organization_with_no_node_waits_for_it_without_spending_attempts_then_fails_naming_it()
    {
        var g = FederationFixture.Prepare();
        var two = g with { Datasets = g.Datasets.Where(kv => kv.Key != "food").ToDictionary() };
        await using var fed = await FederationFixture.Start(two, ConfigurationFactory.ParseString("fate-llm.job.wait-for-parties = 5s"));
        var spec = FederationFixture.Job(g, "no-quorum", rounds: 2, quorum: 3, deadlineSeconds: 3, attempts: 2);
        var accepted = Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        Assert.Equal(["food"], accepted.WaitingFor); // the answer says whom round 1 waits for, and how long
        Assert.Equal(TimeSpan.FromSeconds(5), accepted.WaitUpTo);
        var status = await fed.WaitAsync(spec.JobId, Generous);

        Assert.Equal(JobState.Failed, status.State);
        Assert.Equal(0, status.CompletedRounds);
        Assert.Equal(0, status.CurrentAttempt); // no attempt was spent in vain
        Assert.Equal("round 1 cannot meet its quorum of 3: no node of food joined within 5 s", status.Reason);
        // The parties that were there trained nothing for it.
        Assert.All(fed.Parties.Values, n => Assert.Empty(Directory.GetFiles(n.Store.Root)));
    }

    [Fact]
    public async Task A_second_node_claiming_an_organization_already_served_is_refused_and_leaves_while_the_first_keeps_serving()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g);
        var first = fed.Parties["food"];
        var second = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = "food", Seeds = [fed.SeedAddress], DataDir = Path.Combine(g.Root, "food-again"),
            Datasets = g.Datasets["food"], Overrides = FederationFixture.FastCluster,
        });
        await second.System.WhenTerminated.WaitAsync(Generous);
        Assert.StartsWith($"organization 'food' is already served by node {Akka.Cluster.Cluster.Get(first.System).SelfAddress}", second.Refused);
        Assert.Null(first.Refused);
        Assert.False(first.System.WhenTerminated.IsCompleted);
        // The organization's work still lands on the first node: a job runs through it.
        var status = await FederationFixture.RunToCompletion(fed, FederationFixture.Echo(FederationFixture.Job(g, "after-duplicate", rounds: 1)), Generous);
        Assert.True(status.Rounds[0].Parties.Single(p => p.Org == "food").Succeeded);
    }
}
