using System.Buffers.Binary;
using System.Runtime.Serialization;
using System.Text;
using System.Text.Json;
using Akka.Actor;
using Akka.Serialization;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Serialization;

/// <summary>
/// Adapter chunks as raw bytes behind an 80–84-byte header (so wire size ≈ payload), and persisted job events as JSON
/// under stable, versioned manifests (<c>Name</c> for schema v1, <c>Name.v2</c> for events whose shape changed), so
/// the journal survives code changes that rename CLR types and journals written by older code still recover.
/// </summary>
public sealed class FederationSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    public const int SerializerId = 7301;
    // "C": a 64-character (SHA-256) digest in a fixed field, what older nodes read; "C2": a length-prefixed digest of any
    // version (b3:…). A chunk of a SHA-256 blob keeps the old frame so a node that only knows it still reads it.
    const string Chunk = "C", ChunkV2 = "C2";

    /// <summary>Today's manifest of every event type. Shapes unchanged since v1 keep their v1 manifest.</summary>
    static readonly Dictionary<Type, string> Manifests = new()
    {
        [typeof(JobSubmitted)] = "JobSubmitted.v2", [typeof(RoundStarted)] = "RoundStarted.v2", [typeof(RoundCompleted)] = "RoundCompleted.v2",
        [typeof(RoundPhaseCompleted)] = "RoundPhaseCompleted.v2",
        [typeof(RoundAttemptFailed)] = nameof(RoundAttemptFailed), [typeof(FinalEvaluationRecorded)] = nameof(FinalEvaluationRecorded),
        [typeof(JobCompleted)] = nameof(JobCompleted), [typeof(JobFailed)] = nameof(JobFailed), [typeof(JobCancelled)] = nameof(JobCancelled),
        [typeof(UpdateDispatched)] = "UpdateDispatched.v1", [typeof(UpdateBuffered)] = "UpdateBuffered.v1", [typeof(UpdateDropped)] = "UpdateDropped.v1",
    };
    static readonly Dictionary<string, Type> Types = Manifests.ToDictionary(kv => kv.Value, kv => kv.Key);
    // Failed parties report NaN losses (named literals); enums are written by name.
    static readonly JsonSerializerOptions Json = JobSpec.JsonOptions;
    const int LegacyDigestLength = 64;

    public override int Identifier => SerializerId;

    public override string Manifest(object o) => o switch
    {
        ChunkData c => c.Digest.Length == LegacyDigestLength ? Chunk : ChunkV2,
        IJobEvent e when Manifests.TryGetValue(e.GetType(), out var m) => m,
        _ => throw new ArgumentException($"{nameof(FederationSerializer)} cannot serialize {o.GetType()}"),
    };

    public override byte[] ToBinary(object o)
    {
        if (o is ChunkData c)
        {
            var digest = Encoding.ASCII.GetBytes(c.Digest);
            if (digest.Length is 0 or > byte.MaxValue) throw new ArgumentException($"chunk digest '{c.Digest}' is not a content digest");
            // The legacy frame has no length byte: the digest fills the first 64 bytes.
            var at = digest.Length == LegacyDigestLength ? 0 : 1;
            var head = at + digest.Length;
            var buffer = new byte[head + 4 + 8 + 4 + c.Data.Length];
            if (at == 1) buffer[0] = (byte)digest.Length;
            digest.CopyTo(buffer, at);
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(head), c.Index);
            BinaryPrimitives.WriteInt64LittleEndian(buffer.AsSpan(head + 4), c.TotalSize);
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(head + 12), c.Data.Length);
            c.Data.CopyTo(buffer, head + 16);
            return buffer;
        }
        Manifest(o);
        return JsonSerializer.SerializeToUtf8Bytes(o, o.GetType(), Json);
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest is Chunk or ChunkV2)
        {
            var (at, digestLength) = manifest == Chunk ? (0, LegacyDigestLength) : (1, bytes.Length > 0 ? bytes[0] : 0);
            var head = at + digestLength;
            if (bytes.Length < head + 16) throw new SerializationException($"chunk frame of {bytes.Length} bytes is too short");
            var length = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(head + 12));
            if (length < 0 || head + 16 + length != bytes.Length)
                throw new SerializationException($"chunk frame declares {length} bytes but carries {bytes.Length - head - 16}");
            return new ChunkData(Encoding.ASCII.GetString(bytes, at, digestLength), BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(head)),
                BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(head + 4)), bytes.AsSpan(head + 16, length).ToArray());
        }
        if (Types.TryGetValue(manifest, out var type))
            return JsonSerializer.Deserialize(bytes, type, Json) ?? throw new SerializationException($"empty {manifest} event");
        if (JournalSchemaV1.UpcastManifests.Contains(manifest)) return JournalSchemaV1.Upcast(manifest, bytes, Json);
        throw new SerializationException($"unknown manifest '{manifest}'");
    }
}
