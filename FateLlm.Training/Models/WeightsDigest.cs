using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json;
using FateLlm.Training.IO;

namespace FateLlm.Training.Models;

/// <summary>
/// SHA-256 over a model's weight files in name order: the identity parties and arbiter compare. Hashing 16 GB takes
/// minutes, so the digest is computed once and kept in memory and beside the weights (<see cref="CacheFile"/>), keyed by
/// each file's name, size, modification time and inode; a file rewritten, replaced or touched is hashed again. A folder
/// that cannot be written keeps the digest in memory only.
/// </summary>
public static class WeightsDigest
{
    public const string CacheFile = ".fate-llm-digest.json";
    const int CacheVersion = 1;

    static readonly ConcurrentDictionary<string, (string Stamp, string Digest)> Remembered = new();
    static readonly ConcurrentDictionary<string, int> Hashes = new();

    /// <summary>How many times this process actually hashed the weights of <paramref name="folder"/> (specs count it).</summary>
    public static int TimesHashed(string folder) => Hashes.GetValueOrDefault(Path.GetFullPath(folder));

    public static string Of(string folder)
    {
        var full = Path.GetFullPath(folder);
        var files = Directory.Exists(full)
            ? Directory.GetFiles(full, "*.safetensors").Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToList()
            : [];
        if (files.Count == 0) throw new ModelFormatException($"{folder}: no .safetensors weights to hash");
        var stamp = string.Join(";", files.Select(f => FileStamp.Of(Path.Combine(full, f))));
        if (Remembered.TryGetValue(full, out var known) && known.Stamp == stamp) return known.Digest;
        var digest = ReadCache(full, stamp) ?? Hash(full, files);
        Remembered[full] = (stamp, digest);
        return digest;
    }

    /// <summary>Forgets what this process remembered, as a fresh process would (specs).</summary>
    public static void ForgetInMemory() => Remembered.Clear();

    static string Hash(string folder, List<string> files)
    {
        Hashes.AddOrUpdate(folder, 1, (_, n) => n + 1);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        foreach (var f in files)
        {
            using var s = File.OpenRead(Path.Combine(folder, f));
            int n;
            while ((n = s.Read(buffer)) > 0) sha.AppendData(buffer, 0, n);
        }
        var digest = Convert.ToHexStringLower(sha.GetHashAndReset());
        WriteCache(folder, files, digest);
        return digest;
    }

    sealed record Cached(int Version, string Algorithm, string Stamp, string Digest);

    static string? ReadCache(string folder, string stamp)
    {
        try
        {
            var c = JsonSerializer.Deserialize<Cached>(File.ReadAllText(Path.Combine(folder, CacheFile)));
            return c is { Version: CacheVersion, Algorithm: "sha256" } && c.Stamp == stamp && c.Digest.Length == 64 ? c.Digest : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException) { return null; }
    }

    static void WriteCache(string folder, List<string> files, string digest)
    {
        // Stamped after hashing: a file changed while it was read gets a stamp that no longer matches next time.
        var stamp = string.Join(";", files.Select(f => FileStamp.Of(Path.Combine(folder, f))));
        AtomicFile.TryWriteAllText(Path.Combine(folder, CacheFile), JsonSerializer.Serialize(new Cached(CacheVersion, "sha256", stamp, digest)));
    }
}
