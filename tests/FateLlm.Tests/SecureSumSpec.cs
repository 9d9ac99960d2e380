using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>
/// The secure-sum protocol actor alone: a scripted actor plays the three parties with real SecAgg+ clients (each
/// answering every step once, as a party does), so a party can go silent at a step, lie about its name, or have its
/// node leave; virtual time drives re-asks and phase timeouts.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class SecureSumSpec : TestKit
{
    static readonly string[] Orgs = ["animal", "artifact", "food"];
    static readonly TimeSpan Resend = TimeSpan.FromSeconds(1), Phase = TimeSpan.FromSeconds(20), Wait = TimeSpan.FromSeconds(10);
    readonly BlobStore _arbiterStore = new(TestSupport.TempDir()), _partyStore = new(TestSupport.TempDir());
    readonly IActorRef _partyBlobs;
    readonly JobSpec _spec = FederationFixture.Secure(ActorSpecs.EchoJob("secure"), 20);
    readonly WorkId _work = new("secure", 1, 1, 1);
    readonly byte[] _layout;
    readonly Dictionary<string, byte[]> _updates;
    readonly SecAggSession _session;

    public SecureSumSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        _partyBlobs = Sys.ActorOf(BlobServer.Props(_partyStore));
        using (NewDisposeScope())
        {
            _layout = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["w"] = zeros(6) });
            _updates = Orgs.Select((o, i) => (o, SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["w"] = full(6, 0.01f * (i + 1)) })))
                .ToDictionary(x => x.o, x => x.Item2);
        }
        _session = RoundStep.Session(_spec, _work.ToString(), Orgs, 1, 1, 1, RoundStep.VectorLength(_layout));
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    /// <summary>The parties of the protocol. <c>silent</c>: the step at which a party stops answering; <c>impostor</c>: it signs its shares as someone else.</summary>
    sealed class Parties : ReceiveActor
    {
        readonly Dictionary<(string, SecAggStep), object> _answers = new();

        public Parties(Dictionary<string, SecAggClient> clients, IReadOnlyDictionary<string, byte[]> updates, byte[] layout, JobSpec spec, BlobStore store,
            IActorRef server, IReadOnlyDictionary<string, SecAggStep> silentAt, string? impostor, IActorRef asked)
        {
            object Once(ISecAggRequest r, Func<object> answer)
            {
                if (!_answers.TryGetValue((r.Org, r.Step), out var a)) _answers[(r.Org, r.Step)] = a = answer();
                return a;
            }
            ReceiveAny(m =>
            {
                if (m is not ISecAggRequest r) return;
                asked.Tell(r);
                if (silentAt.TryGetValue(r.Org, out var step) && step == r.Step) return;
                var client = clients[r.Org];
                Sender.Tell(Once(r, () => r switch
                {
                    SecAggShareRequest s => new SecAggSharesReady(r.Org, r.Id, impostor == r.Org ? client.ShareKeys(s.Advertised) with { Party = "someone-else" } : client.ShareKeys(s.Advertised)),
                    SecAggMaskRequest mask => Masked(mask),
                    SecAggUnmaskRequest u => new SecAggUnmaskReady(r.Org, r.Id, client.Unmask(u.Survivors)),
                    _ => throw new InvalidOperationException(),
                }));
                object Masked(SecAggMaskRequest mask)
                {
                    var words = RoundStep.MaskedInput(client, updates[r.Org], layout, 10, spec, mask.ClipNorm, clients.Count, mask.Inbox);
                    return new SecAggMaskedReady(r.Org, r.Id, new BlobLocation(store.Put(words), words.Length, server));
                }
            });
        }
    }

    (IActorRef Sum, TestProbe Asked) Run(IReadOnlyDictionary<string, SecAggStep>? silentAt = null, string? impostor = null, IPartyPresence? presence = null)
    {
        var clients = Orgs.ToDictionary(o => o, o => new SecAggClient(_session, o));
        var asked = CreateTestProbe();
        var parties = Sys.ActorOf(Props.Create(() => new Parties(clients, _updates, _layout, _spec, _partyStore, _partyBlobs,
            silentAt ?? new Dictionary<string, SecAggStep>(), impostor, asked.Ref)));
        var keys = clients.ToDictionary(kv => kv.Key, kv => kv.Value.Advertise());
        var settings = new SecureSum.Settings(_session, _work, keys, parties, _arbiterStore, TransferSettings.Default, Resend, Phase, 1.0,
            presence ?? AlwaysPresent.Instance);
        var sum = ChildActorOf(SecureSum.Props(settings), "secure-sum");
        return (sum, asked);
    }

    /// <summary>The unmasked weighted mean, against the plain weighted mean of the contributors' updates.</summary>
    void AssertMeanOf(SecureSumReady ready, params string[] contributors)
    {
        Assert.Equal(contributors, ready.Result.Contributors.Order());
        using var scope = NewDisposeScope();
        var (values, extras) = ready.Result.Decode(ready.Session);
        var layout = SafeTensors.FromBytes(_layout);
        var mean = PrivateAggregation.FromWeightedSum(layout, AdapterVector.Unflatten(layout, values), extras[0])["w"];
        var expected = contributors.Average(o => SafeTensors.FromBytes(_updates[o])["w"][0].item<float>());
        Assert.True(Math.Abs(mean.mean().item<float>() - expected) < 1e-4, $"secure mean {mean.mean().item<float>()} vs {expected}");
    }

    [Fact]
    public void Three_parties_share_mask_and_unmask_and_the_arbiter_learns_only_their_weighted_mean()
    {
        Run();
        var ready = ExpectMsg<SecureSumReady>(Wait);
        Assert.StartsWith("3 keyed, 3 shared, 3 masked, 3 revealed", ready.Summary);
        Assert.Empty(ready.Dropouts);
        Assert.All(Orgs, o => Assert.True(ready.UploadBytes[o] > 0));
        AssertMeanOf(ready, Orgs);
    }

    [Fact]
    public void A_party_silent_at_the_mask_step_is_dropped_at_the_phase_timeout_and_its_masks_are_removed()
    {
        var answered = CreateTestProbe();
        Sys.EventStream.Subscribe(answered.Ref, typeof(SecureAggregationStepAnswered));
        var (_, asked) = Run(silentAt: new Dictionary<string, SecAggStep> { ["food"] = SecAggStep.Mask });
        // Wait until the others' masked inputs are pulled and food has been asked for its own, then let the step time out.
        var masked = new HashSet<string>();
        while (masked.Count < 2) if (answered.ExpectMsg<SecureAggregationStepAnswered>(Wait) is { Step: SecAggStep.Mask } a) masked.Add(a.Org);
        asked.FishForMessage(m => m is SecAggMaskRequest { Org: "food" }, Wait);
        Clock.Advance(Resend);
        Assert.Equal("food", asked.FishForMessage<SecAggMaskRequest>(m => m is SecAggMaskRequest, Wait).Org); // re-asked, still silent
        Clock.Advance(Phase);
        var ready = ExpectMsg<SecureSumReady>(Wait);
        Assert.StartsWith("3 keyed, 3 shared, 2 masked, 2 revealed", ready.Summary);
        Assert.Contains("masks of dropped food removed", ready.Summary);
        Assert.StartsWith("no answer to step 'mask' within 20 s", ready.Dropouts["food"]);
        AssertMeanOf(ready, "animal", "artifact");
    }

    [Fact]
    public void A_party_whose_node_leaves_during_a_step_is_dropped_at_once_without_waiting_for_the_timeout()
    {
        var (sum, asked) = Run(silentAt: new Dictionary<string, SecAggStep> { ["food"] = SecAggStep.Unmask });
        asked.FishForMessage(m => m is SecAggUnmaskRequest { Org: "food" }, Wait);
        sum.Tell(new PartyNodeLeft("food"));
        var ready = ExpectMsg<SecureSumReady>(Wait); // no clock movement needed
        Assert.StartsWith("3 keyed, 3 shared, 3 masked, 2 revealed", ready.Summary);
        Assert.Equal("its node left the cluster during step 'unmask'", ready.Dropouts["food"]);
        AssertMeanOf(ready, Orgs); // food uploaded its masked input: it is in the sum
    }

    [Fact]
    public void A_party_sending_shares_under_another_name_is_dropped_and_the_rest_still_sum()
    {
        Run(impostor: "artifact");
        var ready = ExpectMsg<SecureSumReady>(Wait);
        Assert.Equal("sent shares under another party's name", ready.Dropouts["artifact"]);
        AssertMeanOf(ready, "animal", "food");
    }

    [Fact]
    public void Below_the_threshold_the_sum_fails_naming_the_step_and_the_count()
    {
        var (_, asked) = Run(silentAt: new Dictionary<string, SecAggStep> { ["food"] = SecAggStep.Share, ["artifact"] = SecAggStep.Share });
        for (int i = 0; i < 3; i++) asked.ExpectMsg<SecAggShareRequest>(Wait); // the step has begun, its timer runs
        Clock.Advance(Phase);
        var failed = ExpectMsg<SecureSumFailed>(Wait);
        Assert.Equal($"secure aggregation: only 1 parties shared keys, threshold {_session.Threshold}", failed.Reason);
        Assert.Equal(["artifact", "food"], failed.Dropouts.Keys.Order());
    }
}
