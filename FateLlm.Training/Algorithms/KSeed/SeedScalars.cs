using System.Buffers.Binary;

namespace FateLlm.Training.Algorithms.KSeed;

/// <summary>
/// A party's FedKSeed upload: the (candidate index, scalar gradient ĝ) pair of each of its zeroth-order steps, in order.
/// Wire: "KSU1", int32 n, then n × (int32 candidate, fp32 ĝ), little-endian — 8 + 8n bytes.
/// </summary>
public sealed record ScalarUpload(IReadOnlyList<(int Candidate, float Scalar)> Pairs)
{
    const uint Magic = 0x3155534B; // "KSU1"

    public static long MaxBytes(int pairs) => 8 + 8L * pairs;

    public byte[] ToBytes()
    {
        var b = new byte[MaxBytes(Pairs.Count)];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), Pairs.Count);
        for (int i = 0; i < Pairs.Count; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(8 + 8 * i), Pairs[i].Candidate);
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(12 + 8 * i), Pairs[i].Scalar);
        }
        return b;
    }

    /// <summary>Parses and checks an upload: its framing, at most <paramref name="maxPairs"/> pairs, indices below <paramref name="candidates"/>, finite scalars within ±<paramref name="maxAbs"/>.</summary>
    public static ScalarUpload Parse(byte[] b, int candidates, int maxPairs, double maxAbs)
    {
        if (b.Length < 8 || BinaryPrimitives.ReadUInt32LittleEndian(b) != Magic)
            throw new FormatException($"not a fedkseed scalar upload ({b.Length} bytes without the KSU1 header)");
        var n = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(4));
        if (n < 0 || n > maxPairs) throw new FormatException($"{n} (seed, scalar) pairs, more than the {maxPairs} steps asked");
        if (b.LongLength != MaxBytes(n)) throw new FormatException($"{b.Length} bytes for {n} pairs (expected {MaxBytes(n)})");
        var pairs = new (int, float)[n];
        for (int i = 0; i < n; i++)
        {
            var k = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(8 + 8 * i));
            var g = BinaryPrimitives.ReadSingleLittleEndian(b.AsSpan(12 + 8 * i));
            if (k < 0 || k >= candidates) throw new FormatException($"pair {i}: seed index {k} outside the {candidates} candidates");
            if (!float.IsFinite(g) || Math.Abs(g) > maxAbs) throw new FormatException($"pair {i}: scalar {g} is not finite or beyond ±{maxAbs}");
            pairs[i] = (k, g);
        }
        return new ScalarUpload(pairs);
    }
}

/// <param name="Sum">Σ over parties of (data share × Σ of its ĝ for this seed): the replay moves w by −η·Sum·z.</param>
/// <param name="AbsSum">Σ |clip(ĝ)| over every estimate of the round (FedKSeed-Pro's history, kept as sufficient statistics).</param>
/// <param name="Count">How many estimates the round made with this seed.</param>
public readonly record struct SeedEntry(int Candidate, float Sum, float AbsSum, int Count);

/// <summary>
/// One round of the federation's history: per touched candidate, the data-weighted scalar sum and the Pro statistics,
/// ascending by candidate. Every party replays rounds in order from the base model, so this is what defines the global
/// model. Wire: "KSR1", int32 round, int32 n, then n × (int32 candidate, fp32 sum, fp32 abs-sum, int32 count).
/// </summary>
public sealed record RoundScalars(int Round, IReadOnlyList<SeedEntry> Entries)
{
    const uint Magic = 0x3152534B; // "KSR1"

