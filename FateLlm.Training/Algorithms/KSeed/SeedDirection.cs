using FateLlm.Training.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.KSeed;

/// <summary>
/// FedKSeed's perturbation directions, identical on every machine: candidate k of a job has the key
/// κ_k = m(m(seed ⊕ "KSEED") + (k+1)·γ), and element c of its direction (c counts over the model's parameters in
/// <see cref="ParameterLayout"/> order) is z = (Σⱼ hⱼ − 131070)·√(3/(2³²−1)) where h₀…h₃ are the four 16-bit words of
/// m(κ_k + (c+1)·γ), m is SplitMix64's finaliser and γ its golden-ratio increment. That is an Irwin–Hall(4) variable
/// with mean 0 and variance 1 (a Gaussian in shape to kurtosis 2.7, bounded by ±3.46): unlike Box–Muller it needs no
/// log or cos, whose last bits differ between math libraries, so integer arithmetic and one IEEE fp32 product give
/// the same bits on any CPU, runtime, thread count or torch build. The zeroth-order estimator needs only E[z] = 0 and
/// E[zzᵀ] = I. Every update is w ← w + c·z in fp32 with explicit rounding after the product and the sum (no FMA).
/// </summary>
public static class SeedDirection
{
    const ulong Gamma = 0x9E3779B97F4A7C15UL;
    const int Center = 2 * 65535;
    static readonly float Scale = (float)Math.Sqrt(3.0 / (65536.0 * 65536.0 - 1));
    /// <summary>Elements per parallel chunk: small enough to stay in cache while every seed of a batch passes over it.</summary>
    const int Chunk = 1 << 14;

    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The key of candidate seed <paramref name="candidate"/> of a job seeded <paramref name="jobSeed"/>.</summary>
    public static ulong Key(long jobSeed, int candidate) => Mix(Mix((ulong)jobSeed ^ 0x4B53454544UL) + (ulong)(candidate + 1) * Gamma);

    /// <summary>Element <paramref name="counter"/> of the direction keyed <paramref name="key"/>.</summary>
    public static float Value(ulong key, long counter)
    {
        var h = Mix(key + (ulong)(counter + 1) * Gamma);
        var s = (int)(h & 0xFFFF) + (int)((h >> 16) & 0xFFFF) + (int)((h >> 32) & 0xFFFF) + (int)(h >> 48) - Center;
        return (float)(s * Scale);
    }

    /// <summary>The first <paramref name="count"/> elements of a direction.</summary>
    public static float[] Values(ulong key, long count, int threads = 1)
    {
        var z = new float[count];
        Fill(z, key, threads);
        return z;
    }

    /// <summary>Fills <paramref name="z"/> with the direction keyed <paramref name="key"/>.</summary>
    public static void Fill(float[] z, ulong key, int threads) => ForChunks(z.LongLength, threads, (from, to) =>
    {
        for (long i = from; i < to; i++) z[i] = Value(key, i);
    });

    /// <summary>dst ← w + c·z, rounded as <see cref="Apply"/> rounds (dst may be w).</summary>
    public static void Axpy(float[] dst, float[] w, float[] z, float c, int threads) => ForChunks(w.LongLength, threads, (from, to) =>
    {
        for (long i = from; i < to; i++) dst[i] = (float)(w[i] + (float)(c * z[i]));
    });

    /// <summary>
    /// w ← w + c_j·z_j for every (key, c) in order, element by element (so chunking and threads never change a bit):
    /// a local step with one pair, the replay of a round with every seed it touched, ascending.
    /// </summary>
    public static void Apply(float[] w, IReadOnlyList<(ulong Key, float Coefficient)> terms, int threads) => ForChunks(w.LongLength, threads, (from, to) =>
    {
        foreach (var (key, coefficient) in terms)
            for (long i = from; i < to; i++)
                w[i] = (float)(w[i] + (float)(coefficient * Value(key, i)));
    });

    /// <summary>
    /// Runs <paramref name="body"/> over the chunks on the calling thread and threads − 1 threads of its own: never on
    /// thread-pool threads, which the actors of an in-process federation need (pool starvation shows as lost heartbeats).
    /// </summary>
    static void ForChunks(long n, int threads, Action<long, long> body)
    {
        var chunks = ChunkCount(n);
        var next = -1;
        void Work()
        {
            for (int c; (c = Interlocked.Increment(ref next)) < chunks;)
            {
                var (from, to) = Bounds(c, n);
                body(from, to);
            }
        }
        var helpers = Enumerable.Range(0, Math.Clamp(threads, 1, chunks) - 1).Select(_ => new Thread(Work) { IsBackground = true }).ToList();
        helpers.ForEach(t => t.Start());
        Work();
        helpers.ForEach(t => t.Join());
    }

    static int ChunkCount(long n) => (int)((n + Chunk - 1) / Chunk);

    static (long From, long To) Bounds(int chunk, long n) => ((long)chunk * Chunk, Math.Min(n, ((long)chunk + 1) * Chunk));
}

/// <summary>
/// The canonical order of a model's parameters for FedKSeed: every base parameter, fp32, sorted by name (ordinal), so the
/// same checkpoint gives the same element numbering on every node whatever order its modules were registered in.
/// </summary>
public sealed class ParameterLayout
{
    public IReadOnlyList<(string Name, Parameter Param, long Offset)> Entries { get; }
    public long Count { get; }

    ParameterLayout(IReadOnlyList<(string, Parameter, long)> entries, long count)
    {
        Entries = entries;
        Count = count;
    }

    public static ParameterLayout Of(CausalLm model)
    {
        var entries = new List<(string, Parameter, long)>();
        long offset = 0;
        foreach (var (name, p) in model.BaseParameters().OrderBy(p => p.Name, StringComparer.Ordinal))
        {
            if (p.dtype != ScalarType.Float32)
                throw new ModelFormatException($"fedkseed tunes every parameter in fp32; '{name}' is {p.dtype}");
            entries.Add((name, p, offset));
            offset += p.numel();
        }
        // The flat model is one .NET array; a larger model would need a chunked layout.
        if (offset > Array.MaxLength)
            throw new ModelFormatException($"fedkseed holds the model as one flat fp32 array of at most {Array.MaxLength:N0} values; this model has {offset:N0}");
        return new ParameterLayout(entries, offset);
    }

    /// <summary>All parameters as one flat array in layout order.</summary>
    public float[] Read()
    {
        var w = new float[Count];
        foreach (var (_, p, offset) in Entries)
            p.data<float>().CopyTo(w.AsSpan((int)offset, (int)p.numel()));
        return w;
    }

    /// <summary>Writes a flat array (layout order) into the parameters.</summary>
    public void Write(float[] w)
    {
        if (w.LongLength != Count) throw new ArgumentException($"a flat model of {w.LongLength} values for a layout of {Count}");
        using var _ = no_grad();
        foreach (var (_, p, offset) in Entries)
            p.data<float>().CopyFrom(w.AsSpan((int)offset, (int)p.numel()));
    }
}
