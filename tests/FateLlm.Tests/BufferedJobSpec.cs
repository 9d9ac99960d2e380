using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Jobs;
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
/// A job on the buffered schedule, end to end through its journal: a probe stands in for the party region and answers
/// every work request from a real blob server, the echo plug-in makes flushes instant, an in-memory journal keeps the
/// events, and a crash is a fault point or a killed entity whose next incarnation recovers.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class BufferedJobSpec : TestKit
{
    readonly BlobStore _arbiterStore = new(TestSupport.TempDir()), _partyStore = new(TestSupport.TempDir());
    readonly TestProbe _rounds, _parties;
    readonly IActorRef _arbiterBlobs, _partyBlobs;
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    public BufferedJobSpec() : base(ActorSpecs.Config())
    {
        _rounds = CreateTestProbe();
        _parties = CreateTestProbe();
        _arbiterBlobs = Sys.ActorOf(BlobServer.Props(_arbiterStore));
        _partyBlobs = Sys.ActorOf(BlobServer.Props(_partyStore));
    }

    static JobSpec Job(string id, int versions = 3)
    {
        var spec = ActorSpecs.EchoJob(id, rounds: versions, deadlineSeconds: 60);
        return spec with { Schedule = spec.Schedule with { Mode = ScheduleMode.Buffered, Buffer = 2, MaxStaleness = 10, Weighting = StalenessWeighting.Constant } };
    }

    IActorRef Job(JobSpec spec, FaultInjection? faults = null) => Sys.ActorOf(JobActor.Props(spec.JobId,
        new JobSettings(_arbiterStore, _arbiterBlobs, _rounds.Ref, _parties.Ref, null)
        {
            Algorithms = ActorSpecs.Algorithms, Faults = faults ?? FaultInjection.None,
            Collection = new RoundSettings(_arbiterStore, _parties.Ref, _arbiterBlobs, TransferSettings.Default, TimeSpan.FromSeconds(30)) { Algorithms = ActorSpecs.Algorithms },
        }));

    IActorRef Submitted(JobSpec spec, FaultInjection? faults = null)
    {
        var job = Job(spec, faults);
        job.Tell(new SubmitJob(spec.JobId, spec));
        ExpectMsg<JobAccepted>(Wait);
        return job;
    }

    /// <summary>The echo plug-in's exported total.</summary>
    static double Total(JobSpec spec) => EchoAlgorithm.Read(File.ReadAllBytes(Path.Combine(spec.OutputDir, "total.txt")));

    JobStatus Status(IActorRef job)
    {
        job.Tell(new GetJobStatus("x"));
        return ExpectMsg<JobStatus>(Wait);
    }

    /// <summary>Every party's update is its organization's name length; a request asked again is answered again, as a party does.</summary>
    void Serve(object message, IActorRef sender)
    {
        switch (message)
        {
            case WorkRequest r:
                var bytes = EchoAlgorithm.Write(r.Org.Length);
                sender.Tell(new UpdateReady(r.Org, r.Id, new BlobLocation(_partyStore.Put(bytes), bytes.Length, _partyBlobs), 1,
                    new Dictionary<string, double> { [ClientUpdate.FirstLoss] = 1, [ClientUpdate.LastLoss] = 1 }, 0.1, 7));
                break;
            case EvaluateRequest e:
                sender.Tell(new EvaluateReply(e.Org, e.JobId, new PartyEvaluation(e.Org, 1, Math.E, null, null, null, null, 1), null));
                break;
        }
    }

    JobStatus RunToEnd(IActorRef job, JobState end = JobState.Completed)
    {
        JobStatus status = null!;
        AwaitAssert(() =>
        {
            while (_parties.ReceiveOne(TimeSpan.FromMilliseconds(20)) is { } m) Serve(m, _parties.LastSender);
            Assert.Equal(end, (status = Status(job)).State);
        }, TimeSpan.FromSeconds(20), TimeSpan.FromMilliseconds(10));
        return status;
    }

    /// <summary>What the flushes added: every applied update's value once (the echo total), checked against the flushes' reports.</summary>
    static void AssertEachUpdateAppliedOnce(JobStatus status, double total)
    {
        var applied = status.Rounds.SelectMany(r => r.Buffer!.Contributions).ToList();
        Assert.Equal(applied.Count, applied.Select(c => c.UpdateId).Distinct().Count());
        Assert.Equal(applied.Sum(c => c.Org.Length * c.Weight), total, 9);
    }

    [Fact]
    public void A_buffered_job_publishes_its_versions_then_evaluates_and_exports_with_every_update_applied_once()
    {
        var spec = Job("buffered");
        var status = RunToEnd(Submitted(spec));
        Assert.Equal([1, 2, 3], status.Rounds.Select(r => r.Round));
        Assert.All(status.Rounds, r => Assert.Equal(2, r.Buffer!.Contributions.Length));
        Assert.Null(status.Buffer); // shown while running only
        // The board's chart points carry each flush's staleness.
        Assert.Equal(status.Rounds[1].Buffer!.Contributions, FateLlm.Actors.Board.FederationBoard.Point(status.Rounds[1]).Buffer);
        AssertEachUpdateAppliedOnce(status, Total(spec));
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(100)); // no synchronous round was ever started
    }

    [Fact]
    public void An_arbiter_crash_between_two_flushes_resumes_at_the_same_version_and_never_applies_an_update_twice()
    {
        var spec = Job("buffered-crash");
        // The arbiter crashes right after version 1 is journaled, before the buffer hears of it.
        JobStatus status = null!;
        EventFilter.Exception<InjectedFaultException>().ExpectOne(TimeSpan.FromSeconds(30), () =>
            status = RunToEnd(Submitted(spec, new FaultInjection([new FaultPoint(FaultPoints.JobRoundCompleted, "", 1, 0, FaultAction.Throw, 1)]))));
        Assert.Equal([1, 2, 3], status.Rounds.Select(r => r.Round));
        AssertEachUpdateAppliedOnce(status, Total(spec));
        // The journal holds one dispatch per update id across both incarnations: work in flight was asked again, not anew.
        var dispatched = File.ReadAllLines(Path.Combine(spec.OutputDir, "events.jsonl"))
            .Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).Where(n => (string?)n["type"] == nameof(UpdateDispatched))
            .Select(n => (int)n["event"]!["UpdateId"]!).ToList();
        Assert.Equal(dispatched.Count, dispatched.Distinct().Count());
        Assert.True(dispatched.Count >= 6, $"{dispatched.Count} dispatches");
    }

    [Fact]
    public void Cancelling_a_buffered_job_stops_every_partys_work_and_answers_cancelled()
    {
        var spec = Job("buffered-cancel");
        var job = Submitted(spec);
        var asked = Enumerable.Range(0, 3).Select(_ => _parties.FishForMessage<WorkRequest>(_ => true, Wait)).ToList();
        AwaitAssert(() => Assert.Equal(3, Status(job).Buffer!.InFlight.Length), Wait);
        var running = Status(job);
        var buffer = running.Buffer!;
        Assert.Equal((0, 0, 2), (buffer.Version, buffer.Filled, buffer.Size));
        // What `job status` prints while it runs.
        Assert.StartsWith("version 0/3, buffer 0/2; training: ", FateLlm.Host.Cli.JobCommands.Progress(running));
        Assert.Contains("food from version 0 (staleness 0 so far)", FateLlm.Host.Cli.JobCommands.Progress(running));
        job.Tell(new CancelJob(spec.JobId));
        Assert.Equal(JobState.Cancelled, ExpectMsg<JobStatus>(Wait).State);
        var cancelled = Enumerable.Range(0, 3).Select(_ => _parties.FishForMessage<CancelWork>(_ => true, Wait).Id).OrderBy(i => i.Round);
        Assert.Equal(asked.Select(a => a.Id).OrderBy(i => i.Round), cancelled);
    }
}
