using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>
/// The mask generator: AES-256 in counter mode keyed by a 32-byte seed, expanded to 32-bit words. Parties and the
/// arbiter expand the same seed to the same words, so masks can be added by one side and removed by the other.
/// </summary>
public static class MaskPrg
{
    const int BlockWords = 4, Batch = 1 << 14; // 16 Ki blocks (256 KiB) per AES call

    /// <summary>target[i] += sign · PRG(seed)[i] (mod 2³²).</summary>
    public static void Apply(ReadOnlySpan<byte> seed, Span<uint> target, bool subtract = false)
    {
        if (seed.Length != 32) throw new ArgumentException("mask seeds are 32 bytes");
        using var aes = Aes.Create();
        aes.Key = seed.ToArray();
        var counters = new byte[Batch * 16];
        var stream = new byte[Batch * 16];
        for (long block = 0, offset = 0; offset < target.Length; )
        {
            var blocks = (int)Math.Min(Batch, (target.Length - offset + BlockWords - 1) / BlockWords);
            for (int b = 0; b < blocks; b++) BinaryPrimitives.WriteInt64LittleEndian(counters.AsSpan(b * 16, 8), block + b);
            aes.EncryptEcb(counters.AsSpan(0, blocks * 16), stream.AsSpan(0, blocks * 16), PaddingMode.None);
            var words = MemoryMarshal.Cast<byte, uint>(stream.AsSpan(0, blocks * 16));
            var n = (int)Math.Min(words.Length, target.Length - offset);
            Add(target.Slice((int)offset, n), words[..n], subtract);
            block += blocks;
            offset += n;
        }
    }

    static void Add(Span<uint> dst, ReadOnlySpan<uint> src, bool subtract)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var dv = MemoryMarshal.Cast<uint, Vector<uint>>(dst);
            var sv = MemoryMarshal.Cast<uint, Vector<uint>>(src);
            for (int k = 0; k < dv.Length; k++) dv[k] = subtract ? dv[k] - sv[k] : dv[k] + sv[k];
            i = dv.Length * Vector<uint>.Count;
        }
        for (; i < dst.Length; i++) dst[i] = subtract ? dst[i] - src[i] : dst[i] + src[i];
    }

    public static uint[] Expand(ReadOnlySpan<byte> seed, int length)
    {
        var words = new uint[length];
        Apply(seed, words);
        return words;
    }
}
