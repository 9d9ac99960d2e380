using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// One round attempt alone: a probe stands in for the party region (its answers are scripted per message), a real blob
/// server serves the parties' updates, the echo plug-in makes each exchange instant, and virtual time drives re-asks,
/// deadlines and the absent grace.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class AggregationRoundSpec : TestKit
{
    readonly BlobStore _arbiterStore = new(TestSupport.TempDir()), _partyStore = new(TestSupport.TempDir());
    readonly TestProbe _parties, _answers;
    readonly IActorRef _arbiterBlobs, _partyBlobs;
    readonly ActorSpecs.ScriptedPresence _presence = new();
    static readonly TimeSpan Resend = TimeSpan.FromSeconds(3), Grace = TimeSpan.FromSeconds(5), Wait = TimeSpan.FromSeconds(10);

    public AggregationRoundSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        // Live answers for the job's status are not what these specs look at.
        IgnoreMessages<RoundPartyAnswered>();
        _parties = CreateTestProbe();
        _answers = CreateTestProbe();
        Sys.EventStream.Subscribe(_answers.Ref, typeof(PartyAnswered));
        _arbiterBlobs = Sys.ActorOf(BlobServer.Props(_arbiterStore));
        _partyBlobs = Sys.ActorOf(BlobServer.Props(_partyStore));
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    RoundSettings Settings(FaultInjection? faults = null) => new(_arbiterStore, _parties.Ref, _arbiterBlobs, TransferSettings.Default, Resend)
    {
        Presence = _presence, AbsentGrace = Grace, Linger = TimeSpan.FromSeconds(30), Faults = faults ?? FaultInjection.None,
        Algorithms = ActorSpecs.Algorithms,
    };

    StartRound Start(JobSpec spec, int round = 1, int attempt = 1)
    {
        var specDigest = _arbiterStore.Put(spec.ToJson());
        var state = AlgorithmState.Of((EchoAlgorithm.Total, _arbiterStore.Put(EchoAlgorithm.Write(100))));
        return new StartRound(spec.JobId, round, attempt, spec, new BlobLocation(specDigest, _arbiterStore.Size(specDigest), _arbiterBlobs), state,
            spec.Parties.Select(p => p.Org).ToArray(), null);
    }

    /// <summary>The work requests of one exchange, by party (each re-ask arrives again).</summary>
    Dictionary<string, (WorkRequest Request, IActorRef Collector)> Requests(int count)
    {
        var asked = new Dictionary<string, (WorkRequest, IActorRef)>();
        for (int i = 0; i < count; i++)
        {
            var r = _parties.ExpectMsg<WorkRequest>(Wait);
            asked[r.Org] = (r, _parties.LastSender);
        }
        return asked;
    }

    UpdateReady Answer(WorkRequest r, double value, WorkId? id = null, long? claimedSize = null)
    {
        var bytes = EchoAlgorithm.Write(value);
        var digest = _partyStore.Put(bytes);
        return new UpdateReady(r.Org, id ?? r.Id, new BlobLocation(digest, claimedSize ?? bytes.Length, _partyBlobs), 1,
            new Dictionary<string, double> { [ClientUpdate.FirstLoss] = value, [ClientUpdate.LastLoss] = value }, 0.1, 7);
    }

    T Expect<T>() => ExpectMsg<T>(Wait);

    /// <summary>Waits until the round has settled these parties' answers (pulled and recorded), so the clock can move on.</summary>
    void Settled(params string[] orgs)
    {
        var seen = new HashSet<string>();
        while (!orgs.All(seen.Contains)) seen.Add(_answers.ExpectMsg<PartyAnswered>(Wait).Org);
    }

    RoundFinished Finished()
    {
        // Progress reports may come first; the result is what counts here.
        return FishForMessage<RoundFinished>(m => m is RoundFinished, Wait);
    }

    double Total(RoundFinished f) => EchoAlgorithm.Read(_arbiterStore.Read(f.State!.Get(EchoAlgorithm.Total)));

    [Fact]
    public void A_two_exchange_round_reports_each_stage_and_the_finished_exchange_then_its_result()
    {
        var spec = ActorSpecs.EchoJob("two", exchanges: 2);
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec));
        var progress = Expect<RoundProgress>();
        Assert.Equal((1, RoundStage.Collect, spec.Round.Deadline), (progress.Phase, progress.Stage, progress.Budget));
        var first = Requests(3);
        foreach (var (org, (r, collector)) in first)
        {
            Assert.Equal(new WorkId("two", 1, 1, 1), r.Id);
            Assert.Equal("e1", r.Exchange);
            Assert.Equal(ActorSpecs.Orgs, r.Cohort);
            Assert.Equal(_arbiterStore.Read(r.Downloads[EchoAlgorithm.Total].Digest), EchoAlgorithm.Write(100));
            collector.Tell(new WorkAccepted(org, r.Id));
            collector.Tell(Answer(r, 1));
        }
        Assert.Equal(RoundStage.Step, Expect<RoundProgress>().Stage);
        var done = Expect<RoundPhaseDone>();
        Assert.Equal(1, done.Phase);
        Assert.Equal("e2", done.Next.Name);
        Assert.Equal(103, EchoAlgorithm.Read(_arbiterStore.Read(done.State.Get(EchoAlgorithm.Total))));
        Assert.Equal(2, Expect<RoundProgress>().Phase);
        foreach (var (org, (r, collector)) in Requests(3))
        {
            Assert.Equal(2, r.Id.Phase);
            collector.Tell(Answer(r, 10));
        }
        var finished = Finished();
        Assert.True(finished.Succeeded, finished.Reason);
        Assert.Equal(133, Total(finished));
        Assert.Equal(2, finished.Summary!.Exchanges);
        Assert.All(finished.Summary.Parties, p => Assert.True(p.Succeeded && p.UploadBytes > 0 && p.DownloadBytes == 14));
        Assert.Equal(133, finished.Summary.Metrics["echo.total"]);
    }

    [Fact]
    public void A_lost_request_is_sent_again_and_a_duplicated_answer_counts_once()
    {
        var spec = ActorSpecs.EchoJob("resend");
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec));
        var first = Requests(3); // food's request is "lost": it does not answer
        foreach (var org in new[] { "animal", "artifact" }) first[org].Collector.Tell(Answer(first[org].Request, 1));
        _parties.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(Resend);
        var again = _parties.ExpectMsg<WorkRequest>(Wait);
        Assert.Equal(("food", first["food"].Request.Id), (again.Org, again.Id)); // only the silent party, same work id
        var answer = Answer(again, 1);
        _parties.LastSender.Tell(answer);
        _parties.LastSender.Tell(answer);
        var finished = Finished();
        Assert.Equal(103, Total(finished));
        Assert.Equal(1, finished.Summary!.Parties.Single(p => p.Org == "food").Samples);
    }

    [Fact]
    public void A_party_silent_past_the_deadline_is_a_dropout_its_late_answer_is_ignored_and_the_quorum_aggregates()
    {
        var spec = ActorSpecs.EchoJob("deadline", quorum: 2, deadlineSeconds: 60);
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec));
        var asked = Requests(3);
        foreach (var org in new[] { "animal", "artifact" }) asked[org].Collector.Tell(Answer(asked[org].Request, 2));
        Settled("animal", "artifact");
        Clock.Advance(TimeSpan.FromSeconds(60));
        var finished = Finished();
        Assert.True(finished.Succeeded, finished.Reason);
        Assert.Equal(104, Total(finished));
        Assert.Equal("no answer by the deadline", finished.Summary!.Parties.Single(p => p.Org == "food").Reason);
        asked["food"].Collector.Tell(Answer(asked["food"].Request, 50)); // after the deadline
        round.Tell(Start(spec));
        Assert.Equal(104, Total(Expect<RoundFinished>())); // the result stands
    }

    [Fact]
    public void A_start_that_carries_a_derived_deadline_waits_that_long_not_the_specs_outer_bound()
    {
        var spec = ActorSpecs.EchoJob("derived", quorum: 2, deadlineSeconds: 3600);
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec) with { Deadline = TimeSpan.FromSeconds(90) });
        var asked = Requests(3);
        foreach (var org in new[] { "animal", "artifact" }) asked[org].Collector.Tell(Answer(asked[org].Request, 2));
        Settled("animal", "artifact");
        Clock.Advance(TimeSpan.FromSeconds(89));
        // Nothing but progress before the derived deadline (the reports name it as the exchange's budget).
        while (ReceiveOne(TimeSpan.FromMilliseconds(300)) is { } m)
            Assert.Equal(TimeSpan.FromSeconds(90), Assert.IsType<RoundProgress>(m).Budget);
        Clock.Advance(TimeSpan.FromSeconds(1));
        var finished = Finished();
        Assert.True(finished.Succeeded, finished.Reason);
        Assert.Equal("no answer by the deadline", finished.Summary!.Parties.Single(p => p.Org == "food").Reason);
    }

    [Fact]
    public void Without_a_quorum_the_round_fails_naming_every_missing_party_and_why()
    {
        var spec = ActorSpecs.EchoJob("short", quorum: 3, deadlineSeconds: 60);
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec));
        var asked = Requests(3);
        asked["animal"].Collector.Tell(Answer(asked["animal"].Request, 1));
        asked["artifact"].Collector.Tell(new UpdateFailed("artifact", asked["artifact"].Request.Id, "party 'artifact' has no dataset 'train'"));
        Settled("animal", "artifact");
        Clock.Advance(TimeSpan.FromSeconds(60));
        var finished = Finished();
        Assert.False(finished.Succeeded);
        Assert.Equal("quorum not met: 1 of 3 parties delivered an update, 3 required; missing: artifact (party 'artifact' has no dataset 'train'), food (no answer by the deadline)",
            finished.Reason);
    }

    [Fact]
    public void A_party_whose_work_stops_moving_is_dropped_after_the_inactivity_bound_and_one_that_steps_on_is_waited_for()
    {
        var spec = ActorSpecs.EchoJob("inactive", quorum: 2, deadlineSeconds: 3600);
        spec = spec with { Round = spec.Round with { InactivitySeconds = 30 } };
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec));
        var asked = Requests(3);
        asked["animal"].Collector.Tell(Answer(asked["animal"].Request, 1));
        // Each re-ask is the heartbeat: artifact steps on, food stays at loading (a hung load, a stuck native call); 39 s
        // of re-asks pass the 30 s bound whichever of the first re-asks food's reply catches.
        for (int i = 1; i <= 13; i++)
        {
            Clock.Advance(Resend);
            while (true)
            {
                var r = _parties.ExpectMsg<WorkRequest>(Wait);
                if (r.Org == "food") _parties.LastSender.Tell(new WorkAccepted("food", r.Id) { Progress = new WorkProgress("loading", 0, 0, 0) });
                else
                {
                    // Downloading first: bytes moving on are progress too.
                    var shown = i <= 6
                        ? new WorkProgress(WorkProgress.Downloading, 0, 0, 0) { Bytes = i * (10L << 20), TotalBytes = 60L << 20 }
                        : new WorkProgress("training", i, 20, 150);
                    _parties.LastSender.Tell(new WorkAccepted(r.Org, r.Id) { Progress = shown });
                    break;
                }
            }
        }
        var dropped = _answers.FishForMessage<PartyAnswered>(a => a.Org == "food", Wait);
        Assert.Equal("dropped", dropped.Outcome);
        var download = FishForMessage<RoundPartyProgress>(m => m is RoundPartyProgress p && p.Org == "artifact" && p.Progress.Bytes == 30L << 20, Wait);
        Assert.Equal("downloading 30.0 MiB of 60.0 MiB", download.Progress.ToString());
        var progress = FishForMessage<RoundPartyProgress>(m => m is RoundPartyProgress p && p.Org == "artifact" && p.Progress.Step == 9, Wait);
        Assert.Equal("step 9/20, 150 tok/s", progress.Progress.ToString());
        asked["artifact"].Collector.Tell(Answer(asked["artifact"].Request, 2));
        var finished = Finished();
        Assert.True(finished.Succeeded, finished.Reason); // long past the 30 s bound, but artifact kept moving
        Assert.Equal("no progress for 30 s (still loading; job.round-inactivity)", finished.Summary!.Parties.Single(p => p.Org == "food").Reason);
    }

    [Fact]
    public void A_party_whose_node_is_gone_is_dropped_after_the_absent_grace_not_the_deadline()
    {
        var spec = ActorSpecs.EchoJob("absent", quorum: 2, deadlineSeconds: 600);
        _presence.Absent.Add("food");
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec));
        var asked = Requests(3);
        foreach (var org in new[] { "animal", "artifact" }) asked[org].Collector.Tell(Answer(asked[org].Request, 1));
        Settled("animal", "artifact");
        Clock.Advance(Grace);
        var finished = Finished();
        Assert.True(finished.Succeeded, finished.Reason);
        Assert.StartsWith("its node left or never joined", finished.Summary!.Parties.Single(p => p.Org == "food").Reason);
    }

    [Fact]
    public void Answers_for_another_attempt_are_refused_as_replays_and_oversized_updates_are_refused_before_any_byte_is_pulled()
    {
        var spec = ActorSpecs.EchoJob("replay", quorum: 1, deadlineSeconds: 60);
        spec = spec with { Validation = spec.Validation with { MaxBytes = 1000 } };
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        round.Tell(Start(spec, round: 2, attempt: 2));
        var asked = Requests(3);
        asked["animal"].Collector.Tell(Answer(asked["animal"].Request, 1));
        asked["artifact"].Collector.Tell(Answer(asked["artifact"].Request, 1, id: asked["artifact"].Request.Id with { Attempt = 1 }));
        var hoarder = CreateTestProbe(); // stands in for food's blob server: nothing may be asked of it
        var big = Answer(asked["food"].Request, 1, claimedSize: 5000) with { };
        asked["food"].Collector.Tell(big with { Update = big.Update! with { Server = hoarder.Ref } });
        Settled("animal", "food");
        Clock.Advance(TimeSpan.FromSeconds(60));
        var finished = Finished();
        Assert.True(finished.Succeeded, finished.Reason);
        Assert.Contains("artifact: answer for replay/2/1/1, this exchange is replay/2/2/1 (replay refused)", finished.Summary!.Rejections);
        Assert.Contains("food: update of 5000 bytes exceeds the limit of 1000", finished.Summary.Rejections);
        hoarder.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Assert.Equal(101, Total(finished));
    }

    [Theory]
    [InlineData("round.collected")]
    [InlineData("round.stepped")]
    public void A_crash_mid_round_loses_only_that_attempt_and_a_re_sent_start_runs_it_again(string point)
    {
        var spec = ActorSpecs.EchoJob("crash");
        var round = Sys.ActorOf(AggregationRound.Props(Settings(new FaultInjection([new FaultPoint(point, "", 0, 0, FaultAction.Throw, 1)]))));
        var start = Start(spec);
        round.Tell(start);
        // The round fails at the point and its supervisor restarts it empty: no result comes. Waiting for the failure itself
        // (not for a progress report before it) keeps the re-sent start from reaching the attempt that is about to crash.
        EventFilter.Exception<InjectedFaultException>().ExpectOne(Wait, () =>
        {
            foreach (var (_, (r, c)) in Requests(3)) c.Tell(Answer(r, 1));
        });
        FishForMessage(m => m is RoundProgress { Stage: RoundStage.Step } || m is RoundProgress && point == "round.collected", Wait);
        round.Tell(start); // the job's watchdog re-sends (here: the same attempt) and the round runs it again
        foreach (var (_, (r, c)) in Requests(3)) c.Tell(Answer(r, 1));
        Assert.Equal(103, Total(Finished()));
    }

    [Fact]
    public void An_aborted_round_tells_the_parties_of_its_exchange_to_stop_and_stops()
    {
        var spec = ActorSpecs.EchoJob("abort");
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        Watch(round);
        var start = Start(spec);
        round.Tell(start);
        var asked = Requests(3);
        round.Tell(new AbortRound(spec.JobId, 1, 1, "the job was cancelled"));
        var cancelled = new[] { _parties.ExpectMsg<CancelWork>(Wait), _parties.ExpectMsg<CancelWork>(Wait), _parties.ExpectMsg<CancelWork>(Wait) };
        Assert.Equal(ActorSpecs.Orgs, cancelled.Select(c => c.Org).Order());
        Assert.All(cancelled, c => Assert.Equal(asked[c.Org].Request.Id, c.Id));
        FishForMessage(m => m is Terminated t && t.ActorRef.Equals(round), Wait);
    }

    [Fact]
    public void A_finished_round_answers_a_re_sent_start_with_its_result_then_passivates()
    {
        var spec = ActorSpecs.EchoJob("linger");
        var round = Sys.ActorOf(AggregationRound.Props(Settings()));
        Watch(round);
        round.Tell(Start(spec));
        foreach (var (_, (r, c)) in Requests(3)) c.Tell(Answer(r, 1));
        var first = Finished();
        round.Tell(Start(spec));
        Assert.Equal(Total(first), Total(Expect<RoundFinished>()));
        _parties.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // nobody is asked again
        Clock.Advance(TimeSpan.FromSeconds(30));
        FishForMessage(m => m is Terminated t && t.ActorRef.Equals(round), Wait);
    }
}
