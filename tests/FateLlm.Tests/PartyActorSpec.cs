using Akka.Actor;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy.SecureAggregation;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>
/// A party entity alone: the arbiter's blob server is real (the party fetches the spec and the downloads from it), the
/// echo plug-in runs on the party's real trainer, and the spec plays the round. Each organization name is unique per
/// spec, so the plug-in's per-party scripts (gates, failures) never leak between specs.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class PartyActorSpec : TestKit
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    readonly BlobStore _arbiterStore = new(TestSupport.TempDir()), _partyStore = new(TestSupport.TempDir());
    readonly IActorRef _arbiterBlobs;
    readonly string _org = "p" + Guid.NewGuid().ToString("N")[..8];
    readonly string _data;

    public PartyActorSpec() : base(ActorSpecs.Config())
    {
        _arbiterBlobs = Sys.ActorOf(BlobServer.Props(_arbiterStore));
        _data = Path.Combine(TestSupport.TempDir(), "train.jsonl");
        File.WriteAllText(_data, "{\"content\": \"a\", \"summary\": \"b\"}\n");
    }

    IActorRef Party(FaultInjection? faults = null, IReadOnlyDictionary<string, string>? datasets = null, TransferSettings? transfer = null)
    {
        var partyBlobs = Sys.ActorOf(BlobServer.Props(_partyStore));
        return Sys.ActorOf(PartyActor.Props(_org, new PartyNodeSettings(_org, datasets ?? new Dictionary<string, string> { ["train"] = _data, ["dev"] = _data },
            _partyStore, partyBlobs, transfer ?? TransferSettings.Default, "fate-llm.training-dispatcher", null, TestSupport.TempDir())
        {
            Faults = faults ?? FaultInjection.None, Algorithms = ActorSpecs.Algorithms, TrainerBackoffMin = TimeSpan.FromMilliseconds(50), TrainerBackoffMax = TimeSpan.FromMilliseconds(200),
        }));
    }

    JobSpec Spec(string id, bool secure = false)
    {
        var spec = JobFile.Default(id, "-", [new PartySpec(_org, "train", "dev"), new PartySpec("other-1", "train", null), new PartySpec("other-2", "train", null)],
            TestSupport.TempDir()) with
        {
            Algorithm = new AlgorithmSpec(EchoAlgorithm.AlgorithmName, new Dictionary<string, string> { ["exchanges"] = "1" }),
        };
        return secure ? FederationFixture.Secure(spec, 10) : spec;
    }

    BlobLocation Blob(byte[] bytes)
    {
        var digest = _arbiterStore.Put(bytes);
        return new BlobLocation(digest, bytes.Length, _arbiterBlobs);
    }

    WorkRequest Work(JobSpec spec, int round, int phase = 1, string? layout = null, Dictionary<string, BlobLocation>? downloads = null) =>
        new(_org, new WorkId(spec.JobId, round, 1, phase), Blob(spec.ToJson()), "e1",
            downloads ?? new Dictionary<string, BlobLocation> { [EchoAlgorithm.Total] = Blob(EchoAlgorithm.Write(0)) },
            new Dictionary<string, string>(), layout, [_org, "other-1", "other-2"]);

    [Fact]
    public void Work_is_acknowledged_fitted_and_offered_and_a_re_sent_request_gets_the_same_offer_without_fitting_again()
    {
        var party = Party();
        var work = Work(Spec("happy"), 1);
        party.Tell(work);
        Assert.Equal(work.Id, ExpectMsg<WorkAccepted>(Wait).Id);
        var ready = ExpectMsg<UpdateReady>(Wait);
        Assert.Equal(work.Id, ready.Id);
        Assert.Equal(_org.Length, EchoAlgorithm.Read(_partyStore.Read(ready.Update!.Digest)));
        Assert.True(ready.DownloadBytes > 0);
        party.Tell(work);
        Assert.Equal(ready.Update, ExpectMsg<UpdateReady>(Wait).Update);
        Assert.Equal(1, EchoAlgorithm.FitsOf(_org));
    }

    [Fact]
    public void A_re_ask_during_a_download_answers_with_the_bytes_the_download_has_moved()
    {
        var party = Party(transfer: TransferSettings.Default with { ProgressInterval = TimeSpan.Zero });
        var source = CreateTestProbe();
        var large = new BlobLocation(ContentDigest.Of(new byte[3 << 20]), 3 << 20, source.Ref);
        var work = Work(Spec("downloading"), 1, downloads: new Dictionary<string, BlobLocation> { [EchoAlgorithm.Total] = large });
        party.Tell(work);
        ExpectMsg<WorkAccepted>(Wait);
        // The source serves the first chunk and then nothing: the download stands at one chunk.
        var first = source.FishForMessage<FetchChunk>(c => c.Index == 0, Wait);
        source.Reply(new ChunkData(large.Digest, 0, large.Size, new byte[first.ChunkSize]));
        AwaitAssert(() =>
        {
            party.Tell(work);
            var p = ExpectMsg<WorkAccepted>(Wait).Progress;
            Assert.Equal((WorkProgress.Downloading, (long)first.ChunkSize), (p?.Stage, p?.Bytes ?? 0));
            Assert.True(p!.TotalBytes > large.Size, "the total counts the job's spec too");
        }, Wait, TimeSpan.FromMilliseconds(100));
    }

    [Fact]
    public void A_party_without_the_dataset_the_job_names_refuses_naming_it_and_its_own()
    {
        var party = Party(datasets: new Dictionary<string, string> { ["other"] = _data });
        party.Tell(Work(Spec("no-data"), 1));
        ExpectMsg<WorkAccepted>(Wait);
        Assert.Equal($"party '{_org}' has no dataset 'train' (known: other)", ExpectMsg<UpdateFailed>(Wait).Reason);
    }

    [Fact]
    public void A_download_the_arbiter_no_longer_has_fails_the_work_naming_the_download()
    {
        var party = Party();
        var gone = new BlobLocation(new string('0', 64), 10, _arbiterBlobs);
        party.Tell(Work(Spec("gone"), 1, downloads: new Dictionary<string, BlobLocation> { [EchoAlgorithm.Total] = gone }));
        ExpectMsg<WorkAccepted>(Wait);
        Assert.StartsWith($"download of '{EchoAlgorithm.Total}' failed: the source no longer has blob", ExpectMsg<UpdateFailed>(Wait).Reason);
    }

    [Fact]
    public void Later_work_of_the_same_job_supersedes_work_still_fitting_and_frees_the_trainer()
    {
        var party = Party();
        var spec = Spec("supersede");
        EchoAlgorithm.Hold(_org);
        party.Tell(Work(spec, 1));
        ExpectMsg<WorkAccepted>(Wait);
        AwaitCondition(() => EchoAlgorithm.FitsOf(_org) == 1, Wait); // round 1 is fitting, held at the gate
        var next = Work(spec, 2);
        party.Tell(next);
        ExpectMsg<WorkAccepted>(Wait);
        // Round 1 was cancelled: the trainer is free for round 2, which is then held too until the gate opens.
        AwaitCondition(() => EchoAlgorithm.FitsOf(_org) == 2, Wait);
        Assert.Equal(1, EchoAlgorithm.CancelledOf(_org));
        EchoAlgorithm.Release(_org);
        Assert.Equal(next.Id, ExpectMsg<UpdateReady>(Wait).Id);
        ExpectNoMsg(TimeSpan.FromMilliseconds(300)); // round 1 never answers
    }

    [Fact]
    public void A_request_of_an_earlier_exchange_arriving_late_is_refused_and_never_fitted()
    {
        var party = Party();
        var spec = Spec("late");
        var round2 = Work(spec, 2);
        party.Tell(round2);
        ExpectMsg<WorkAccepted>(Wait);
        Assert.Equal(round2.Id, ExpectMsg<UpdateReady>(Wait).Id);
        var late = Work(spec, 1);
        party.Tell(late);
        var refused = ExpectMsg<UpdateFailed>(Wait);
        Assert.Equal(late.Id, refused.Id);
        Assert.Contains($"already works on the later {round2.Id}", refused.Reason);
        Assert.Equal(1, EchoAlgorithm.FitsOf(_org));
    }

    [Fact]
    public void A_cancelled_work_stops_its_fit_and_the_trainer_serves_other_work()
    {
        var party = Party();
        var held = Work(Spec("cancel-a"), 1);
        EchoAlgorithm.Hold(_org);
        party.Tell(held);
        ExpectMsg<WorkAccepted>(Wait);
        AwaitCondition(() => EchoAlgorithm.FitsOf(_org) == 1, Wait);
        party.Tell(new CancelWork(_org, held.Id));
        AwaitCondition(() => EchoAlgorithm.CancelledOf(_org) == 1, Wait); // the fit held at the gate was cancelled, not finished
        EchoAlgorithm.Release(_org);
        var other = Work(Spec("cancel-b"), 1);
        party.Tell(other);
        ExpectMsg<WorkAccepted>(Wait);
        Assert.Equal(other.Id, ExpectMsg<UpdateReady>(Wait).Id);
    }

    [Fact]
    public void A_trainer_that_throws_is_restarted_after_a_backoff_and_the_next_work_is_served()
    {
        var party = Party();
        var spec = Spec("trainer-crash");
        EchoAlgorithm.Fail(_org, 1);
        party.Tell(Work(spec, 1));
        ExpectMsg<WorkAccepted>(Wait);
        Assert.Equal($"trainer failed: scripted failure of {_org}", ExpectMsg<UpdateFailed>(Wait).Reason);
        var next = Work(spec, 2);
        party.Tell(next); // arrives while the restarted trainer backs off: stashed, not lost
        ExpectMsg<WorkAccepted>(Wait);
        Assert.Equal(next.Id, ExpectMsg<UpdateReady>(Wait).Id);
    }

    [Fact]
    public void A_crash_of_the_work_at_the_fit_point_loses_that_work_only_and_a_re_ask_starts_it_afresh()
    {
        var party = Party(new FaultInjection([new FaultPoint("party.fit", "", 1, 1, FaultAction.Throw, 1)]));
        var work = Work(Spec("fit-crash"), 1);
        // The crash comes after the downloads, however long they take; the re-ask must follow it, not race it.
        EventFilter.Warning(contains: "work crashed").ExpectOne(Wait, () =>
        {
            party.Tell(work);
            ExpectMsg<WorkAccepted>(Wait);
        });
        ExpectNoMsg(TimeSpan.FromMilliseconds(300)); // the crashed work answers nothing; the round will ask again
        party.Tell(work);
        ExpectMsg<WorkAccepted>(Wait);
        Assert.Equal(work.Id, ExpectMsg<UpdateReady>(Wait).Id);
    }

    [Fact]
    public void Secure_work_advertises_keys_instead_of_an_update_answers_each_step_once_and_refuses_steps_for_unknown_work()
    {
        var party = Party();
        var spec = Spec("secure", secure: true);
        byte[] layout;
        using (NewDisposeScope()) layout = Training.IO.SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["w"] = zeros(4) });
        var work = Work(spec, 1, layout: "layout", downloads: new Dictionary<string, BlobLocation>
        {
            [EchoAlgorithm.Total] = Blob(EchoAlgorithm.Write(0)), ["layout"] = Blob(layout),
        });
        party.Tell(work);
        ExpectMsg<WorkAccepted>(Wait);
        var ready = ExpectMsg<UpdateReady>(Wait);
        Assert.Null(ready.Update); // nothing to pull: only masked words ever leave
        Assert.Equal(_org, ready.Keys!.Party);
        var session = RoundStep.Session(spec, work.Id.ToString(), work.Cohort, 1, 1, 1, RoundStep.VectorLength(layout));
        var others = new[] { "other-1", "other-2" }.Select(o => new SecAggClient(session, o).Advertise()).ToArray();
        party.Tell(new SecAggShareRequest(_org, work.Id, others));
        var shares = ExpectMsg<SecAggSharesReady>(Wait);
        party.Tell(new SecAggShareRequest(_org, work.Id, others)); // a re-sent step gets the first answer, not new shares
        Assert.Equal(shares.Bundle.SeedCommitment, ExpectMsg<SecAggSharesReady>(Wait).Bundle.SeedCommitment);
        party.Tell(new SecAggShareRequest(_org, work.Id with { Attempt = 9 }, others));
        Assert.Contains("no secure-aggregation state for this exchange here", ExpectMsg<SecAggStepFailed>(Wait).Reason);
    }

    [Fact]
    public void The_final_evaluation_fetches_the_state_and_answers_with_the_algorithms_figures()
    {
        var party = Party();
        var spec = Spec("evaluate");
        party.Tell(new EvaluateRequest(_org, spec.JobId, Blob(spec.ToJson()),
            new Dictionary<string, BlobLocation> { [EchoAlgorithm.Total] = Blob(EchoAlgorithm.Write(42)) }, new Dictionary<string, string>()));
        var reply = ExpectMsg<EvaluateReply>(Wait);
        Assert.Null(reply.Error);
        Assert.Equal(42, reply.Result!.Loss);
        Assert.Equal(_org, reply.Result.Org);
    }
}
