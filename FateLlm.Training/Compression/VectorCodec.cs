using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;

namespace FateLlm.Training.Compression;

/// <summary>Raised for a compressed payload that does not decode; the message says what is wrong with it.</summary>
public sealed class CompressedUpdateException(string message) : Exception(message);

/// <summary>
/// Lossy codecs of a flat fp32 vector, pure functions over spans (little-endian bodies):
/// <list type="bullet">
/// <item>fp16 / bf16: 2 bytes a value, round to nearest even (fp16 saturates at ±65504);</item>
/// <item>int8: per block of B values one fp32 scale absmax/127 and B signed bytes (error ≤ scale/2);</item>
/// <item>nf4: per block one fp32 absmax and B 4-bit indices into QLoRA's NormalFloat code book (error ≤ absmax · the
///   largest half gap of the book, 0.152);</item>
/// <item>top-k: the k = ⌈fraction · n⌉ largest magnitudes exactly, as k fp32 values then k LEB128 index gaps.</item>
/// </list>
/// </summary>
public static class VectorCodec
{
    /// <summary>NF4 (Dettmers et al. 2023, QLoRA; bitsandbytes' <c>create_normal_map</c>): quantiles of N(0, 1) scaled to [−1, 1], with an exact 0.</summary>
    public static ReadOnlySpan<float> Nf4CodeBook =>
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
        -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, 0.24611230611801147f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    /// <summary>The largest distance of a value in [−1, 1] to its nearest NF4 code: half of the widest gap of the book.</summary>
    public static float Nf4HalfGap { get; } = MaxHalfGap();

    const int Nf4Buckets = 512;
    // Midpoints between neighbouring codes (the 16th is +∞), and per bucket of [−1, 1] how many midpoints lie below it:
    // a bucket is narrower than any two midpoints are apart, so the nearest code is that count plus one comparison.
    static readonly float[] Nf4Mids = BuildMids();
    static readonly byte[] Nf4Below = BuildBelow();
    static readonly Vector<float>[] Nf4MidVectors = Nf4Mids.Take(15).Select(m => new Vector<float>(m)).ToArray();

    public static int TopK(long n, double fraction) => n == 0 ? 0 : (int)Math.Clamp(Math.Ceiling(fraction * n - 1e-9), 1, n);

    static int Blocks(int n, int block) => (n + block - 1) / block;

    public static byte[] Encode(CompressionScheme scheme, ReadOnlySpan<float> x, int block, double topkFraction) => scheme switch
    {
        CompressionScheme.None => MemoryMarshal.AsBytes(x).ToArray(),
        CompressionScheme.Fp16 => EncodeFp16(x),
        CompressionScheme.Bf16 => EncodeBf16(x),
        CompressionScheme.Int8 => EncodeInt8(x, block),
        CompressionScheme.Nf4 => EncodeNf4(x, block),
        CompressionScheme.TopK => EncodeTopK(x, TopK(x.Length, topkFraction)),
        _ => throw new ArgumentOutOfRangeException(nameof(scheme), scheme, null),
    };

    /// <summary>Decodes a body of <paramref name="into"/>.Length values; a body of the wrong length or with bad indices is refused.</summary>
    public static void Decode(CompressionScheme scheme, ReadOnlySpan<byte> body, Span<float> into, int block)
    {
        var n = into.Length;
        switch (scheme)
        {
            case CompressionScheme.None:
                Expect(body, 4L * n, scheme);
                MemoryMarshal.Cast<byte, float>(body).CopyTo(into);
                break;
            case CompressionScheme.Fp16:
                Expect(body, 2L * n, scheme);
                var halves = MemoryMarshal.Cast<byte, Half>(body);
                for (int i = 0; i < n; i++) into[i] = (float)halves[i];
                break;
            case CompressionScheme.Bf16:
                Expect(body, 2L * n, scheme);
                var shorts = MemoryMarshal.Cast<byte, ushort>(body);
                for (int i = 0; i < n; i++) into[i] = BitConverter.UInt32BitsToSingle((uint)shorts[i] << 16);
                break;
            case CompressionScheme.Int8:
                DecodeInt8(body, into, block);
                break;
            case CompressionScheme.Nf4:
                DecodeNf4(body, into, block);
                break;
            case CompressionScheme.TopK:
                DecodeTopK(body, into);
                break;
            default:
                throw new CompressedUpdateException($"unknown scheme {(int)scheme}");
        }
    }

