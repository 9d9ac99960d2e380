using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.IO;

/// <summary>Raised when a safetensors file or buffer is malformed; names the file and tensor.</summary>
public sealed class SafeTensorsFormatException(string message) : FormatException(message);

/// <summary>
/// Reads and writes the safetensors format (8-byte little-endian header length, JSON header, raw little-endian
/// data). Own codec rather than a wrapper: it has to work on in-memory bytes (adapters travel as safetensors
/// between nodes), write the <c>{"format":"pt"}</c> metadata that transformers checks, and widen fp16/bf16
/// checkpoints to fp32 on load.
/// </summary>
public static class SafeTensors
{
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    public static Dictionary<string, Tensor> Load(string path)
    {
        using var stream = File.OpenRead(path);
        return Read(stream, path);
    }

    public static Dictionary<string, Tensor> FromBytes(ReadOnlySpan<byte> bytes, string origin = "<bytes>")
    {
        using var stream = new MemoryStream(bytes.ToArray(), writable: false);
        return Read(stream, origin);
    }

    /// <summary>Names and shapes only, without reading tensor data.</summary>
    public static IReadOnlyDictionary<string, long[]> ReadShapes(string path)
    {
        using var stream = File.OpenRead(path);
        var (entries, _, _) = ReadHeader(stream, path);
        return entries.ToDictionary(e => e.Name, e => e.Shape);
    }

    public static IReadOnlyDictionary<string, string> ReadMetadata(string path)
    {
        using var stream = File.OpenRead(path);
        return ReadHeader(stream, path).Metadata;
    }

    public static Dictionary<string, Tensor> Read(Stream stream, string origin)
    {
        var (entries, _, dataStart) = ReadHeader(stream, origin);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var e in entries.OrderBy(e => e.Begin))
            {
                var length = e.End - e.Begin;
                var raw = new byte[length];
                stream.Seek(dataStart + e.Begin, SeekOrigin.Begin);
                stream.ReadExactly(raw);
                result[e.Name] = Decode(raw, e, origin);
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var tmp = path + ".tmp";
        using (var stream = File.Create(tmp))
            Write(stream, tensors, metadata);
        File.Move(tmp, path, overwrite: true);
    }

    public static byte[] ToBytes(IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var ms = new MemoryStream();
        Write(ms, tensors, metadata);
        return ms.ToArray();
    }

    /// <summary>Writes tensors in name order (deterministic bytes for content addressing) as their own dtype.</summary>
    public static void Write(Stream stream, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var ordered = WriteHeader(stream, tensors.Select(kv => (kv.Key, kv.Value.dtype, kv.Value.shape)).ToList(), metadata);
        foreach (var (name, _, _) in ordered)
        {
            using var scope = NewDisposeScope();
            WriteBytes(stream, tensors[name].detach().cpu().contiguous());
        }
    }