    public byte[] ToBytes()
    {
        var b = new byte[12 + 16 * Entries.Count];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), Round);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(8), Entries.Count);
        for (int i = 0; i < Entries.Count; i++)
        {
            var o = 12 + 16 * i;
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(o), Entries[i].Candidate);
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(o + 4), Entries[i].Sum);
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(o + 8), Entries[i].AbsSum);
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(o + 12), Entries[i].Count);
        }
        return b;
    }

    public static RoundScalars Parse(byte[] b, int candidates, string origin)
    {
        if (b.Length < 12 || BinaryPrimitives.ReadUInt32LittleEndian(b) != Magic)
            throw new FormatException($"{origin}: not a fedkseed round history (no KSR1 header)");
        var round = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(4));
        var n = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(8));
        if (n < 0 || n > candidates || b.LongLength != 12 + 16L * n)
            throw new FormatException($"{origin}: {b.Length} bytes do not hold {n} entries of at most {candidates} candidates");
        var entries = new SeedEntry[n];
        for (int i = 0; i < n; i++)
        {
            var o = 12 + 16 * i;
            var e = new SeedEntry(BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(o)), BinaryPrimitives.ReadSingleLittleEndian(b.AsSpan(o + 4)),
                BinaryPrimitives.ReadSingleLittleEndian(b.AsSpan(o + 8)), BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(o + 12)));
            if (e.Candidate < 0 || e.Candidate >= candidates || (i > 0 && e.Candidate <= entries[i - 1].Candidate))
                throw new FormatException($"{origin}: entry {i} has seed index {e.Candidate} (must ascend within [0, {candidates}))");
            if (!float.IsFinite(e.Sum) || !float.IsFinite(e.AbsSum) || e.AbsSum < 0 || e.Count < 1)
                throw new FormatException($"{origin}: entry {i} (seed {e.Candidate}) has sum {e.Sum}, abs-sum {e.AbsSum}, count {e.Count}");
            entries[i] = e;
        }
        return new RoundScalars(round, entries);
    }

    /// <summary>
    /// The round's aggregate: each party's scalars weighted by its share of the round's samples (the FedKSeed paper;
    /// FATE-LLM sums them, which multiplies the step by the party count), parties in a fixed order.
    /// </summary>
    public static RoundScalars Aggregate(int round, IEnumerable<(string Party, long Samples, ScalarUpload Upload)> uploads, double proClip)
    {
        var list = uploads.OrderBy(u => u.Party, StringComparer.Ordinal).ToList();
        double total = list.Sum(u => (double)u.Samples);
        if (total <= 0) throw new InvalidOperationException($"round {round}: no samples behind the accepted updates");
        var sum = new SortedDictionary<int, (double Sum, double Abs, int Count)>();
        foreach (var (_, samples, upload) in list)
        {
            var share = samples / total;
            foreach (var (k, g) in upload.Pairs)
            {
                var clipped = proClip > 0 ? Math.Clamp(g, -proClip, proClip) : g;
                var s = sum.GetValueOrDefault(k);
                sum[k] = (s.Sum + share * g, s.Abs + Math.Abs(clipped), s.Count + 1);
            }
        }
        return new RoundScalars(round, sum.Select(kv => new SeedEntry(kv.Key, (float)kv.Value.Sum, (float)kv.Value.Abs, kv.Value.Count)).ToArray());
    }

    /// <summary>The replay's terms for this round: (direction key, −η·sum) per touched seed, ascending.</summary>
    public IReadOnlyList<(ulong Key, float Coefficient)> Terms(long jobSeed, double learningRate) =>
        Entries.Select(e => (SeedDirection.Key(jobSeed, e.Candidate), (float)(-learningRate * e.Sum))).ToArray();
}

/// <summary>
/// FedKSeed-Pro: seeds whose estimates were large matter more. ψ_s = mean |clip ĝ| over the seed's history, which
/// starts with one zero (FedKSeed's grad_initial); ψ is min–max normalised and p = softmax(ψ̃), so no seed is more
/// than e times as likely as another. Uniform in round 1 or with Pro off.
/// </summary>
public static class SeedProbabilities
{
    public static double[] Of(int candidates, IEnumerable<RoundScalars> history, bool pro)
    {
        var p = new double[candidates];
        if (!pro) { Array.Fill(p, 1.0 / candidates); return p; }
        var abs = new double[candidates];
        var count = new double[candidates];
        foreach (var r in history)
            foreach (var e in r.Entries) { abs[e.Candidate] += e.AbsSum; count[e.Candidate] += e.Count; }
        for (int k = 0; k < candidates; k++) p[k] = abs[k] / (count[k] + 1);
        double min = p.Min(), max = p.Max();
        double z = 0;
        for (int k = 0; k < candidates; k++) z += p[k] = Math.Exp(max > min ? (p[k] - min) / (max - min) : 0);
        for (int k = 0; k < candidates; k++) p[k] /= z;
        return p;
    }

    /// <summary><paramref name="count"/> draws from <paramref name="p"/> by inverse CDF with a generator of its own (never torch's global one).</summary>
    public static int[] Sample(double[] p, int count, ulong seed)
    {
        var cdf = new double[p.Length];
        double acc = 0;
        for (int k = 0; k < p.Length; k++) cdf[k] = acc += p[k];
        var rng = new SplitMix64(seed);
        var draws = new int[count];
        for (int i = 0; i < count; i++)
        {
            var u = (rng.Next() >> 11) * (1.0 / (1UL << 53)) * acc;
            var j = Array.BinarySearch(cdf, u);
            draws[i] = Math.Min(p.Length - 1, j >= 0 ? j + 1 : ~j);
        }
        return draws;
    }
}
