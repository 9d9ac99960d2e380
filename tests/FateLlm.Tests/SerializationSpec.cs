using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using FateLlm.Actors;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Serialization;
using FateLlm.Actors.Transfer;
using Xunit;

namespace FateLlm.Tests;

public sealed class SerializationSpec : IDisposable
{
    readonly ActorSystem _system = ActorSystem.Create("serialization-spec",
        ConfigurationFactory.ParseString("akka.actor.provider = local").WithFallback(FederationNode.Reference()));

    public void Dispose() => _system.Terminate().Wait(TimeSpan.FromSeconds(10));

    [Fact]
    public void Every_message_type_is_bound_explicitly_and_nothing_falls_back_to_json()
    {
        var types = typeof(IControlMessage).Assembly.GetTypes()
            .Where(t => t is { IsClass: true, IsAbstract: false } && (typeof(IControlMessage).IsAssignableFrom(t) || typeof(IBulkMessage).IsAssignableFrom(t) || typeof(IJobEvent).IsAssignableFrom(t)))
            .ToList();
        Assert.NotEmpty(types);
        foreach (var t in types)
        {
            var serializer = _system.Serialization.FindSerializerForType(t);
            var expected = typeof(IControlMessage).IsAssignableFrom(t) ? "HyperionSerializer" : nameof(FederationSerializer);
            Assert.True(serializer.GetType().Name == expected, $"{t.Name} is bound to {serializer.GetType().Name}, expected {expected}");
        }
    }

    [Fact]
    public void Events_and_chunks_round_trip_including_the_nan_losses_of_failed_parties()
    {
        var summary = new RoundSummary(2, 1, new string('a', 64), 3.5,
            [new PartyRoundReport("food", false, "no answer", 0, double.NaN, double.NaN, null, 0, 0, 0, 0),
             new PartyRoundReport("animal", true, null, 48, 5.1, 4.2, 4.9, 1000, 2000, 1, 0.7)]);
        var spec = new JobSpec { JobId = "j", ModelPath = "/m", Parties = [new PartySpec("food", "train", "dev")], LoraTargets = ["q_proj"] };
        object[] messages =
        [
            new RoundCompleted(summary, null, DateTime.UtcNow), new JobSubmitted(spec, new string('b', 64), DateTime.UtcNow),
            new ChunkData(new string('c', 64), 3, 1 << 20, [1, 2, 3, 4]),
        ];
        foreach (var m in messages)
        {
            var s = (SerializerWithStringManifest)_system.Serialization.FindSerializerFor(m);
            var back = s.FromBinary(s.ToBinary(m), s.Manifest(m));
            Assert.Equal(m.GetType(), back.GetType());
        }
        var chunk = (ChunkData)messages[2];
        var bytes = ((SerializerWithStringManifest)_system.Serialization.FindSerializerFor(chunk)).ToBinary(chunk);
        Assert.Equal(80 + chunk.Data.Length, bytes.Length); // wire overhead is a fixed 80-byte header
        var restored = (RoundCompleted)((SerializerWithStringManifest)_system.Serialization.FindSerializerFor(messages[0])).FromBinary(
            ((SerializerWithStringManifest)_system.Serialization.FindSerializerFor(messages[0])).ToBinary(messages[0]), nameof(RoundCompleted));
        Assert.True(double.IsNaN(restored.Summary.Parties[0].FirstLoss));
        Assert.Equal(4.2, restored.Summary.Parties[1].LastLoss);
    }

    [Fact]
    public void Control_messages_with_specs_and_actor_refs_survive_hyperion()
    {
        var spec = new JobSpec { JobId = "j", ModelPath = "/m", Parties = [new PartySpec("acme", "train", null)] };
        var msg = new Actors.Parties.TrainRequest("acme", "j", 1, 1, spec, new BlobLocation(new string('d', 64), 10, _system.DeadLetters));
        var s = _system.Serialization.FindSerializerFor(msg);
        var back = (Actors.Parties.TrainRequest)s.FromBinary(s.ToBinary(msg), typeof(Actors.Parties.TrainRequest));
        Assert.Equal("acme", back.Spec.Parties[0].Org);
        Assert.Equal(msg.Global.Digest, back.Global.Digest);
    }
}
