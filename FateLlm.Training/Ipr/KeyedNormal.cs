namespace FateLlm.Training.Ipr;

/// <summary>
/// A counter-based generator of N(0, 1) values from a 256-bit key, the same on every machine, runtime and thread
/// count, independent of torch's RNG: value i of stream s is Box–Muller over two uniforms u = (m(a ⊕ m(b ⊕ s·2⁴⁰ ⊕ c)) ≫ 11 + ½)·2⁻⁵³
/// for counters c = 2i, 2i+1, where m is SplitMix64's finaliser and a, b fold the key's four words pairwise. A party
/// regenerates its secret projection matrices from its key file instead of storing them.
/// </summary>
public static class KeyedNormal
{
    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static (ulong A, ulong B) Fold(byte[] key)
    {
        if (key.Length != 32) throw new ArgumentException($"a watermark key has 32 bytes, got {key.Length}");
        var w = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(key);
        return (w[0] ^ w[2], w[1] ^ w[3]);
    }

    static double Uniform(ulong a, ulong b, long stream, ulong counter) =>
        ((Mix(a ^ Mix(b ^ ((ulong)stream << 40) ^ counter)) >> 11) + 0.5) * (1.0 / (1UL << 53));

    /// <summary>Values [0, count) of one stream.</summary>
    public static float[] Values(byte[] key, long stream, long count)
    {
        var (a, b) = Fold(key);
        var v = new float[count];
        for (long i = 0; i < count; i++)
        {
            var u1 = Uniform(a, b, stream, 2 * (ulong)i);
            var u2 = Uniform(a, b, stream, 2 * (ulong)i + 1);
            v[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return v;
    }

    /// <summary>Fair coin flips of one stream (the signature bits): +1 or −1.</summary>
    public static sbyte[] Signs(byte[] key, long stream, int count)
    {
        var (a, b) = Fold(key);
        var s = new sbyte[count];
        for (int i = 0; i < count; i++) s[i] = (sbyte)(Uniform(a, b, stream, (ulong)i) < 0.5 ? -1 : 1);
        return s;
    }

    /// <summary>Uniform integers in [0, n) of one stream (trigger text).</summary>
    public static int[] Choices(byte[] key, long stream, int count, int n)
    {
        var (a, b) = Fold(key);
        return Enumerable.Range(0, count).Select(i => Math.Min(n - 1, (int)(Uniform(a, b, stream, (ulong)i) * n))).ToArray();
    }
}
