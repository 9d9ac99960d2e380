using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using FateLlm.Actors;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Serialization;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.HomoPeft;
using FateLlm.Training.Federation;
using Microsoft.Data.Sqlite;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class SerializationSpec : IDisposable
{
    readonly ActorSystem _system = ActorSystem.Create("serialization-spec",
        ConfigurationFactory.ParseString("akka.actor.provider = local").WithFallback(FederationNode.Reference()));

    public void Dispose() => _system.Terminate().Wait(TimeSpan.FromSeconds(10));

    static JobSpec Spec() => JobFile.Default("j", "/m", [new PartySpec("food", "train", "dev")], "/out") with
    {
        Peft = JobFile.Default("j", "/m", [], "/out").Peft with { LoraTargets = ["q_proj"] },
        Algorithm = new AlgorithmSpec("homo-peft", new Dictionary<string, string> { ["x.y"] = "1" }),
    };

    T RoundTrip<T>(T message) where T : notnull
    {
        var s = (SerializerWithStringManifest)_system.Serialization.FindSerializerFor(message);
        return (T)s.FromBinary(s.ToBinary(message), s.Manifest(message));
    }

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
            var expected = typeof(IControlMessage).IsAssignableFrom(t) ? nameof(WireSerializer) : nameof(FederationSerializer);
            Assert.True(serializer.GetType().Name == expected, $"{t.Name} is bound to {serializer.GetType().Name}, expected {expected}");
        }
    }

    [Fact]
    public void Events_and_chunks_round_trip_including_the_nan_losses_of_failed_parties()
    {
        var summary = new RoundSummary(2, 1, new string('a', 64), 3.5,
            [new PartyRoundReport("food", false, "no answer", 0, double.NaN, double.NaN, null, 0, 0, 0, 0),
             new PartyRoundReport("animal", true, null, 48, 5.1, 4.2, 4.9, 1000, 2000, 1, 0.7) { Metrics = new Dictionary<string, double> { ["loss.first"] = 5.1 } }]);
        var state = AlgorithmState.Of(("global", new string('a', 64)), ("server-state", new string('e', 64)));
        var exchange = Exchange.Broadcast("distill", ["animal", "food"], PartyInstruction.Of(new Dictionary<string, string> { ["logits"] = new string('f', 64) },
            new Dictionary<string, string> { ["temperature"] = "2" }));
        var spec = Spec();
        var restored = RoundTrip(new RoundCompleted(summary, state, DateTime.UtcNow));
        Assert.True(double.IsNaN(restored.Summary.Parties[0].FirstLoss));
        Assert.Equal(4.2, restored.Summary.Parties[1].LastLoss);
        Assert.Equal(5.1, restored.Summary.Parties[1].Metrics["loss.first"]);
        Assert.Equal(state.Artifacts, restored.State.Artifacts);
        var submitted = RoundTrip(new JobSubmitted(spec, state, new string('b', 64), DateTime.UtcNow));
        Assert.Equal(spec.ToJson(), submitted.Spec.ToJson());
        var phase = RoundTrip(new RoundPhaseCompleted(3, 1, 1, state, exchange, DateTime.UtcNow));
        Assert.Equal("2", phase.Next.Instructions["food"].Parameters["temperature"]);
        Assert.Equal(["animal", "food"], phase.Next.Parties);
        Assert.Equal(["a", "b"], RoundTrip(new RoundStarted(1, 2, ["a", "b"], DateTime.UtcNow)).Participants);

        var chunk = new ChunkData(new string('c', 64), 3, 1 << 20, [1, 2, 3, 4]);
        Assert.Equal([1, 2, 3, 4], RoundTrip(chunk).Data);
        var serializer = (SerializerWithStringManifest)_system.Serialization.FindSerializerFor(chunk);
        var bytes = serializer.ToBinary(chunk);
        Assert.Equal(80 + chunk.Data.Length, bytes.Length); // wire overhead is a fixed 80-byte header
        Assert.Equal("C", serializer.Manifest(chunk)); // a SHA-256 blob's chunk keeps the frame older nodes read
    }

    [Fact]
    public void A_chunk_of_a_blake3_blob_carries_its_versioned_digest_behind_a_length_byte()
    {
        var chunk = new ChunkData("b3:" + new string('c', 64), 7, 3L << 30, [5, 6, 7]);
        var serializer = (SerializerWithStringManifest)_system.Serialization.FindSerializerFor(chunk);
        var bytes = serializer.ToBinary(chunk);
        Assert.Equal("C2", serializer.Manifest(chunk));
        Assert.Equal(1 + 67 + 16 + 3, bytes.Length);
        var back = Assert.IsType<ChunkData>(serializer.FromBinary(bytes, "C2"));
        Assert.Equal((chunk.Digest, chunk.Index, chunk.TotalSize), (back.Digest, back.Index, back.TotalSize));
        Assert.Equal(chunk.Data, back.Data);
        Assert.Throws<System.Runtime.Serialization.SerializationException>(() => serializer.FromBinary(bytes[..^1], "C2"));
    }

    [Fact]
    public void Events_written_by_the_pre_plug_in_code_are_upcast_to_the_current_schema()
    {
        // The committed journal was written by the code before job.algorithm existed (schema v1).
        using var db = new SqliteConnection($"Data Source={TestSupport.FixturePath("legacy-journal-v1", "journal.db")};Mode=ReadOnly");
        db.Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT manifest, message FROM journal WHERE persistence_id = 'job-legacy-v1' ORDER BY sequence_number";
        var events = new List<object>();
        var serializer = (SerializerWithStringManifest)_system.Serialization.FindSerializerForType(typeof(JobSubmitted));
        using (var r = cmd.ExecuteReader())
            while (r.Read()) events.Add(serializer.FromBinary((byte[])r["message"], r.GetString(0)));

        var submitted = Assert.IsType<JobSubmitted>(events[0]);
        Assert.Equal(HomoPeftAlgorithm.AlgorithmName, submitted.Spec.Algorithm.Name);
        Assert.Equal(3, submitted.Spec.Local.Epochs);
        Assert.Equal(Training.Trainer.LrSchedule.Constant, submitted.Spec.Local.Schedule);
        Assert.Equal(3, submitted.Spec.Round.Quorum);
        Assert.Equal(60, submitted.Spec.Round.DeadlineSeconds);
        Assert.Equal(4, submitted.Spec.Peft.LoraR);
        Assert.True(submitted.Spec.Round.Sampling.SamplesAll(3));
        Assert.Equal("37d3c668813c9b51c21c990370855e4cefd17f27aa3cf3d8fd942ca962459a27", submitted.Initial.Get(HomoPeftAlgorithm.Global));
        Assert.Empty(Assert.IsType<RoundStarted>(events[1]).Participants); // v1 recorded none: every party took part
        var completed = Assert.IsType<RoundCompleted>(events[2]);
        Assert.Equal(completed.Summary.GlobalDigest, completed.State.Get(HomoPeftAlgorithm.Global));
        Assert.Equal("60d95b10b6e140a9626a7058d5038528f2ff80148dc4569b881db56052046509", completed.State.Get(HomoPeftAlgorithm.ServerStateArtifact));
        Assert.IsType<RoundStarted>(events[3]);
        // Rewritten today, the same event carries its v2 manifest.
        Assert.Equal("JobSubmitted.v2", serializer.Manifest(submitted));
    }
}
