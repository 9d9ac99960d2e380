using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using FateLlm.Training.Models;

namespace FateLlm.Training.Algorithms.KSeed;

/// <summary>
/// What a node needs besides the base model and the rounds to rebuild a FedKSeed model: the job seed (which keys the
/// candidates), K, η, and a digest of the parameter layout (names and shapes in canonical order) so a node whose model
/// numbers its elements differently is refused instead of silently replaying other directions.
/// </summary>
public sealed record KSeedManifest(
    [property: JsonPropertyName("format")] string Format,
    [property: JsonPropertyName("seed")] long Seed,
    [property: JsonPropertyName("candidates")] int Candidates,
    [property: JsonPropertyName("learning_rate")] double LearningRate,
    [property: JsonPropertyName("parameters")] long Parameters,
    [property: JsonPropertyName("layout")] string Layout)
{
    public const string CurrentFormat = "fedkseed/1", FileName = "fedkseed.json";

    public byte[] ToBytes() => JsonSerializer.SerializeToUtf8Bytes(this, new JsonSerializerOptions { WriteIndented = true });

    public static KSeedManifest Parse(byte[] bytes, string origin)
    {
        KSeedManifest? m;
        try { m = JsonSerializer.Deserialize<KSeedManifest>(bytes); }
        catch (JsonException e) { throw new FormatException($"{origin}: not a fedkseed manifest ({e.Message})"); }
        if (m is null || m.Format != CurrentFormat) throw new FormatException($"{origin}: format '{m?.Format}' is not {CurrentFormat}");
        if (m.Candidates < 1 || !(m.LearningRate > 0) || m.Parameters < 1 || m.Layout is not { Length: 64 })
            throw new FormatException($"{origin}: candidates {m.Candidates}, learning_rate {m.LearningRate}, parameters {m.Parameters} or layout digest is invalid");
        return m;
    }

    public static string LayoutDigest(ParameterLayout layout) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Concat(
        layout.Entries.Select(e => $"{e.Name}|{string.Join('x', e.Param.shape)}\n")))));

    public static KSeedManifest For(ParameterLayout layout, long seed, int candidates, double learningRate) =>
        new(CurrentFormat, seed, candidates, learningRate, layout.Count, LayoutDigest(layout));

    /// <summary>Refuses a model whose canonical layout is not the one the federation replays into.</summary>
    public void Check(ParameterLayout layout, string who)
    {
        if (layout.Count != Parameters || LayoutDigest(layout) != Layout)
            throw new ModelFormatException($"{who}: the model's parameter layout ({layout.Count:N0} values, {LayoutDigest(layout)[..12]}…) is not the federation's " +
                $"({Parameters:N0}, {Layout[..12]}…): its directions would differ");
    }
}

/// <summary>
/// Rebuilds the global model: the base weights, then each round's terms in round order (<see cref="SeedDirection.Apply"/>).
/// A node keeps the model after the last round it rebuilt, with the digests of the rounds in it, and continues from there
/// when those rounds are a prefix of the history: each element then sees exactly the same operations as a replay from
/// the base, so the result is bit-identical either way.
/// </summary>
public static class KSeedReplay
{
    const string WeightsFile = "fedkseed.weights", RoundsFile = "fedkseed.rounds";

    public static void Replay(float[] w, KSeedManifest m, IEnumerable<RoundScalars> rounds, int threads)
    {
        foreach (var r in rounds) SeedDirection.Apply(w, r.Terms(m.Seed, m.LearningRate), threads);
    }

    /// <summary>
    /// The model after <paramref name="rounds"/> (digest and parsed round, in order), from the cache in
    /// <paramref name="cacheDir"/> where it holds a prefix, else from <paramref name="baseWeights"/>; updates the cache.
    /// Returns the weights and how many rounds had to be applied.
    /// </summary>
    public static (float[] Weights, int Applied) Rebuild(Func<float[]> baseWeights, KSeedManifest m, IReadOnlyList<(string Digest, RoundScalars Round)> rounds,
        string cacheDir, int threads)
    {
        var (w, done) = Cached(cacheDir, m, rounds.Select(r => r.Digest).ToList()) ?? (baseWeights(), 0);
        Replay(w, m, rounds.Skip(done).Select(r => r.Round), threads);
        if (done < rounds.Count) Save(cacheDir, m, w, rounds.Select(r => r.Digest));
        return (w, rounds.Count - done);
    }

    static (float[], int)? Cached(string dir, KSeedManifest m, IReadOnlyList<string> wanted)
    {
        string weights = Path.Combine(dir, WeightsFile), list = Path.Combine(dir, RoundsFile);
        if (!File.Exists(weights) || !File.Exists(list)) return null;
        var lines = File.ReadAllLines(list);
        // The first line names the manifest: a cache of another job's (or another η's) history never matches.
        if (lines.Length == 0 || lines[0] != ManifestKey(m)) return null;
        var have = lines.Skip(1).ToArray();
        if (have.Length > wanted.Count || !have.SequenceEqual(wanted.Take(have.Length))) return null;
        var bytes = File.ReadAllBytes(weights);
        if (bytes.LongLength != 4 * m.Parameters) return null;
        return (MemoryMarshal.Cast<byte, float>(bytes).ToArray(), have.Length);
    }

    static void Save(string dir, KSeedManifest m, float[] w, IEnumerable<string> digests)
    {
        Directory.CreateDirectory(dir);
        // The list goes first and comes back last: a crash in between leaves no list, so the weights are never trusted.
        var list = Path.Combine(dir, RoundsFile);
        File.Delete(list);
        var weights = Path.Combine(dir, WeightsFile);
        File.WriteAllBytes(weights + ".tmp", MemoryMarshal.AsBytes(w.AsSpan()).ToArray());
        File.Move(weights + ".tmp", weights, overwrite: true);
        File.WriteAllLines(list + ".tmp", digests.Prepend(ManifestKey(m)));
        File.Move(list + ".tmp", list);
    }

    static string ManifestKey(KSeedManifest m) => Convert.ToHexStringLower(SHA256.HashData(m.ToBytes()));
}
