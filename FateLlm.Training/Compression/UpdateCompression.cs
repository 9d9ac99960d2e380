using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy.SecureAggregation;
using static TorchSharp.torch;

namespace FateLlm.Training.Compression;

/// <summary>
/// A summable update on its way up, for every plug-in alike: the party flattens its delta in the exchange's vector
/// layout, adds its error-feedback residual, encodes it with the job's scheme and keeps what the encoding lost; the
/// arbiter decodes it back to safetensors before anything else looks at it, so validation, robust rules, DP and the
/// aggregate see real tensors.
/// <para>Payload: <c>"FLCU"</c>, version 1, scheme, 2 reserved bytes, block size (int32), value count (int64), the
/// layout's signature (16 bytes of SHA-256 over its names and shapes), then the scheme's body (<see cref="VectorCodec"/>).</para>
/// </summary>
public static class UpdateCompression
{
    static ReadOnlySpan<byte> Magic => "FLCU"u8;
    const byte Version = 1;
    const int HeaderBytes = 36;

    /// <summary>The 16-byte signature of a layout's names and shapes (not its values: a global changes every round, its layout does not).</summary>
    public static byte[] Signature(IReadOnlyDictionary<string, Tensor> layout)
    {
        var text = new StringBuilder();
        foreach (var name in layout.Keys.Order(StringComparer.Ordinal)) text.Append(name).Append('[').AppendJoin(',', layout[name].shape).Append("]\n");
        return SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString()))[..16];
    }

    public static byte[] Encode(CompressionScheme scheme, IReadOnlyDictionary<string, Tensor> layout, ReadOnlySpan<float> values, int block, double topkFraction)
    {
        var body = VectorCodec.Encode(scheme, values, block, topkFraction);
        var payload = new byte[HeaderBytes + body.Length];
        Magic.CopyTo(payload);
        payload[4] = Version;
        payload[5] = (byte)scheme;
        BinaryPrimitives.WriteInt32LittleEndian(payload.AsSpan(8), block);
        BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(12), values.Length);
        Signature(layout).CopyTo(payload, 20);
        body.CopyTo(payload, HeaderBytes);
        return payload;
    }

    /// <summary>The flat values of an upload the job's options say to expect, or why it is refused (mislabelled, truncated, another layout).</summary>
    public static float[] Decode(byte[] payload, IReadOnlyDictionary<string, Tensor> layout, CompressionOptions options) =>
        Decode(payload, layout, options.Up, options.BlockSize, "sends updates up");

    /// <summary>
    /// The flat values of a payload as its header labels it (the downlink's delta, whose result a digest checks), or
    /// why it does not decode.
    /// </summary>
    public static float[] DecodeAsLabelled(byte[] payload, IReadOnlyDictionary<string, Tensor> layout) => Decode(payload, layout, null, null, "");

    static float[] Decode(byte[] payload, IReadOnlyDictionary<string, Tensor> layout, CompressionScheme? expected, int? expectedBlock, string way)
    {
        var said = expected is { } e ? $"; this job {way} as {CompressionOptions.Name(e)}" : "";
        if (payload.Length < HeaderBytes || !payload.AsSpan(0, 4).SequenceEqual(Magic))
            throw new CompressedUpdateException($"not a compressed update ({payload.Length} bytes without its header){said}");
        if (payload[4] != Version) throw new CompressedUpdateException($"compressed update of version {payload[4]}, this node reads version {Version}");
        var scheme = (CompressionScheme)payload[5];
        if (!Enum.IsDefined(scheme) || (expected is not null && scheme != expected))
            throw new CompressedUpdateException($"update labelled {(Enum.IsDefined(scheme) ? CompressionOptions.Name(scheme) : $"scheme {payload[5]}")}{said.Replace("; this", ", but this")}");
        var block = BinaryPrimitives.ReadInt32LittleEndian(payload.AsSpan(8));
        if (block < 1 || (expectedBlock is not null && block != expectedBlock))
            throw new CompressedUpdateException($"update quantized in blocks of {block}{(expectedBlock is { } b ? $", this job uses {b}" : "")}");
        var count = BinaryPrimitives.ReadInt64LittleEndian(payload.AsSpan(12));
        var length = AdapterVector.Length(layout);
        if (count != length) throw new CompressedUpdateException($"update holds {count} values, the exchange's layout {length}");
        if (!payload.AsSpan(20, 16).SequenceEqual(Signature(layout)))
            throw new CompressedUpdateException("update was encoded against another layout (its tensor names or shapes differ from the exchange's)");
        var values = new float[length];
        VectorCodec.Decode(scheme, payload.AsSpan(HeaderBytes), values, block);
        return values;
    }

    /// <summary>
    /// Party side: the update as it leaves. With error feedback the residual of <paramref name="residualPath"/> is added
    /// before encoding and what the encoding lost is kept there for the next round (see <see cref="ErrorFeedback"/>).
    /// </summary>
    public static byte[] Compress(CompressionOptions options, IReadOnlyDictionary<string, Tensor> layout, byte[] update, string? residualPath, int round)
    {
        float[] values;
        using (var scope = NewDisposeScope())
            values = AdapterVector.Flatten(layout, SafeTensors.FromBytes(update, "local update"), "self");
        var signature = Signature(layout);
        var feedback = options.ErrorFeedback && residualPath is not null ? ErrorFeedback.Load(residualPath, signature, values.Length, round) : null;
        if (feedback is not null)
            for (int i = 0; i < values.Length; i++) values[i] += feedback[i];
        var payload = Encode(options.Up, layout, values, options.BlockSize, options.TopKFraction);
        if (feedback is not null)
        {
            var sent = new float[values.Length];
            VectorCodec.Decode(options.Up, payload.AsSpan(HeaderBytes), sent, options.BlockSize);
            var next = new float[values.Length];
            for (int i = 0; i < next.Length; i++) next[i] = values[i] - sent[i];
            ErrorFeedback.Save(residualPath!, signature, round, feedback, next);
        }
        return payload;
    }

    /// <summary>
    /// Party side, for any exchange: what leaves for <paramref name="update"/> — itself when the exchange declares no
    /// vector layout (<paramref name="layoutPath"/> null) or the job sends fp32, else its compressed payload.
    /// </summary>
    public static byte[] ForUpload(CompressionOptions options, string? layoutPath, byte[] update, string workspace, string exchange, int round)
    {
        if (layoutPath is null || options.Up == CompressionScheme.None) return update;
        using var scope = NewDisposeScope();
        return Compress(options, SafeTensors.Load(layoutPath), update, ErrorFeedback.PathFor(workspace, exchange), round);
    }

    /// <summary>Arbiter side: the decoded update as safetensors bytes in the layout.</summary>
    public static byte[] Restore(CompressionOptions options, IReadOnlyDictionary<string, Tensor> layout, byte[] payload)
    {
        var values = Decode(payload, layout, options);
        using var scope = NewDisposeScope();
        return SafeTensors.ToBytes(AdapterVector.Unflatten(layout, values));
    }

    public static int BodyOffset => HeaderBytes;
}

