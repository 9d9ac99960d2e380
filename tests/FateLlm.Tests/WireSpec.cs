using System.Text;
using System.Text.Json.Nodes;
using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using FateLlm.Actors;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Serialization;
using FateLlm.Actors.Transfer;
using FateLlm.Host.Benchmarks;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The wire schema: every cross-node message has a manifest and survives the wire with every field; the committed
/// fixtures of each released protocol version still decode; what a broken or hostile peer sends ends in a typed refusal.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class WireSpec : IDisposable
{
    // A remote provider so that actor paths of other nodes resolve (nothing connects).
    readonly ExtendedActorSystem _system = (ExtendedActorSystem)ActorSystem.Create("wire-spec", ConfigurationFactory.ParseString("""
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp.port = 0
        """).WithFallback(FederationNode.Reference()));

    public void Dispose() => _system.Terminate().Wait(TimeSpan.FromSeconds(10));

    SerializerWithStringManifest Wire => (SerializerWithStringManifest)_system.Serialization.FindSerializerForType(typeof(WorkRequest));

    static IEnumerable<Type> CrossNodeTypes() => typeof(IControlMessage).Assembly.GetTypes()
        .Where(t => t is { IsClass: true, IsAbstract: false } && typeof(IControlMessage).IsAssignableFrom(t));

    static string FixtureDir(WireVersion v) => TestSupport.FixturePath("wire", v.ToString());

    [Fact]
    public void Every_cross_node_message_has_a_manifest_and_round_trips_with_every_field()
    {
        var types = CrossNodeTypes().ToList();
        Assert.True(types.Count >= 50, $"found only {types.Count} message types");
        Assert.Empty(types.Where(t => WireSchema.ManifestOf(t) is null).Select(t => $"{t.Name} has no manifest in WireSchema"));
        Assert.Empty(WireSchema.All.Keys.Where(t => !typeof(IControlMessage).IsAssignableFrom(t)).Select(t => $"{t.Name} is not an IControlMessage"));
        foreach (var type in types)
        {
            Assert.IsType<WireSerializer>(_system.Serialization.FindSerializerForType(type));
            var sample = WireSamples.Of(type, _system);
            var bytes = Wire.ToBinary(sample);
            var back = Wire.FromBinary(bytes, Wire.Manifest(sample));
            Assert.IsType(type, back);
            Assert.True(bytes.AsSpan().SequenceEqual(Wire.ToBinary(back)), $"{type.Name} changed on the way: {Encoding.UTF8.GetString(bytes)}");
            var json = JsonNode.Parse(bytes)!.AsObject();
            foreach (var property in type.GetProperties().Where(p => p.GetCustomAttributes(typeof(System.Text.Json.Serialization.JsonIgnoreAttribute), true).Length == 0))
                Assert.True(json.ContainsKey(property.Name), $"{type.Name}.{property.Name} is not on the wire");
        }
    }

    [Fact]
    public void Messages_between_nodes_never_reach_a_serializer_that_reads_type_names()
    {
        // Hyperion (-5) and Akka's Newtonsoft default (1) are not registered: a payload under their identifiers is refused unread.
        foreach (var id in new[] { -5, 1 })
            Assert.Contains($"[{id}]", Assert.ThrowsAny<Exception>(() => _system.Serialization.Deserialize("{}"u8.ToArray(), id, "System.Object")).Message);
        // The fallback for unbound types refuses both ways instead of writing type names.
        var fallback = _system.Serialization.FindSerializerForType(typeof(Uri));
        Assert.IsType<NoSchemaSerializer>(fallback);
        Assert.Contains("no wire schema", Assert.Throws<ArgumentException>(() => fallback.ToBinary(new Uri("http://x"))).Message);
        Assert.Throws<WireRefusal>(() => fallback.FromBinary("{\"$type\":\"System.Diagnostics.Process, System\"}"u8.ToArray(), typeof(object)));
    }

    [Fact]
    public void Fixtures_of_every_released_protocol_version_still_decode()
    {
        var current = FixtureDir(WireSchema.Version);
        if (Environment.GetEnvironmentVariable("FATE_LLM_WRITE_WIRE_FIXTURES") is { Length: > 0 } repo)
        {
            // Run once per protocol release with the repository's fixture folder: FATE_LLM_WRITE_WIRE_FIXTURES=tests/FateLlm.Tests/Fixtures
            var dir = Directory.CreateDirectory(Path.Combine(repo, "wire", WireSchema.Version.ToString())).FullName;
            foreach (var (type, manifest) in WireSchema.All)
                File.WriteAllBytes(Path.Combine(dir, manifest + ".json"), Wire.ToBinary(WireSamples.Of(type, _system)));
        }
        Assert.Empty(WireSchema.All.Values.Where(m => !File.Exists(Path.Combine(current, m + ".json"))).Select(m => $"no fixture for {m} in {current}"));
        var files = Directory.GetDirectories(TestSupport.FixturePath("wire")).SelectMany(Directory.GetFiles).ToList();
        foreach (var file in files)
        {
            var manifest = Path.GetFileNameWithoutExtension(file);
            var fixture = File.ReadAllBytes(file);
            var decoded = Wire.FromBinary(fixture, manifest);
            // What the old version wrote is still there when this version writes the message again.
            var again = JsonNode.Parse(Wire.ToBinary(decoded))!;
            Assert.True(Contains(again, JsonNode.Parse(fixture)!), $"{file}: re-encoded as {again.ToJsonString()}");
        }
        Assert.True(files.Count >= WireSchema.All.Count);
    }

    /// <summary>Whether <paramref name="whole"/> holds every field of <paramref name="part"/> with the same value (new fields may be added).</summary>
    static bool Contains(JsonNode? whole, JsonNode? part) => (whole, part) switch
    {
        (JsonObject w, JsonObject p) => p.All(kv => w.TryGetPropertyValue(kv.Key, out var v) && Contains(v, kv.Value)),
        (JsonArray w, JsonArray p) => w.Count == p.Count && w.Zip(p).All(x => Contains(x.Item1, x.Item2)),
        _ => JsonNode.DeepEquals(whole, part),
    };

    WireRefusal Refused(string json, string manifest) => Assert.Throws<WireRefusal>(() => Wire.FromBinary(Encoding.UTF8.GetBytes(json), manifest));

    [Fact]
    public void Unknown_fields_are_skipped_missing_optional_ones_defaulted_and_missing_required_ones_refused_by_name()
    {
        var accepted = (WorkAccepted)Wire.FromBinary("""{"Org":"food","Id":{"JobId":"j","Round":1,"Attempt":1,"Phase":0},"Added":{"in":"2.0"}}"""u8.ToArray(), "WorkAccepted.v1");
        Assert.Equal("food", accepted.Org);
        Assert.Null(accepted.Progress);
        var cancel = (Actors.Jobs.CancelJob)Wire.FromBinary("""{"JobId":"j"}"""u8.ToArray(), "CancelJob.v1");
        Assert.Equal(Actors.Jobs.CancelJob.ByOperator, cancel.Reason);

        var missing = Refused("""{"Id":{"JobId":"j","Round":1,"Attempt":1,"Phase":0}}""", "WorkAccepted.v1");
        Assert.Contains("WorkAccepted.v1", missing.Message);
        Assert.Contains("Org", missing.Message);
        Assert.Contains("Org", Refused("""{"Org":null,"Id":{"JobId":"j","Round":1,"Attempt":1,"Phase":0}}""", "WorkAccepted.v1").Message);
        Assert.Contains("JobId", Refused("""{"Org":"o","Id":{"Round":1,"Attempt":1,"Phase":0}}""", "WorkAccepted.v1").Message);
    }

    [Fact]
    public void Hostile_payloads_end_in_typed_refusals()
    {
        Assert.Contains("unknown manifest", Refused("{}", "System.Diagnostics.Process, System").Message);
        Assert.Contains("depth", Refused("""{"Org":"o","Unknown":""" + new string('[', 100) + new string(']', 100) + "}", "WorkAccepted.v1").Message);
        Assert.Contains("not an actor path", Refused("""{"Digest":"d","Size":1,"Server":"/etc/passwd"}""", "BlobLocation.v1").Message);
        Assert.Contains("frame limit", Refused("\"" + new string('a', 3 << 20) + "\"", "BlobNotFound.v1").Message);
        // Small enough for a frame, but a list of tiny elements would cost ~20 times its size to decode: refused unread.
        static byte[] Ids(int count) => Encoding.UTF8.GetBytes("{\"JobIds\":[" + string.Join(",", Enumerable.Repeat("\"\"", count)) + "],\"Problem\":null}");
        Assert.Contains("over the frame limit", Assert.Throws<WireRefusal>(() => Wire.FromBinary(Ids(600_000), "JobList.v1")).Message);
        var before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(30_000, ((Actors.Jobs.JobList)Wire.FromBinary(Ids(30_000), "JobList.v1")).JobIds.Length);
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - before, 0, 2 << 20);
        Refused("""{"Digest":"d","Size":"1"}""", "BlobHeld.v1");
        Refused("""{"Org":"o","Id":{"JobId":"j","Round":1,"Attempt":1,"Phase":0},"Step":"Explode","Reason":"r"}""", "SecAggStepFailed.v1");
        Refused("null", "ListJobs.v1");
        Refused("", "ListJobs.v1");
        // A remote actor path comes back as a reference to that node, never anything else.
        var location = (BlobLocation)Wire.FromBinary(Encoding.UTF8.GetBytes($$"""{"Digest":"d","Size":1,"Server":"{{WireSamples.RemotePath}}"}"""), "BlobLocation.v1");
        Assert.Equal(WireSamples.RemotePath, location.Server.Path.ToString());
    }

    [Fact]
    public void A_seeded_sample_of_mutated_payloads_of_every_kind_ends_decoded_or_refused_within_the_frame_limit()
    {
        const int perKind = 140; // 20 of each mutation; `fate-llm bench wire --fuzz 10000` runs the full count
        foreach (var (type, manifest) in WireSchema.All)
        {
            var tally = WireFuzz.Run(Wire, manifest, Wire.ToBinary(WireSamples.Of(type, _system)), perKind, seed: 7);
            Assert.True(tally.Crashed == 0, $"{manifest}: {string.Join("; ", tally.Crashes)}");
            Assert.Equal(perKind, tally.Refused + tally.Decoded);
            Assert.True(tally.Refused > perKind / 2, $"{manifest}: only {tally.Refused} of {perKind} refused");
            Assert.True(tally.MaxAllocated < 2 << 20, $"{manifest}: a decode allocated {tally.MaxAllocated} bytes");
        }
    }
}
