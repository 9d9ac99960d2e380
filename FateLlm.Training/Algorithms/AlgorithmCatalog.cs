using System.Collections.Concurrent;
using FateLlm.Training.Federation;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// The registered algorithms by <c>job.algorithm.name</c>. Built-ins are listed here (one line per paradigm); a test or
/// an embedding application may register more before nodes start. Every node of a federation must register the same.
/// </summary>
public static class AlgorithmCatalog
{
    public const string Default = HomoPeft.HomoPeftAlgorithm.AlgorithmName;

    static readonly ConcurrentDictionary<string, IFederatedAlgorithm> Registered = new(StringComparer.Ordinal)
    {
        [HomoPeft.HomoPeftAlgorithm.AlgorithmName] = new HomoPeft.HomoPeftAlgorithm(),
        [Offsite.OffsiteAlgorithm.AlgorithmName] = new Offsite.OffsiteAlgorithm(),
        [KSeed.FedKSeedAlgorithm.AlgorithmName] = new KSeed.FedKSeedAlgorithm(),
        [CoLlm.FedCoLlmAlgorithm.AlgorithmName] = new CoLlm.FedCoLlmAlgorithm(),
        [Mkt.FedMktAlgorithm.AlgorithmName] = new Mkt.FedMktAlgorithm(),
        [Pdss.PdssAlgorithm.AlgorithmName] = new Pdss.PdssAlgorithm(),
    };

    public static IReadOnlyCollection<string> Names => Registered.Keys.Order(StringComparer.Ordinal).ToArray();

    public static void Register(IFederatedAlgorithm algorithm)
    {
        var existing = Registered.GetOrAdd(algorithm.Name, algorithm);
        if (existing.GetType() != algorithm.GetType())
            throw new InvalidOperationException($"algorithm '{algorithm.Name}' is already registered as {existing.GetType().Name}");
    }

    public static IFederatedAlgorithm Get(string name) => Registered.TryGetValue(name, out var a) ? a
        : throw new JobSpecException($"job.algorithm.name: '{name}' is not a registered algorithm (known: {string.Join(", ", Names)})");

    public static IFederatedAlgorithm For(JobSpec spec) => Get(spec.Algorithm.Name);
}

/// <summary>Per-round party sampling, reproducible from the job seed, the round and the attempt.</summary>
public static class PartySelection
{
    /// <summary>
    /// A uniform sample without replacement of <see cref="JobSpec.CohortSize"/> parties (every party when sampling is
    /// off), in ordinal order. A retried attempt draws afresh, so a sampled party that is down does not sink every attempt.
    /// </summary>
    public static IReadOnlyList<string> Sample(JobSpec spec, int round, int attempt)
    {
        var all = spec.Parties.Select(p => p.Org).Order(StringComparer.Ordinal).ToArray();
        var size = spec.CohortSize;
        if (size >= all.Length) return all;
        var rng = new SplitMix64(Seeds.Derive(spec.Seed, Seeds.Sampling, round, attempt));
        // Partial Fisher–Yates: the first `size` slots are the sample.
        for (int i = 0; i < size; i++)
        {
            var j = i + (int)(rng.Next() % (ulong)(all.Length - i));
            (all[i], all[j]) = (all[j], all[i]);
        }
        return all.Take(size).Order(StringComparer.Ordinal).ToArray();
    }
}

/// <summary>Seeds derived from the job seed for each purpose, so changing one use never shifts another.</summary>
public static class Seeds
{
    public const long Sampling = 0x53414D50; // "SAMP"

    /// <summary>Local training of round r uses seed·1000 + r, as every journal and reference run so far has (kept for reproducibility).</summary>
    public static long LocalTraining(long jobSeed, int round) => jobSeed * 1000 + round;

    /// <summary>The SecAgg+ neighbour graph of an exchange; exchange 1 keeps the seed every journal so far has used.</summary>
    public static long SecAggGraph(long jobSeed, int round, int attempt, int phase) =>
        jobSeed * 1_000_003 + round * 1_009L + attempt + (phase - 1) * 7_919L;

    public static ulong Derive(long seed, long purpose, int a, int b)
    {
        var x = new SplitMix64((ulong)seed ^ (ulong)purpose * 0x9E3779B97F4A7C15UL);
        var h = x.Next() ^ (ulong)(uint)a * 0xBF58476D1CE4E5B9UL;
        return new SplitMix64(h ^ (ulong)(uint)b * 0x94D049BB133111EBUL).Next();
    }
}

/// <summary>SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and the same on every machine and runtime.</summary>
public struct SplitMix64(ulong state)
{
    ulong _state = state;

    public ulong Next()
    {
        var z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
