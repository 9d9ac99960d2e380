using FateLlm.Training.Federation;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// The algorithms a node runs, by <c>job.algorithm.name</c>: an immutable value handed to the job, round and party
/// actors and to validation (a node's <c>NodeOptions.Algorithms</c>). <see cref="BuiltIn"/> lists the product's
/// paradigms, one line each; a test or an embedding application adds its own with <see cref="With"/>. Every node of a
/// federation must run the same.
/// </summary>
public sealed class AlgorithmCatalog
{
    public const string DefaultName = HomoPeft.HomoPeftAlgorithm.AlgorithmName;

    public static readonly AlgorithmCatalog BuiltIn = new AlgorithmCatalog(new Dictionary<string, IFederatedAlgorithm>(StringComparer.Ordinal))
        .With(new HomoPeft.HomoPeftAlgorithm())
        .With(new Offsite.OffsiteAlgorithm())
        .With(new KSeed.FedKSeedAlgorithm())
        .With(new CoLlm.FedCoLlmAlgorithm())
        .With(new Mkt.FedMktAlgorithm())
        .With(new Pdss.PdssAlgorithm())
        .With(new Dpo.DpoAlgorithm())
        .With(new Fdkt.FdktAlgorithm());

    readonly IReadOnlyDictionary<string, IFederatedAlgorithm> _algorithms;

    AlgorithmCatalog(IReadOnlyDictionary<string, IFederatedAlgorithm> algorithms) => _algorithms = algorithms;

    public IReadOnlyCollection<string> Names => _algorithms.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>This catalog and <paramref name="algorithm"/>; a name already taken by another plug-in type is refused.</summary>
    public AlgorithmCatalog With(IFederatedAlgorithm algorithm)
    {
        if (_algorithms.TryGetValue(algorithm.Name, out var existing))
            return existing.GetType() == algorithm.GetType() ? this
                : throw new InvalidOperationException($"algorithm '{algorithm.Name}' is already registered as {existing.GetType().Name}");
        return new AlgorithmCatalog(new Dictionary<string, IFederatedAlgorithm>(_algorithms, StringComparer.Ordinal) { [algorithm.Name] = algorithm });
    }

    public IFederatedAlgorithm Get(string name) => _algorithms.TryGetValue(name, out var a) ? a
        : throw new JobSpecException($"job.algorithm.name: '{name}' is not a registered algorithm (known: {string.Join(", ", Names)})");

    public IFederatedAlgorithm For(JobSpec spec) => Get(spec.Algorithm.Name);
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
