using System.Runtime.Serialization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Akka.Actor;
using Akka.Serialization;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Serialization;

/// <summary>A remote payload this node will not decode: the manifest and what was wrong (field, path, size).</summary>
public sealed class WireRefusal(string manifest, string reason, Exception? inner = null)
    : SerializationException($"wire message '{manifest}' refused: {reason}", inner)
{
    public string WireManifest { get; } = manifest;
}

/// <summary>
/// Every control message between nodes, as UTF-8 JSON under the explicit, versioned manifests of <see cref="WireSchema"/>:
/// a peer can make this node decode only the listed records, never a type it names. Unknown fields are skipped, a
/// missing optional field takes its default, a missing required one (a constructor parameter without a default, a
/// <c>required</c> member) or a null where none is allowed is refused naming the field. Payloads beyond the transport's
/// frame limit, nested deeper than the schema can, or with an actor path that does not parse are refused before use.
/// </summary>
public sealed class WireSerializer : SerializerWithStringManifest
{
    public const int SerializerId = 7302;
    // Deeper than any message of the schema (JobSpec inside StartRound is 5 levels); a hostile payload nests far more.
    const int MaxDepth = 16;

    readonly JsonSerializerOptions _json;
    readonly long _frameLimit;

    public WireSerializer(ExtendedActorSystem system) : base(system)
    {
        _json = Options(system);
        _frameLimit = system.Settings.Config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size", 2 << 20) ?? 2 << 20;
    }

    public override int Identifier => SerializerId;

    /// <summary>The JSON rules of the wire; <paramref name="system"/> resolves actor paths.</summary>
    public static JsonSerializerOptions Options(ExtendedActorSystem system) => new(JobSpec.JsonOptions)
    {
        MaxDepth = MaxDepth,
        RespectRequiredConstructorParameters = true,
        RespectNullableAnnotations = true,
        Converters = { new ActorRefConverter(system) },
    };

    public override string Manifest(object o) => WireSchema.ManifestOf(o.GetType())
        ?? throw new ArgumentException($"{o.GetType().FullName} has no wire schema: add it to {nameof(WireSchema)}");

    public override byte[] ToBinary(object o)
    {
        Manifest(o);
        return JsonSerializer.SerializeToUtf8Bytes(o, o.GetType(), _json);
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        var type = WireSchema.TypeOf(manifest) ?? throw new WireRefusal(manifest, "unknown manifest (not a message of this protocol version)");
        if (bytes.Length > _frameLimit) throw new WireRefusal(manifest, $"{bytes.Length} bytes exceed the frame limit of {_frameLimit}");
        try
        {
            if (DecodedSize(bytes) is var size && size > _frameLimit)
                throw new WireRefusal(manifest, $"decoding would allocate about {size} bytes, over the frame limit of {_frameLimit}");
            return JsonSerializer.Deserialize(bytes, type, _json) ?? throw new WireRefusal(manifest, "null message");
        }
        catch (JsonException e) { throw new WireRefusal(manifest, e.Message, e); }
        // Converters and constructors throw these on values that parse but do not fit (an enum out of range, a bad path).
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or ArgumentException or FormatException or OverflowException)
        {
            throw new WireRefusal(manifest, e.Message, e);
        }
    }

    /// <summary>
    /// What decoding <paramref name="json"/> allocates at most, from one allocation-free pass of the reader: a string
    /// its object and UTF-16 characters, a container its object, and every element of a list its slots as the list grows
    /// and is copied out (measured: about 32 bytes). A payload of many tiny elements costs up to ten times its size to
    /// decode; with this bound no decode allocates more than the frame limit (bench wire's worst case).
    /// </summary>
    static long DecodedSize(ReadOnlySpan<byte> json)
    {
        const int PerString = 24, PerContainer = 48, PerScalar = 8, PerListSlot = 32;
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = MaxDepth });
        long size = 0;
        ulong inList = 0; // bit d: the container at depth d is an array (depth ≤ MaxDepth < 64)
        while (reader.Read())
        {
            var listed = reader.TokenType is not (JsonTokenType.EndArray or JsonTokenType.EndObject or JsonTokenType.PropertyName)
                && reader.CurrentDepth > 0 && (inList >> (reader.CurrentDepth - 1) & 1) == 1;
            size += (listed ? PerListSlot : 0) + reader.TokenType switch
            {
                JsonTokenType.String => PerString + 2L * reader.ValueSpan.Length,
                JsonTokenType.StartObject or JsonTokenType.StartArray => PerContainer,
                JsonTokenType.PropertyName or JsonTokenType.EndObject or JsonTokenType.EndArray => 0,
                _ => PerScalar,
            };
            if (reader.TokenType is JsonTokenType.StartArray) inList |= 1UL << reader.CurrentDepth;
            else if (reader.TokenType is JsonTokenType.StartObject) inList &= ~(1UL << reader.CurrentDepth);
        }
        return size;
    }

    /// <summary>
    /// An actor reference as its serialized path (with this node's address when sent from here); read back through the
    /// provider, which yields a remote reference or dead letters, never anything a peer can make run.
    /// </summary>
    sealed class ActorRefConverter(ExtendedActorSystem system) : JsonConverter<IActorRef>
    {
        public override IActorRef Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var path = reader.GetString();
            if (path is null || !ActorPath.TryParse(path, out _)) throw new JsonException($"'{path}' is not an actor path");
            return system.Provider.ResolveActorRef(path);
        }

        public override void Write(Utf8JsonWriter writer, IActorRef value, JsonSerializerOptions options) =>
            writer.WriteStringValue(Akka.Serialization.Serialization.SerializedActorPath(value));
    }
}

/// <summary>
/// Takes the place of Akka's default (Newtonsoft JSON with type names) for everything without a binding: a message of
/// ours that lacks a schema fails when sent, naming its type, and nothing a peer sends under the default's identifier is
/// decoded.
/// </summary>
public sealed class NoSchemaSerializer(ExtendedActorSystem system) : Serializer(system)
{
    /// <summary>Akka passes the settings of the entry it replaces (<c>serialization-settings.json</c>); none apply.</summary>
    public NoSchemaSerializer(ExtendedActorSystem system, Akka.Configuration.Config _) : this(system) { }

    public const int SerializerId = 7303;
    public override int Identifier => SerializerId;
    public override bool IncludeManifest => false;

    public override byte[] ToBinary(object obj) =>
        throw new ArgumentException($"{obj.GetType().FullName} has no wire schema: it cannot cross nodes (add it to {nameof(WireSchema)})");

    public override object FromBinary(byte[] bytes, Type type) =>
        throw new WireRefusal(type?.Name ?? "(none)", "no wire schema (a payload of a serializer this node does not run)");
}