    /// <summary>
    /// The length prefix and JSON header of tensors in name order (deterministic bytes), padded with spaces to an
    /// 8-byte boundary as the reference writer does; returns the order the data must follow.
    /// </summary>
    static List<(string Name, ScalarType DType, long[] Shape)> WriteHeader(Stream stream, IReadOnlyList<(string Name, ScalarType DType, long[] Shape)> layout,
        IReadOnlyDictionary<string, string>? metadata)
    {
        var meta = new JsonObject { ["format"] = "pt" };
        if (metadata != null)
            foreach (var (k, v) in metadata) meta[k] = v;
        var header = new JsonObject { ["__metadata__"] = meta };
        long offset = 0;
        var ordered = layout.OrderBy(l => l.Name, StringComparer.Ordinal).ToList();
        foreach (var (name, dtype, shape) in ordered)
        {
            var bytes = shape.Aggregate(1L, (a, b) => a * b) * ElementSize(dtype, name);
            header[name] = new JsonObject
            {
                ["dtype"] = DTypeName(dtype, name),
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (headerBytes.Length + 7) / 8 * 8;
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
        stream.Write(len);
        stream.Write(headerBytes);
        for (int i = headerBytes.Length; i < padded; i++) stream.WriteByte((byte)' ');
        return ordered;
    }

    const int ChunkBytes = 64 << 20;

    public readonly record struct Entry(string Name, string DType, long[] Shape, long Begin, long End);

    /// <summary>The tensor entries of a file and where its data starts, without reading any tensor data.</summary>
    public static (IReadOnlyList<Entry> Entries, long DataStart) ReadEntries(string path)
    {
        using var stream = File.OpenRead(path);
        var (entries, _, start) = ReadHeader(stream, path);
        return (entries, start);
    }

    public static ScalarType StoredType(Entry e, string origin) => e.DType switch
    {
        "F32" => ScalarType.Float32, "F64" => ScalarType.Float64, "F16" => ScalarType.Float16, "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64, "I32" => ScalarType.Int32, "U8" => ScalarType.Byte, "BOOL" => ScalarType.Bool,
        _ => throw new SafeTensorsFormatException($"{origin}: tensor '{e.Name}' has unsupported dtype {e.DType}"),
    };

    /// <summary>
    /// Reads one tensor's bytes from the file straight into <paramref name="destination"/>'s memory (contiguous, CPU);
    /// when the stored dtype differs, through one transient tensor of the stored dtype and a converting copy. So a
    /// checkpoint loads with at most one tensor held twice, never the whole model.
    /// </summary>
    public static void ReadInto(Microsoft.Win32.SafeHandles.SafeFileHandle file, Entry e, long dataStart, Tensor destination, string origin)
    {
        if (!destination.shape.SequenceEqual(e.Shape))
            throw new SafeTensorsFormatException($"{origin}: tensor '{e.Name}' has shape [{string.Join(",", e.Shape)}] but [{string.Join(",", destination.shape)}] is needed");
        var stored = StoredType(e, origin);
        using var _ = no_grad();
        if (stored == destination.dtype && destination.is_contiguous() && destination.device_type == DeviceType.CPU)
        {
            ReadBytes(file, dataStart + e.Begin, e.End - e.Begin, destination, origin, e.Name);
            return;
        }
        using var staging = empty(e.Shape, stored);
        ReadBytes(file, dataStart + e.Begin, e.End - e.Begin, staging, origin, e.Name);
        destination.copy_(staging);
    }

    /// <summary>One tensor as stored (its own dtype and shape), read from the file into a new tensor the caller owns.</summary>
    public static Tensor ReadStored(Microsoft.Win32.SafeHandles.SafeFileHandle file, Entry e, long dataStart, string origin)
    {
        var t = empty(e.Shape, StoredType(e, origin));
        ReadInto(file, e, dataStart, t, origin);
        return t;
    }

    // Straight into the tensor's memory, in slices of at most 64 MiB (a span's length is an int).
    static void ReadBytes(Microsoft.Win32.SafeHandles.SafeFileHandle file, long offset, long length, Tensor target, string origin, string name)
    {
        using var flat = target.view(-1);
        long perChunk = ChunkBytes / target.ElementSize, n = flat.shape[0], elementSize = target.ElementSize;
        for (long at = 0; at < n; at += perChunk)
        {
            using var slice = flat.narrow(0, at, Math.Min(perChunk, n - at));
            var span = slice.bytes;
            var filled = 0;
            while (filled < span.Length)
            {
                var read = RandomAccess.Read(file, span[filled..], offset + at * elementSize + filled);
                if (read <= 0) throw new SafeTensorsFormatException($"{origin}: tensor '{name}' is cut short at byte {offset + at * elementSize + filled} of {offset + length}");
                filled += read;
            }
        }
    }

    /// <summary>
    /// Writes a safetensors file whose tensors are produced one at a time (the header needs only names, dtypes and
    /// shapes): a checkpoint larger than memory can be written without holding it. Where <paramref name="produce"/>
    /// returns null, <paramref name="copy"/> writes that tensor's bytes itself (unchanged bytes of another file).
    /// </summary>
    public static void WriteStreaming(string path, IReadOnlyList<(string Name, ScalarType DType, long[] Shape)> layout, Func<string, Tensor?> produce,
        Action<string, Stream>? copy = null)
    {
        var tmp = path + ".tmp";
        using (var stream = File.Create(tmp))
        {
            foreach (var (name, dtype, shape) in WriteHeader(stream, layout, null))
            {
                using var t = produce(name);
                if (t is null)
                {
                    (copy ?? throw new InvalidOperationException($"tensor '{name}' was not produced and there is nothing to copy it from"))(name, stream);
                    continue;
                }
                if (t.dtype != dtype || !t.shape.SequenceEqual(shape))
                    throw new InvalidOperationException($"tensor '{name}' was produced as {t.dtype} [{string.Join(",", t.shape)}], not {dtype} [{string.Join(",", shape)}]");
                using var c = t.contiguous();
                WriteBytes(stream, c);
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>One tensor's bytes copied unchanged from <paramref name="file"/> into <paramref name="to"/>, through one
    /// pooled buffer: no tensor is made (a merged export passes most of a base through so). The buffer stays in a core's
    /// cache: copying 2.4 GB took 1.8-2.0 s through 64-256 KiB, 2.3-6 s through 1 MiB and 5-9 s through 8 MiB here.</summary>
    public static void CopyStored(Microsoft.Win32.SafeHandles.SafeFileHandle file, Entry e, long dataStart, Stream to, string origin)
    {
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(256 << 10);
        try
        {
            for (long at = 0, length = e.End - e.Begin; at < length;)
            {
                var n = RandomAccess.Read(file, buffer.AsSpan(0, (int)Math.Min(buffer.Length, length - at)), dataStart + e.Begin + at);
                if (n <= 0) throw new SafeTensorsFormatException($"{origin}: tensor '{e.Name}' is cut short at byte {dataStart + e.Begin + at} of {dataStart + e.End}");
                to.Write(buffer, 0, n);
                at += n;
            }
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buffer); }
    }

    static void WriteBytes(Stream stream, Tensor t)
    {
        using var flat = t.view(-1);
        long perChunk = ChunkBytes / t.ElementSize, n = flat.shape[0];
        for (long at = 0; at < n; at += perChunk)
        {
            using var slice = flat.narrow(0, at, Math.Min(perChunk, n - at));
            stream.Write(slice.bytes);
        }
    }

    static (List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart) ReadHeader(Stream stream, string origin)
    {
        Span<byte> len = stackalloc byte[8];
        if (stream.Read(len) != 8) throw new SafeTensorsFormatException($"{origin}: too short to be a safetensors file");
        var n = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (n == 0 || n > MaxHeaderBytes || (long)n > stream.Length - 8)
            throw new SafeTensorsFormatException($"{origin}: header length {n} is invalid for a {stream.Length}-byte file");
        var headerBytes = new byte[n];
        stream.ReadExactly(headerBytes);
        JsonObject header;
        try { header = JsonNode.Parse(headerBytes)?.AsObject() ?? throw new JsonException("null header"); }
        catch (JsonException e) { throw new SafeTensorsFormatException($"{origin}: header is not valid JSON ({e.Message})"); }
        var dataStart = 8 + (long)n;
        var dataLength = stream.Length - dataStart;
        var metadata = new Dictionary<string, string>();
        var entries = new List<Entry>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject mo)
                    foreach (var (k, v) in mo) metadata[k] = v?.ToString() ?? "";
                continue;
            }
            try
            {
                var o = node!.AsObject();
                var dtype = o["dtype"]!.GetValue<string>();
                var shape = o["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                var offs = o["data_offsets"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                if (offs.Length != 2 || offs[0] < 0 || offs[1] < offs[0] || offs[1] > dataLength)
                    throw new SafeTensorsFormatException($"{origin}: tensor '{name}' has data offsets outside the file");
                var expected = shape.Aggregate(1L, (a, b) => a * b) * ElementSize(dtype, name);
                if (expected != offs[1] - offs[0])
                    throw new SafeTensorsFormatException($"{origin}: tensor '{name}' ({dtype} [{string.Join(",", shape)}]) needs {expected} bytes but spans {offs[1] - offs[0]}");
                entries.Add(new Entry(name, dtype, shape, offs[0], offs[1]));
            }
            catch (Exception e) when (e is not SafeTensorsFormatException)
            {
                throw new SafeTensorsFormatException($"{origin}: tensor '{name}' has a malformed header entry ({e.Message})");
            }
        }
        return (entries, metadata, dataStart);
    }

    static Tensor Decode(byte[] raw, Entry e, string origin)
    {
        var t = e.DType switch
        {
            "F32" => tensor(Cast<float>(raw), e.Shape),
            "F64" => tensor(Cast<double>(raw), e.Shape),
            "I64" => tensor(Cast<long>(raw), e.Shape),
            "I32" => tensor(Cast<int>(raw), e.Shape),
            "U8" => tensor(raw, e.Shape),
            "BOOL" => tensor(raw.Select(b => b != 0).ToArray(), e.Shape),
            "F16" => tensor(Cast<Half>(raw).Select(h => (float)h).ToArray(), e.Shape),
            "BF16" => tensor(BFloat16ToFloat(raw), e.Shape),
            _ => throw new SafeTensorsFormatException($"{origin}: tensor '{e.Name}' has unsupported dtype {e.DType}"),
        };
        return t;
    }

    static T[] Cast<T>(byte[] raw) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(raw).ToArray();

    static float[] BFloat16ToFloat(byte[] raw)
    {
        var result = new float[raw.Length / 2];
        for (int i = 0; i < result.Length; i++)
            result[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(2 * i)) << 16);
        return result;
    }

    static string DTypeName(ScalarType t, string name) => t switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.Float64 => "F64",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new SafeTensorsFormatException($"tensor '{name}': dtype {t} cannot be written to safetensors"),
    };

    static long ElementSize(ScalarType t, string name) => ElementSize(DTypeName(t, name), name);

    static long ElementSize(string dtype, string name) => dtype switch
    {
        "F64" or "I64" => 8,
        "F32" or "I32" => 4,
        "F16" or "BF16" => 2,
        "U8" or "BOOL" => 1,
        _ => throw new SafeTensorsFormatException($"tensor '{name}' has unsupported dtype {dtype}"),
    };
}
