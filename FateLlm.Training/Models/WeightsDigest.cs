using System.Collections.Concurrent;
using System.Text.Json;
using FateLlm.Training.IO;

namespace FateLlm.Training.Models;

/// <summary>
/// The <see cref="ContentDigest"/> of a model's weight files in name order: the identity parties and arbiter compare.
/// Hashing 16 GB takes seconds to minutes, so a digest is computed once and kept in memory and beside the weights
/// (<see cref="CacheFile"/>), keyed by each file's name, size, modification time and inode; a file rewritten, replaced or
/// touched is hashed again. A folder that cannot be written keeps the digest in memory only. New digests are BLAKE3; a job
/// recorded with a SHA-256 digest is verified in SHA-256 (<see cref="Like"/>).
/// </summary>
public static class WeightsDigest
{
    public const string CacheFile = ".fate-llm-digest.json";
    // 1: one SHA-256 digest; 2: a digest per algorithm.
    const int CacheVersion = 2;

    static readonly ConcurrentDictionary<(string Folder, ContentDigest.Algorithm), (string Stamp, string Digest)> Remembered = new();
    static readonly ConcurrentDictionary<string, int> Hashes = new();

    /// <summary>How many times this process actually hashed the weights of <paramref name="folder"/> (specs count it).</summary>
    public static int TimesHashed(string folder) => Hashes.GetValueOrDefault(Path.GetFullPath(folder));

    public static string Of(string folder) => Of(folder, ContentDigest.Current);

    /// <summary>The digest in the algorithm of <paramref name="expected"/> (the one a job names), to compare with it.</summary>
    public static string Like(string folder, string expected) =>
        Of(folder, ContentDigest.TryAlgorithmOf(expected, out var a) ? a : ContentDigest.Current);

    public static string Of(string folder, ContentDigest.Algorithm algorithm)
    {
        var full = Path.GetFullPath(folder);
        var files = Directory.Exists(full)
            ? Directory.GetFiles(full, "*.safetensors").Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToList()
            : [];
        if (files.Count == 0) throw new ModelFormatException($"{folder}: no .safetensors weights to hash");
        var stamp = Stamp(full, files);
        if (Remembered.TryGetValue((full, algorithm), out var known) && known.Stamp == stamp) return known.Digest;
        var digest = ReadCache(full, stamp, algorithm) ?? Hash(full, files, algorithm);
        Remembered[(full, algorithm)] = (stamp, digest);
        return digest;
    }

    /// <summary>Forgets what this process remembered, as a fresh process would (specs).</summary>
    public static void ForgetInMemory() => Remembered.Clear();

    static string Stamp(string folder, List<string> files) => string.Join(";", files.Select(f => FileStamp.Of(Path.Combine(folder, f))));

    static string Hash(string folder, List<string> files, ContentDigest.Algorithm algorithm)
    {
        Hashes.AddOrUpdate(folder, 1, (_, n) => n + 1);
        using var hash = new ContentDigest.Hasher(algorithm);
        foreach (var f in files) hash.AppendFile(Path.Combine(folder, f));
        var digest = hash.Finish();
        WriteCache(folder, files, algorithm, digest);
        return digest;
    }

    sealed record Cached(int Version, string Stamp, Dictionary<string, string>? Digests, string? Algorithm = null, string? Digest = null)
    {
        public IReadOnlyDictionary<string, string> ByAlgorithm => Version switch
        {
            1 when Algorithm == "sha256" && Digest is not null => new Dictionary<string, string> { [Name(ContentDigest.Algorithm.Sha256)] = Digest },
            CacheVersion when Digests is not null => Digests,
            _ => new Dictionary<string, string>(),
        };
    }

    static string Name(ContentDigest.Algorithm a) => a.ToString().ToLowerInvariant();

    static Cached? Load(string folder)
    {
        try { return JsonSerializer.Deserialize<Cached>(File.ReadAllText(Path.Combine(folder, CacheFile))); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException) { return null; }
    }

    static string? ReadCache(string folder, string stamp, ContentDigest.Algorithm algorithm) =>
        Load(folder) is { } c && c.Stamp == stamp && c.ByAlgorithm.TryGetValue(Name(algorithm), out var d)
            && ContentDigest.TryAlgorithmOf(d, out var a) && a == algorithm ? d : null;

    static void WriteCache(string folder, List<string> files, ContentDigest.Algorithm algorithm, string digest)
    {
        // Stamped after hashing: a file changed while it was read gets a stamp that no longer matches next time.
        var stamp = Stamp(folder, files);
        var digests = Load(folder) is { } old && old.Stamp == stamp ? old.ByAlgorithm.ToDictionary() : [];
        digests[Name(algorithm)] = digest;
        AtomicFile.TryWriteAllText(Path.Combine(folder, CacheFile), JsonSerializer.Serialize(new Cached(CacheVersion, stamp, digests)));
    }
}
