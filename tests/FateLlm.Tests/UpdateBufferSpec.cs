using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The buffered schedule alone (FedBuff): the spec's test actor is its job (it journals by answering each record), a probe
/// stands in for the party region, a real blob server serves the parties' updates, the echo plug-in makes every flush
/// instant, and virtual time drives re-asks, retries and the stall bound.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class UpdateBufferSpec : TestKit
{
    readonly BlobStore _arbiterStore = new(TestSupport.TempDir()), _partyStore = new(TestSupport.TempDir());
    readonly TestProbe _parties;
    readonly IActorRef _arbiterBlobs, _partyBlobs;
    readonly ActorSpecs.ScriptedPresence _presence = new();
    readonly List<IJobEvent> _journal = new();
    static readonly TimeSpan Resend = TimeSpan.FromSeconds(3), Retry = TimeSpan.FromSeconds(5), Wait = TimeSpan.FromSeconds(10);

    public UpdateBufferSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        _parties = CreateTestProbe();
        _arbiterBlobs = Sys.ActorOf(BlobServer.Props(_arbiterStore));
        _partyBlobs = Sys.ActorOf(BlobServer.Props(_partyStore));
        IgnoreMessages<PartyProgressed>();
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    static JobSpec Job(string id, int buffer = 2, int staleness = 4, int versions = 5, StalenessWeighting weighting = StalenessWeighting.Polynomial, int concurrency = 0)
    {
        var spec = ActorSpecs.EchoJob(id, rounds: versions, deadlineSeconds: 60);
        return spec with
        {
            Schedule = spec.Schedule with
            {
                Mode = ScheduleMode.Buffered, Buffer = buffer, MaxStaleness = staleness, Weighting = weighting, Exponent = 0.5, Concurrency = concurrency,
            },
        };
    }

    /// <param name="state">The plug-in's state (the echo plug-in's total of 100 unless given).</param>
    IActorRef Buffer(JobSpec spec, BufferLedger? ledger = null, AlgorithmState? state = null, string modelPath = "-")
    {
        var specDigest = _arbiterStore.Put(spec.ToJson());
        state ??= AlgorithmState.Of((EchoAlgorithm.Total, _arbiterStore.Put(EchoAlgorithm.Write(100))));
        var algorithm = ActorSpecs.Algorithms.For(spec);
        var settings = new BufferSettings(spec.JobId, spec, new BlobLocation(specDigest, _arbiterStore.Size(specDigest), _arbiterBlobs), state, ledger ?? BufferLedger.Empty,
            algorithm, new ServerContext(spec, _arbiterStore, modelPath, _ => { }),
            new RoundSettings(_arbiterStore, _parties.Ref, _arbiterBlobs, TransferSettings.Default, Resend) { Presence = _presence, AbsentGrace = TimeSpan.FromSeconds(5), Algorithms = ActorSpecs.Algorithms })
        {
            RetryAfter = Retry,
        };
        return ChildActorOf(UpdateBuffer.Props(settings), "buffer");
    }

    /// <summary>Journals the buffer's next record (as its job does) and returns it.</summary>
    T Journal<T>() where T : IJobEvent
    {
        var record = ExpectMsg<UpdateBuffer.Record>(Wait);
        var e = Assert.IsType<T>(record.Event);
        _journal.Add(e);
        LastSender.Tell(new UpdateBuffer.Recorded(e));
        return e;
    }

    /// <summary>The next party asked: its dispatch journaled, then its work request (re-asks of others passed over).</summary>
    (UpdateDispatched Dispatch, WorkRequest Request, IActorRef Collector) Dispatched()
    {
        var d = Journal<UpdateDispatched>();
        var r = _parties.FishForMessage<WorkRequest>(w => w.Id.Round == d.UpdateId, Wait);
        Assert.Equal((d.Org, 1, 1), (r.Org, r.Id.Attempt, r.Id.Phase));
        return (d, r, _parties.LastSender);
    }

    /// <summary>Moves the clock on a step at a time until the buffer records something (timers that re-arm on a late message included).</summary>
    T JournalAfter<T>(TimeSpan step) where T : IJobEvent
    {
        for (int i = 0; i < 20; i++)
        {
            Clock.Advance(step);
            if (ReceiveOne(TimeSpan.FromMilliseconds(100)) is UpdateBuffer.Record r)
            {
                var e = Assert.IsType<T>(r.Event);
                _journal.Add(e);
                LastSender.Tell(new UpdateBuffer.Recorded(e));
                return e;
            }
        }
        throw new Xunit.Sdk.XunitException($"no {typeof(T).Name} recorded within {20 * step.TotalSeconds} s of virtual time");
    }

    Dictionary<string, (UpdateDispatched Dispatch, WorkRequest Request, IActorRef Collector)> Dispatched(int count) =>
        Enumerable.Range(0, count).Select(_ => Dispatched()).ToDictionary(x => x.Dispatch.Org);

    void Answer((UpdateDispatched Dispatch, WorkRequest Request, IActorRef Collector) work, double value) => Answer(work, EchoAlgorithm.Write(value));

    void Answer((UpdateDispatched Dispatch, WorkRequest Request, IActorRef Collector) work, byte[] bytes)
    {
        var digest = _partyStore.Put(bytes);
        work.Collector.Tell(new UpdateReady(work.Request.Org, work.Request.Id, new BlobLocation(digest, bytes.Length, _partyBlobs), 1,
            new Dictionary<string, double> { [ClientUpdate.FirstLoss] = 1, [ClientUpdate.LastLoss] = 1 }, 0.1, 7));
    }

    double Total(RoundCompleted flush) => EchoAlgorithm.Read(_arbiterStore.Read(flush.State.Get(EchoAlgorithm.Total)));

    [Theory]
    [InlineData(StalenessWeighting.Constant, 0, 1.0)]
    [InlineData(StalenessWeighting.Constant, 7, 1.0)]
    [InlineData(StalenessWeighting.Polynomial, 0, 1.0)]
    [InlineData(StalenessWeighting.Polynomial, 3, 0.5)] // (1 + 3)^-0.5
    [InlineData(StalenessWeighting.Polynomial, 8, 1.0 / 3)] // (1 + 8)^-0.5
    public void Staleness_weights_are_one_or_FedBuffs_polynomial(StalenessWeighting weighting, int staleness, double weight)
    {
        var schedule = Job("w", weighting: weighting).Schedule;
        Assert.Equal(weight, schedule.Weight(staleness), 12);
        Assert.Throws<ArgumentOutOfRangeException>(() => schedule.Weight(-1));
        Assert.Null(schedule.Refusal(4, 0, 4));
        Assert.Equal("stale: trained from version 1, the global is at version 6 (staleness 5 > schedule.buffered.max-staleness 4)", schedule.Refusal(5, 1, 6));
    }

    [Fact]
    public void Staleness_weights_scale_each_updates_sample_share_in_the_folded_mean_and_each_clipped_update_under_central_dp()
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        var layout = new Dictionary<string, TorchSharp.torch.Tensor> { ["w"] = TorchSharp.torch.zeros(2) };
        var fresh = new AdapterDelta("a", new Dictionary<string, TorchSharp.torch.Tensor> { ["w"] = TorchSharp.torch.tensor(new float[] { 2, 0 }) }, 3);
        var stale = new AdapterDelta("b", new Dictionary<string, TorchSharp.torch.Tensor> { ["w"] = TorchSharp.torch.tensor(new float[] { 0, 0.5f }) }, 1) { Weight = 0.5 };
        // Σ (n_i / Σ n)·w_i·Δ_i: the stale update's share is halved, the shares still divide by Σ n (FedBuff's 1/K, sample-weighted).
        var mean = AggregationStrategies.WeightedMean(layout, [fresh, stale]);
        Assert.Equal(new float[] { 1.5f, 0.0625f }, mean["w"].data<float>().ToArray());
        // Central DP: each update clipped to C = 1, then scaled by its weight (the sum still moves by at most C per party), ÷ the K expected.
        var dp = new DpOptions { Mode = DpMode.Central, ClipNorm = 1, NoiseMultiplier = 0 };
        var noised = PrivateAggregation.Central(layout, [fresh, stale], clip: 1, dp, expectedParties: 2);
        Assert.Equal(new float[] { 0.5f, 0.125f }, noised.Mean["w"].data<float>().ToArray());
    }

    [Fact]
    public void Every_K_updates_flush_into_the_next_version_with_staleness_weights_and_the_flushed_parties_train_again_from_it()
    {
        var spec = Job("flush", buffer: 2);
        Buffer(spec);
        var first = Dispatched(3);
        Assert.Equal(ActorSpecs.Orgs, first.Keys.Order());
        Assert.All(first.Values, w => Assert.Equal(0, w.Dispatch.BaseVersion));
        Assert.Equal([1, 2, 3], first.Values.Select(w => w.Dispatch.UpdateId).Order());
        Answer(first["animal"], 1);
        Assert.Equal("animal", Journal<UpdateBuffered>().Org);
        ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // one of two: no flush yet
        Answer(first["food"], 2);
        Journal<UpdateBuffered>();
        var v1 = Journal<RoundCompleted>();
        Assert.Equal(1, v1.Summary.Round);
        Assert.Equal(103, Total(v1));
        Assert.Equal([("animal", 0, 1.0), ("food", 0, 1.0)], v1.Summary.Buffer!.Contributions.Select(c => (c.Org, c.Staleness, c.Weight)));
        // The flushed parties train again from version 1; artifact, still on version 0, trains on.
        var second = Dispatched(2);
        Assert.Equal(["animal", "food"], second.Keys.Order());
        Assert.All(second.Values, w => Assert.Equal(1, w.Dispatch.BaseVersion));
        // A late update from version 0 counts (1 + 1)^-0.5.
        Answer(first["artifact"], 4);
        Journal<UpdateBuffered>();
        Answer(second["food"], 8);
        Journal<UpdateBuffered>();
        var v2 = Journal<RoundCompleted>();
        Assert.Equal(2, v2.Summary.Round);
        Assert.Equal([("artifact", 0, 1), ("food", 1, 0)], v2.Summary.Buffer!.Contributions.Select(c => (c.Org, c.BaseVersion, c.Staleness)));
        Assert.Equal(103 + 4 / Math.Sqrt(2) + 8, Total(v2), 9);
    }

    [Fact]
    public void Under_central_dp_a_homo_peft_flush_clips_and_noises_its_updates_and_is_charged_as_one_step_over_every_party()
    {
        var g = FederationFixture.Prepare();
        var spec = Job("dp", buffer: 2) with { Algorithm = new AlgorithmSpec(Training.Algorithms.HomoPeft.HomoPeftAlgorithm.AlgorithmName, new Dictionary<string, string>()) };
        spec = spec with { ModelPath = g.Model, Dp = spec.Dp with { Mode = DpMode.Central, NoiseMultiplier = 1.0, ClipNorm = 0.01 } };
        var prepared = ActorSpecs.Algorithms.For(spec).Server.Prepare(new ServerContext(spec, _arbiterStore, g.Model, _ => { }));
        Buffer(prepared.Spec, state: prepared.Initial, modelPath: g.Model);
        var work = Dispatched(3);
        byte[] Delta(float value)
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            var global = SafeTensors.FromBytes(_arbiterStore.Read(prepared.Initial.Get(AlgorithmState.Global)), "global");
            return SafeTensors.ToBytes(global.ToDictionary(kv => kv.Key, kv => TorchSharp.torch.full_like(kv.Value, value)));
        }
        Answer(work["animal"], Delta(1e-3f));
        Journal<UpdateBuffered>();
        Answer(work["food"], Delta(-1e-3f));
        Journal<UpdateBuffered>();
        var flush = Journal<RoundCompleted>();
        // Each update was clipped to C = 0.01 and noised (z = 1) on the sum of two: one Gaussian step over every party.
        Assert.Equal(new RoundPrivacy(1.0, 1.0, 0.01, double.NaN, spec.Dp.Delta), flush.Summary.Privacy);
        Assert.Equal(0.01, flush.Summary.Metrics["dp.clip"]);
        Assert.Equal(0.01, flush.Summary.Metrics["dp.noise_std"], 12);
        Assert.Equal(2, flush.Summary.Metrics["dp.contributors"]);
        Assert.NotEqual(prepared.Initial.Get(AlgorithmState.Global), flush.State.Get(AlgorithmState.Global));
    }

    [Fact]
    public void An_update_staler_than_max_staleness_is_refused_by_name_and_its_party_trains_again_at_once_from_the_newest_version()
    {
        var spec = Job("stale", buffer: 2, staleness: 0);
        Buffer(spec);
        var first = Dispatched(3);
        Answer(first["animal"], 1);
        Journal<UpdateBuffered>();
        Answer(first["food"], 1);
        Journal<UpdateBuffered>();
        Journal<RoundCompleted>();
        Dispatched(2);
        Answer(first["artifact"], 1000);
        var dropped = Journal<UpdateDropped>();
        Assert.Equal(("artifact", first["artifact"].Dispatch.UpdateId), (dropped.Org, dropped.UpdateId));
        Assert.Equal("stale: trained from version 0, the global is at version 1 (staleness 1 > schedule.buffered.max-staleness 0)", dropped.Reason);
        // No retry delay: it trained, only too slowly.
        var again = Dispatched();
        Assert.Equal(("artifact", 1), (again.Dispatch.Org, again.Dispatch.BaseVersion));
    }

    [Fact]
    public void A_party_that_crashes_mid_training_loses_only_its_work_in_flight_and_is_asked_again_once_back_and_after_the_retry_delay()
    {
        var spec = Job("crash", buffer: 2);
        Buffer(spec);
        var first = Dispatched(3);
        Answer(first["animal"], 1);
        Journal<UpdateBuffered>();
        // food's node dies mid-training: after the absent grace its work is dropped, animal's buffered update stays.
        _presence.Leave("food");
        var dropped = JournalAfter<UpdateDropped>(TimeSpan.FromSeconds(1));
        Assert.Equal("food", dropped.Org);
        Assert.Contains("no node of this organization", dropped.Reason);
        Answer(first["artifact"], 2);
        Journal<UpdateBuffered>();
        var v1 = Journal<RoundCompleted>();
        Assert.Equal(["animal", "artifact"], v1.Summary.Buffer!.Contributions.Select(c => c.Org));
        Assert.Equal(103, Total(v1));
        // The flushed parties train on; food is not asked while it has no node.
        Assert.Equal(["animal", "artifact"], Dispatched(2).Keys.Order());
        _presence.Absent.Remove("food");
        ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(Retry);
        var back = Dispatched();
        Assert.Equal(("food", 1), (back.Dispatch.Org, back.Dispatch.BaseVersion));
    }

    [Fact]
    public void Stopping_cancels_every_partys_work_in_flight()
    {
        var spec = Job("stop");
        var buffer = Buffer(spec);
        var work = Dispatched(3);
        Watch(buffer);
        buffer.Tell(new UpdateBuffer.Stop("the job was cancelled"));
        var cancelled = Enumerable.Range(0, 3).Select(_ => _parties.FishForMessage<CancelWork>(_ => true, Wait)).ToList();
        Assert.Equal(work.Values.Select(w => w.Request.Id).OrderBy(i => i.Round), cancelled.Select(c => c.Id).OrderBy(i => i.Round));
        ExpectTerminated(buffer, Wait);
    }

    [Fact]
    public void Resumed_from_the_journal_it_asks_its_work_in_flight_again_under_the_same_ids_and_flushes_what_was_buffered()
    {
        var spec = Job("resume", buffer: 2);
        Buffer(spec);
        var first = Dispatched(3);
        Answer(first["animal"], 1);
        Journal<UpdateBuffered>();
        Watch(LastSender);
        Sys.Stop(LastSender);
        ExpectTerminated(LastSender, Wait);
        // A new incarnation from the ledger the journal folds to: the two in flight are asked again, never given new ids.
        var ledger = _journal.Aggregate(BufferLedger.Empty, (l, e) => l.Apply(e));
        Assert.Equal((1, 2), (ledger.Pending.Count, ledger.InFlight.Count));
        _journal.Clear();
        Buffer(spec, ledger);
        var asked = Enumerable.Range(0, 2).Select(_ => (Request: _parties.ExpectMsg<WorkRequest>(Wait), Collector: _parties.LastSender)).ToDictionary(x => x.Request.Org);
        Assert.Equal([first["artifact"].Request.Id, first["food"].Request.Id], asked.Values.Select(a => a.Request.Id).OrderBy(i => i.Round));
        var food = asked["food"];
        Answer((ledger.InFlight[food.Request.Id.Round], food.Request, food.Collector), 2);
        Journal<UpdateBuffered>();
        var v1 = Journal<RoundCompleted>();
        Assert.Equal(["animal", "food"], v1.Summary.Buffer!.Contributions.Select(c => c.Org));
        Assert.Equal(103, Total(v1));
        Assert.Equal([4, 5], Dispatched(2).Values.Select(w => w.Dispatch.UpdateId).Order()); // ids go on after the journal's
    }

    [Fact]
    public void A_buffer_that_cannot_fill_within_the_retry_budget_of_a_round_stalls_naming_each_party()
    {
        var spec = Job("stall", buffer: 3);
        Buffer(spec);
        var work = Dispatched(3);
        Answer(work["animal"], 1);
        Journal<UpdateBuffered>();
        // Nobody else answers: each exchange's deadline drops them, they are asked again, until the bound.
        UpdateBuffer.Stalled? stalled = null;
        for (int i = 0; i < 60 && stalled is null; i++)
        {
            Clock.Advance(TimeSpan.FromSeconds(5));
            while (stalled is null && ReceiveOne(TimeSpan.FromMilliseconds(50)) is { } m)
                if (m is UpdateBuffer.Stalled st) stalled = st;
                else if (m is UpdateBuffer.Record r) LastSender.Tell(new UpdateBuffer.Recorded(r.Event));
        }
        Assert.NotNull(stalled);
        Assert.StartsWith("no buffered flush for 120 s (round-deadline × max-round-attempts): the buffer holds 1 of 3 updates at version 0; animal: its update waits in the buffer",
            stalled!.Reason);
        Assert.Contains("artifact: ", stalled.Reason);
    }

    static JobSpec Parse(string job) => JobFile.FromConfig(Akka.Configuration.ConfigurationFactory.ParseString(job), "job.conf", TestSupport.TempDir(), AlgorithmCatalog.BuiltIn);

    const string Minimal = "job { model = m, parties = [{ org = a }, { org = b }, { org = c }, { org = d }]\n";

    [Fact]
    public void The_job_file_reads_the_schedule_and_refuses_what_a_buffered_flush_cannot_honour_naming_the_field_and_why()
    {
        Assert.Equal(ScheduleSpec.Synchronous with { Buffer = 3, MaxStaleness = 4, Weighting = StalenessWeighting.Polynomial }, Parse(Minimal + "}").Schedule);
        var spec = Parse(Minimal + "schedule = buffered, buffered { buffer = 2, max-staleness = 3, staleness-weight = constant, concurrency = 3, server-learning-rate = 0.5 } }");
        Assert.Equal(new ScheduleSpec { Mode = ScheduleMode.Buffered, Buffer = 2, MaxStaleness = 3, Weighting = StalenessWeighting.Constant, Exponent = 0.5, Concurrency = 3, ServerLearningRate = 0.5 },
            spec.Schedule);
        Assert.Equal(spec.Schedule, JobSpec.FromJson(spec.ToJson(), "round trip").Schedule);
        var old = System.Text.Json.Nodes.JsonNode.Parse(spec.ToJson())!.AsObject();
        old.Remove("Schedule");
        Assert.Equal(ScheduleSpec.Synchronous, JobSpec.FromJson(System.Text.Encoding.UTF8.GetBytes(old.ToJsonString()), "a job journaled before schedules").Schedule);

        string Refused(string job) => Assert.ThrowsAny<Exception>(() => Parse(Minimal + "schedule = buffered, " + job + " }")).Message;
        Assert.Contains("job.schedule: 'fedbuf' is not one of sync, buffered", Assert.ThrowsAny<Exception>(() => Parse(Minimal + "schedule = fedbuf }")).Message);
        Assert.Contains("job.buffered.buffer must be between 1 and the 4 parties", Refused("buffered.buffer = 5"));
        Assert.Contains("job.buffered.concurrency 2 parties training at once can never fill a buffer of 3", Refused("buffered { buffer = 3, concurrency = 2 }"));
        Assert.Contains("job.buffered.max-staleness must be ≥ 0", Refused("buffered.max-staleness = -1"));
        Assert.Contains("job.buffered.staleness-weight", Refused("buffered.staleness-weight = linear"));
        Assert.Contains("job.aggregation.algorithm 'median' needs every update of one round", Refused("aggregation.algorithm = median"));
        Assert.Contains("job.secure-aggregation cannot apply under schedule = buffered: SecAgg+ needs its cohort", Refused("secure-aggregation = on"));
        Assert.Contains("job.compression.down cannot apply under schedule = buffered", Refused("compression.down = int8"));
        Assert.Contains("job.aggregation.lora-ranks must be zero-pad", Refused("aggregation.lora-ranks = svd"));
        Assert.Contains("job.sampling does not apply under schedule = buffered", Refused("sampling.count = 2"));
        Assert.Contains("job.schedule = buffered cannot apply: algorithm 'fedkseed'", Refused("algorithm = fedkseed"));
        // The example job stays valid.
        var example = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "buffered.conf")));
        Assert.Equal((ScheduleMode.Buffered, 2, 3), (example.Schedule.Mode, example.Schedule.Buffer, example.Schedule.Concurrency));
        // Central DP runs per flush; int8 up compression with error feedback is the party's own business.
        Assert.Equal(DpMode.Central, Parse(Minimal + "schedule = buffered, compression.up = int8, dp { mode = central, noise-multiplier = 1.0 } }").Dp.Mode);
    }
}
