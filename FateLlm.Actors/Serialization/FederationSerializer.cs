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
/// Adapter chunks as raw bytes behind a 80-byte header (so wire size ≈ payload), and persisted job events as JSON
/// under stable, versioned manifests (<c>Name</c> for schema v1, <c>Name.v2</c> for events whose shape changed), so
/// the journal survives code changes that rename CLR types and journals written by older code still recover.
/// </summary>
public sealed class FederationSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    public const int SerializerId = 7301;
    const string Chunk = "C";

    /// <summary>Today's manifest of every event type. Shapes unchanged since v1 keep their v1 manifest.</summary>
    static readonly Dictionary<Type, string> Manifests = new()
    {
        [typeof(JobSubmitted)] = "JobSubmitted.v2", [typeof(RoundStarted)] = "RoundStarted.v2", [typeof(RoundCompleted)] = "RoundCompleted.v2",
        [typeof(RoundPhaseCompleted)] = "RoundPhaseCompleted.v2",
        [typeof(RoundAttemptFailed)] = nameof(RoundAttemptFailed), [typeof(FinalEvaluationRecorded)] = nameof(FinalEvaluationRecorded),
        [typeof(JobCompleted)] = nameof(JobCompleted), [typeof(JobFailed)] = nameof(JobFailed), [typeof(JobCancelled)] = nameof(JobCancelled),
    };
    static readonly Dictionary<string, Type> Types = Manifests.ToDictionary(kv => kv.Value, kv => kv.Key);
    // Failed parties report NaN losses (named literals); enums are written by name.
    static readonly JsonSerializerOptions Json = JobSpec.JsonOptions;

    public override int Identifier => SerializerId;

    public override string Manifest(object o) => o switch
    {
        ChunkData => Chunk,
        IJobEvent e when Manifests.TryGetValue(e.GetType(), out var m) => m,
        _ => throw new ArgumentException($"{nameof(FederationSerializer)} cannot serialize {o.GetType()}"),
    };

    public override byte[] ToBinary(object o)
    {
        if (o is ChunkData c)
        {
            var digest = Encoding.ASCII.GetBytes(c.Digest);
            if (digest.Length != 64) throw new ArgumentException($"chunk digest '{c.Digest}' is not 64 hex characters");
            var buffer = new byte[64 + 4 + 8 + 4 + c.Data.Length];
            digest.CopyTo(buffer, 0);
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(64), c.Index);
            BinaryPrimitives.WriteInt64LittleEndian(buffer.AsSpan(68), c.TotalSize);
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(76), c.Data.Length);
            c.Data.CopyTo(buffer, 80);
            return buffer;
        }
        Manifest(o);
        return JsonSerializer.SerializeToUtf8Bytes(o, o.GetType(), Json);
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest == Chunk)
        {
            if (bytes.Length < 80) throw new SerializationException($"chunk frame of {bytes.Length} bytes is too short");
            var length = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(76));
            if (length < 0 || 80 + length != bytes.Length) throw new SerializationException($"chunk frame declares {length} bytes but carries {bytes.Length - 80}");
            return new ChunkData(Encoding.ASCII.GetString(bytes, 0, 64), BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(64)),
                BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(68)), bytes.AsSpan(80, length).ToArray());
        }
        if (Types.TryGetValue(manifest, out var type))
            return JsonSerializer.Deserialize(bytes, type, Json) ?? throw new SerializationException($"empty {manifest} event");
        if (JournalSchemaV1.UpcastManifests.Contains(manifest)) return JournalSchemaV1.Upcast(manifest, bytes, Json);
        throw new SerializationException($"unknown manifest '{manifest}'");
    }
}