    static void Expect(ReadOnlySpan<byte> body, long bytes, CompressionScheme scheme)
    {
        if (body.Length != bytes)
            throw new CompressedUpdateException($"{CompressionOptions.Name(scheme)} body has {body.Length} bytes, {bytes} expected ({(body.Length < bytes ? "truncated" : "trailing bytes")})");
    }

    static byte[] EncodeFp16(ReadOnlySpan<float> x)
    {
        var body = new byte[2L * x.Length];
        var h = MemoryMarshal.Cast<byte, Half>(body.AsSpan());
        for (int i = 0; i < x.Length; i++) h[i] = (Half)Math.Clamp(x[i], -65504f, 65504f);
        return body;
    }

    static byte[] EncodeBf16(ReadOnlySpan<float> x)
    {
        var body = new byte[2L * x.Length];
        var h = MemoryMarshal.Cast<byte, ushort>(body.AsSpan());
        for (int i = 0; i < x.Length; i++)
        {
            var bits = BitConverter.SingleToUInt32Bits(x[i]);
            // Round to nearest even on the dropped 16 bits; a NaN keeps a quiet NaN (the arbiter's validation refuses it).
            h[i] = float.IsNaN(x[i]) ? (ushort)0x7FC0 : (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1)) >> 16);
        }
        return body;
    }

    /// <summary>The largest magnitude of <paramref name="x"/>, or NaN when any value is not finite.</summary>
    static float AbsMax(ReadOnlySpan<float> x)
    {
        // x·0 is 0 for finite x and NaN otherwise: one sum says whether the block is finite (Vector.Max may drop a NaN).
        Vector<float> max = Vector<float>.Zero, probe = Vector<float>.Zero;
        int i = 0;
        for (; i <= x.Length - Vector<float>.Count; i += Vector<float>.Count)
        {
            var v = new Vector<float>(x.Slice(i));
            max = Vector.Max(max, Vector.Abs(v));
            probe += v * Vector<float>.Zero;
        }
        float m = 0, p = Vector.Sum(probe);
        for (int j = 0; j < Vector<float>.Count; j++) m = Math.Max(m, max[j]);
        for (; i < x.Length; i++)
        {
            m = Math.Max(m, Math.Abs(x[i]));
            p += x[i] * 0;
        }
        return p == 0 && float.IsFinite(m) ? m : float.NaN;
    }

    static bool ContainsNaN(ReadOnlySpan<float> x)
    {
        foreach (var v in x) if (float.IsNaN(v)) return true;
        return false;
    }

    static float Scale(ReadOnlySpan<float> block, float levels, int index)
    {
        var absmax = AbsMax(block);
        if (float.IsNaN(absmax)) throw new ArgumentException($"block {index} of the update holds a non-finite value; it cannot be quantized");
        return absmax / levels;
    }

    static byte[] EncodeInt8(ReadOnlySpan<float> x, int block)
    {
        var blocks = Blocks(x.Length, block);
        var body = new byte[4L * blocks + x.Length];
        var scales = MemoryMarshal.Cast<byte, float>(body.AsSpan(0, 4 * blocks));
        var q = MemoryMarshal.Cast<byte, sbyte>(body.AsSpan(4 * blocks));
        Span<int> lanes = stackalloc int[Vector<int>.Count];
        for (int b = 0; b < blocks; b++)
        {
            var start = b * block;
            var seg = x.Slice(start, Math.Min(block, x.Length - start));
            var scale = scales[b] = Scale(seg, 127f, b);
            var inv = scale > 0 ? 1f / scale : 0f;
            var into = q.Slice(start, seg.Length);
            int i = 0;
            if (Vector.IsHardwareAccelerated)
            {
                // Round half away from zero (x + ½·sign, truncated); |x·inv| ≤ 127 by the scale, so no clamp is needed.
                var (by, half, sign) = (new Vector<float>(inv), new Vector<float>(0.5f), new Vector<uint>(0x8000_0000u));
                for (; i <= seg.Length - Vector<float>.Count; i += Vector<float>.Count)
                {
                    var y = new Vector<float>(seg.Slice(i)) * by;
                    var rounded = y + Vector.AsVectorSingle(Vector.BitwiseOr(Vector.AsVectorUInt32(half), Vector.BitwiseAnd(Vector.AsVectorUInt32(y), sign)));
                    Vector.ConvertToInt32(rounded).CopyTo(lanes);
                    for (int j = 0; j < lanes.Length; j++) into[i + j] = (sbyte)lanes[j];
                }
            }
            for (; i < seg.Length; i++) into[i] = (sbyte)Math.Clamp(MathF.Round(seg[i] * inv, MidpointRounding.AwayFromZero), -127f, 127f);
        }
        return body;
    }

    static void DecodeInt8(ReadOnlySpan<byte> body, Span<float> into, int block)
    {
        var n = into.Length;
        var blocks = Blocks(n, block);
        Expect(body, 4L * blocks + n, CompressionScheme.Int8);
        var scales = MemoryMarshal.Cast<byte, float>(body[..(4 * blocks)]);
        var q = MemoryMarshal.Cast<byte, sbyte>(body[(4 * blocks)..]);
        for (int b = 0; b < blocks; b++)
        {
            var scale = CheckedScale(scales[b], b);
            var start = b * block;
            var end = Math.Min(n, start + block);
            for (int i = start; i < end; i++) into[i] = q[i] * scale;
        }
    }

    static float CheckedScale(float scale, int index) => float.IsFinite(scale) && scale >= 0 ? scale
        : throw new CompressedUpdateException($"block {index} has scale {scale}; scales are finite and non-negative");

    static byte[] EncodeNf4(ReadOnlySpan<float> x, int block)
    {
        var blocks = Blocks(x.Length, block);
        var body = new byte[4L * blocks + (x.Length + 1) / 2];
        var scales = MemoryMarshal.Cast<byte, float>(body.AsSpan(0, 4 * blocks));
        var packed = body.AsSpan(4 * blocks);
        var codes = new byte[block];
        for (int b = 0; b < blocks; b++)
        {
            var start = b * block;
            var seg = x.Slice(start, Math.Min(block, x.Length - start));
            var absmax = scales[b] = Scale(seg, 1f, b);
            var inv = absmax > 0 ? 1f / absmax : 0f;
            // Whole vectors two codes a byte when the block starts on a byte (an odd block size makes some start mid-byte),
            // the rest one code at a time into the zeroed body.
            var done = (start & 1) == 0 ? Nf4PackVectors(seg, inv, packed[(start >> 1)..]) : 0;
            var rest = seg[done..];
            Nf4Codes(rest, inv, codes);
            for (int i = 0; i < rest.Length; i++)
            {
                var at = start + done + i;
                packed[at >> 1] |= (byte)(codes[i] << ((at & 1) << 2));
            }
        }
        return body;
    }

    /// <summary>Packs whole chunks of 8 vectors' codes into <paramref name="into"/>, two a byte (low nibble first); returns the values done.</summary>
    static int Nf4PackVectors(ReadOnlySpan<float> seg, float inv, Span<byte> into)
    {
        if (!Vector.IsHardwareAccelerated) return 0;
        var lanes = Vector<float>.Count;
        var scale = new Vector<float>(inv);
        int i = 0;
        for (; i + 8 * lanes <= seg.Length; i += 8 * lanes)
        {
            // 8 vectors of codes narrowed to 2 vectors of bytes; each pair of bytes (even, odd) read as one ushort
            // e + 256·o becomes e | o << 4 in its low byte, which the last narrowing keeps.
            var even = Vector.AsVectorUInt16(Nf4Bytes(seg.Slice(i), scale));
            var odd = Vector.AsVectorUInt16(Nf4Bytes(seg.Slice(i + 4 * lanes), scale));
            Vector.Narrow(even | Vector.ShiftRightLogical(even, 4), odd | Vector.ShiftRightLogical(odd, 4)).CopyTo(into.Slice(i >> 1));
        }
        return i;
    }

    static Vector<byte> Nf4Bytes(ReadOnlySpan<float> x, Vector<float> scale)
    {
        var lanes = Vector<float>.Count;
        return Vector.Narrow(Vector.Narrow(Nf4Code(x, scale), Nf4Code(x[lanes..], scale)),
            Vector.Narrow(Nf4Code(x[(2 * lanes)..], scale), Nf4Code(x[(3 * lanes)..], scale)));
    }

    /// <summary>The codes of one vector of values: how many code midpoints lie below each.</summary>
    static Vector<uint> Nf4Code(ReadOnlySpan<float> x, Vector<float> scale)
    {
        var y = new Vector<float>(x) * scale;
        var count = Vector<int>.Zero;
        foreach (var m in Nf4MidVectors) count -= Vector.GreaterThan(y, m); // true is −1
        return Vector.AsVectorUInt32(count);
    }

    /// <summary>Each value's nearest NF4 code once scaled by <paramref name="inv"/>, through the bucket table and one comparison.</summary>
    static void Nf4Codes(ReadOnlySpan<float> seg, float inv, Span<byte> codes)
    {
        var table = Nf4Below;
        var midpoints = Nf4Mids;
        for (int i = 0; i < seg.Length; i++)
        {
            var y = Math.Clamp(seg[i] * inv, -1f, 1f);
            int t = table[Math.Min(Nf4Buckets - 1, (int)((y + 1f) * (Nf4Buckets / 2)))];
            codes[i] = (byte)(t + (y > midpoints[t] ? 1 : 0));
        }
    }

    static void DecodeNf4(ReadOnlySpan<byte> body, Span<float> into, int block)
    {
        var n = into.Length;
        var blocks = Blocks(n, block);
        Expect(body, 4L * blocks + (n + 1) / 2, CompressionScheme.Nf4);
        var scales = MemoryMarshal.Cast<byte, float>(body[..(4 * blocks)]);
        var packed = body[(4 * blocks)..];
        var book = Nf4CodeBook;
        for (int b = 0; b < blocks; b++)
        {
            var scale = CheckedScale(scales[b], b);
            var start = b * block;
            var end = Math.Min(n, start + block);
            for (int i = start; i < end; i++) into[i] = book[(packed[i >> 1] >> ((i & 1) << 2)) & 0xF] * scale;
        }
    }

    static byte[] EncodeTopK(ReadOnlySpan<float> x, int k)
    {
        if (ContainsNaN(x)) throw new ArgumentException("the update holds a NaN; it cannot be sparsified");
        var threshold = KthLargestMagnitude(x, k);
        // Every magnitude above the threshold, then ties at it in index order until k: exactly k values.
        var ties = k - CountAbove(x, threshold);
        using var gaps = new MemoryStream(k * 2);
        var body = new byte[4 + 4L * k];
        BinaryPrimitives.WriteInt32LittleEndian(body, k);
        var values = MemoryMarshal.Cast<byte, float>(body.AsSpan(4));
        int taken = 0, last = -1;
        Span<byte> varint = stackalloc byte[5];
        for (int i = 0; i < x.Length && taken < k; i++)
        {
            var m = MathF.Abs(x[i]);
            if (m > threshold || (m == threshold && ties-- > 0))
            {
                values[taken++] = x[i];
                gaps.Write(varint[..WriteVarint(varint, (uint)(i - last - 1))]);
                last = i;
            }
        }
        var result = new byte[body.Length + gaps.Length];
        body.CopyTo(result, 0);
        gaps.GetBuffer().AsSpan(0, (int)gaps.Length).CopyTo(result.AsSpan(body.Length));
        return result;
    }

    static int CountAbove(ReadOnlySpan<float> x, float threshold)
    {
        int c = 0;
        foreach (var v in x) if (MathF.Abs(v) > threshold) c++;
        return c;
    }

    /// <summary>
    /// The k-th largest |x| by radix selection on the float bits (for non-negative floats the bit patterns order as the
    /// values): two passes of a 2¹⁶-bucket histogram, linear in n, no copy of the vector.
    /// </summary>
    static float KthLargestMagnitude(ReadOnlySpan<float> x, int k)
    {
        var hist = new int[1 << 16];
        foreach (var v in x) hist[(BitConverter.SingleToUInt32Bits(v) & 0x7FFF_FFFF) >> 16]++;
        int remaining = k, high = (1 << 16) - 1;
        for (; high > 0 && hist[high] < remaining; high--) remaining -= hist[high];
        Array.Clear(hist);
        foreach (var v in x)
        {
            var bits = BitConverter.SingleToUInt32Bits(v) & 0x7FFF_FFFF;
            if (bits >> 16 == (uint)high) hist[bits & 0xFFFF]++;
        }
        int low = (1 << 16) - 1;
        for (; low > 0 && hist[low] < remaining; low--) remaining -= hist[low];
        return BitConverter.UInt32BitsToSingle(((uint)high << 16) | (uint)low);
    }

    static int WriteVarint(Span<byte> into, uint value)
    {
        int i = 0;
        while (value >= 0x80)
        {
            into[i++] = (byte)(value | 0x80);
            value >>= 7;
        }
        into[i++] = (byte)value;
        return i;
    }

    static void DecodeTopK(ReadOnlySpan<byte> body, Span<float> into)
    {
        if (body.Length < 4) throw new CompressedUpdateException($"topk body has {body.Length} bytes, too short for its count");
        var k = BinaryPrimitives.ReadInt32LittleEndian(body);
        if (k < 0 || k > into.Length) throw new CompressedUpdateException($"topk body claims {k} values of a vector of {into.Length}");
        if (body.Length < 4 + 4L * k) throw new CompressedUpdateException($"topk body has {body.Length} bytes, its {k} values need {4 + 4L * k} before the indices (truncated)");
        var values = MemoryMarshal.Cast<byte, float>(body.Slice(4, 4 * k));
        var gaps = body[(4 + 4 * k)..];
        into.Clear();
        long index = -1;
        int at = 0;
        for (int j = 0; j < k; j++)
        {
            uint gap = 0;
            for (int shift = 0; ; shift += 7)
            {
                if (at >= gaps.Length) throw new CompressedUpdateException($"topk indices end after {j} of {k} (truncated)");
                if (shift > 28) throw new CompressedUpdateException($"topk index {j} is not a valid varint");
                var b = gaps[at++];
                gap |= (uint)(b & 0x7F) << shift;
                if (b < 0x80) break;
            }
            index += gap + 1L;
            if (index >= into.Length) throw new CompressedUpdateException($"topk index {index} is outside the vector of {into.Length}");
            into[(int)index] = values[j];
        }
        if (at != gaps.Length) throw new CompressedUpdateException($"topk body has {gaps.Length - at} trailing bytes after its {k} indices");
    }

    static float[] BuildMids()
    {
        var book = Nf4CodeBook;
        var mids = new float[16];
        for (int i = 0; i < 15; i++) mids[i] = (book[i] + book[i + 1]) / 2;
        mids[15] = float.PositiveInfinity;
        return mids;
    }

    static byte[] BuildBelow()
    {
        var below = new byte[Nf4Buckets];
        for (int b = 0; b < Nf4Buckets; b++)
        {
            var lo = -1f + b * (2f / Nf4Buckets);
            below[b] = (byte)Nf4Mids.Count(m => m < lo);
        }
        return below;
    }

    static float MaxHalfGap()
    {
        var book = Nf4CodeBook;
        float max = 0;
        for (int i = 0; i < 15; i++) max = Math.Max(max, (book[i + 1] - book[i]) / 2);
        return max;
    }
}