/// <summary>
/// A party's error-feedback residual for one exchange, in its workspace (so it survives a restart of the party's node):
/// the residual a round started from and the one it left. A round fitted again (a later attempt, or the same one after a
/// restart) starts from the residual its first fit started from, so a retried round never counts its loss twice; a
/// later round starts from what the last one left. A residual of another layout is dropped (the job changed shape).
/// </summary>
public static class ErrorFeedback
{
    static ReadOnlySpan<byte> Magic => "FLEF"u8;
    const int HeaderBytes = 4 + 4 + 8 + 16;

    public static float[] Load(string path, byte[] signature, int length, int round)
    {
        var none = new float[length];
        if (!File.Exists(path)) return none;
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length != HeaderBytes + 8L * length || !bytes.AsSpan(0, 4).SequenceEqual(Magic) || !bytes.AsSpan(16, 16).SequenceEqual(signature)) return none;
        var stored = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4));
        var floats = MemoryMarshal.Cast<byte, float>(bytes.AsSpan(HeaderBytes));
        return stored < round ? floats.Slice(length, length).ToArray() // what the last round left
            : stored == round ? floats[..length].ToArray()              // this round again: where it started
            : none;                                                      // a round from the future: the job was restarted
    }

    public static void Save(string path, byte[] signature, int round, ReadOnlySpan<float> started, ReadOnlySpan<float> left)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var bytes = new byte[HeaderBytes + 4L * (started.Length + left.Length)];
        Magic.CopyTo(bytes);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(4), round);
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(8), started.Length);
        signature.CopyTo(bytes, 16);
        MemoryMarshal.AsBytes(started).CopyTo(bytes.AsSpan(HeaderBytes));
        MemoryMarshal.AsBytes(left).CopyTo(bytes.AsSpan(HeaderBytes + 4 * started.Length));
        AtomicFile.WriteAllBytes(path, bytes); // two fits of one job (a superseded one still finishing) never share a temporary
    }

    /// <summary>Where a party keeps the residual of one exchange of a job.</summary>
    public static string PathFor(string workspace, string exchange) => Path.Combine(workspace, "uplink", exchange + ".residual");
}
