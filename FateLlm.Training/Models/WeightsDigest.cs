using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;

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
        var stamp = string.Join(";", files.Select(f => Stamp(Path.Combine(full, f))));
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
        var stamp = string.Join(";", files.Select(f => Stamp(Path.Combine(folder, f))));
        var target = Path.Combine(folder, CacheFile);
        var tmp = $"{target}.{Environment.ProcessId}.tmp";
        try
        {
            File.WriteAllText(tmp, JsonSerializer.Serialize(new Cached(CacheVersion, "sha256", stamp, digest)));
            File.Move(tmp, target, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (Exception) { /* nothing was written */ }
        }
    }

    static string Stamp(string path)
    {
        var info = new FileInfo(path);
        return $"{info.Name}:{info.Length}:{info.LastWriteTimeUtc.Ticks}:{Inode(path)}";
    }

    // struct stat on Linux x86-64 and arm64: st_dev (8 bytes), then st_ino (8 bytes).
    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    static extern int StatCall([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] buffer);

    static ulong Inode(string path)
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try
        {
            var buffer = new byte[256];
            return StatCall(path, buffer) == 0 ? BitConverter.ToUInt64(buffer, 8) : 0;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { return 0; }
    }
}
