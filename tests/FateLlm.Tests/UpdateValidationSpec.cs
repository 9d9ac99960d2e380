using Akka.Actor;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.HomoPeft;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>Hostile and broken updates reach a real round: each is refused before it touches the aggregate, and the round goes on.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class UpdateValidationSpec
{
    static Dictionary<string, Tensor> Adapter(float v) => new() { ["m.lora_A.weight"] = full(4, 8, v), ["m.lora_B.weight"] = full(8, 4, v) };

    /// <summary>Each org answers its work request with a fixed blob; "replayer" answers with the ids of an older round.</summary>
    sealed class ScriptedParties : ReceiveActor
    {
        public ScriptedParties(BlobStore store, IActorRef server, IReadOnlyDictionary<string, string> blobs) => Receive<WorkRequest>(r =>
        {
            var digest = blobs[r.Org];
            var id = r.Org == "replayer" ? r.Id with { Round = r.Id.Round - 1 } : r.Id;
            var update = new UpdateReady(r.Org, id, new BlobLocation(digest, store.Size(digest), server), 10, new Dictionary<string, double>(), 0, 0);
            Sender.Tell(update);
            if (r.Org == "honest-1") Sender.Tell(update); // a duplicate submission is idempotent
        });
    }

    [Fact]
    public async Task Hostile_updates_are_rejected_with_party_and_reason_counted_and_the_round_aggregates_the_rest()
    {
        var dir = TestSupport.TempDir();
        var partyStore = new BlobStore(Path.Combine(dir, "parties"));
        var arbiterStore = new BlobStore(Path.Combine(dir, "arbiter"));
        var wrongShape = new Dictionary<string, Tensor> { ["m.lora_A.weight"] = full(4, 9, 0.1f), ["m.lora_B.weight"] = full(8, 4, 0.1f) };
        var blobs = new Dictionary<string, string>
        {
            ["honest-1"] = partyStore.Put(SafeTensors.ToBytes(Adapter(0.1f))),
            ["honest-2"] = partyStore.Put(SafeTensors.ToBytes(Adapter(0.3f))),
            ["honest-3"] = partyStore.Put(SafeTensors.ToBytes(Adapter(0.2f))),
            ["nan"] = partyStore.Put(SafeTensors.ToBytes(Adapter(float.NaN))),
            ["huge"] = partyStore.Put(SafeTensors.ToBytes(Adapter(1e4f))),
            ["shape"] = partyStore.Put(SafeTensors.ToBytes(wrongShape)),
            ["garbage"] = partyStore.Put([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            ["oversized"] = partyStore.Put(new byte[300_000]),
            ["replayer"] = partyStore.Put(SafeTensors.ToBytes(Adapter(0.2f))),
        };
        var globalDigest = arbiterStore.Put(SafeTensors.ToBytes(Adapter(0)));
        using var system = ActorSystem.Create("validation", ConfigurationFactory.ParseString("akka.actor.provider = local\nakka.loglevel = ERROR").WithFallback(FederationNode.Reference()));
        var server = system.ActorOf(BlobServer.Props(partyStore));
        var parties = system.ActorOf(Props.Create(() => new ScriptedParties(partyStore, server, blobs)));
        var spec = JobFile.Default("hostile", "-", blobs.Keys.Select(o => new PartySpec(o, "train", null)).ToArray(), dir);
        spec = spec with
        {
            Round = spec.Round with { Quorum = 3, DeadlineSeconds = 5 }, Validation = new UpdateLimits { MaxNorm = 100, MaxBytes = 200_000 },
        };
        var specDigest = arbiterStore.Put(spec.ToJson());
        var done = await RoundRunner.RunAsync(system, new RoundSettings(arbiterStore, parties, server, TransferSettings.Default, TimeSpan.FromSeconds(30)), new StartRound("hostile", 2, 1, spec, new BlobLocation(specDigest, arbiterStore.Size(specDigest), server),
                AlgorithmState.Of((HomoPeftAlgorithm.Global, globalDigest)), blobs.Keys.Order(StringComparer.Ordinal).ToArray(), null),
            TimeSpan.FromSeconds(30));

        Assert.True(done.Succeeded, done.Reason);
        var rejections = done.Summary!.Rejections;
        Assert.Contains(rejections, r => r.StartsWith("nan:") && r.Contains("non-finite"));
        Assert.Contains(rejections, r => r.StartsWith("huge:") && r.Contains("exceeds the bound 100"));
        Assert.Contains(rejections, r => r.StartsWith("shape:") && r.Contains("m.lora_A.weight") && r.Contains("shape"));
        Assert.Contains(rejections, r => r.StartsWith("garbage:") && r.Contains("safetensors"));
        Assert.Contains(rejections, r => r.StartsWith("oversized:") && r.Contains("exceeds the limit"));
        Assert.Contains(rejections, r => r.StartsWith("replayer:") && r.Contains("replay refused"));
        Assert.DoesNotContain(rejections, r => r.StartsWith("honest"));
        var reports = done.Summary.Parties.ToDictionary(p => p.Org);
        Assert.All(["honest-1", "honest-2", "honest-3"], o => Assert.True(reports[o].Succeeded));
        Assert.All(["nan", "huge", "shape", "garbage", "oversized"], o => Assert.StartsWith("rejected", reports[o].Reason));

        // Only the honest three count: equal samples, so the mean of 0.1, 0.3, 0.2.
        var global = SafeTensors.FromBytes(arbiterStore.Read(done.State!.Get(HomoPeftAlgorithm.Global)));
        Assert.Equal(0.2f, global["m.lora_A.weight"].mean().item<float>(), 5);
        await system.Terminate();
    }
}
