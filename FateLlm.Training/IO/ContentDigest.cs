using System.Security.Cryptography;

namespace FateLlm.Training.IO;

/// <summary>
/// Versioned content digests. What this code makes is BLAKE3-256, written <c>b3:</c> + 64 hex digits: on one core here it
/// hashes 2–3× faster than SHA-256 with SHA-NI, and a 16 GB base or a 1 GB update is hashed on every transfer. A bare
/// 64-hex-digit digest is SHA-256, what stores, journals and fixtures written before hold; it still verifies, each digest
/// with its own algorithm.
/// </summary>
public static class ContentDigest
{
    public enum Algorithm { Sha256, Blake3 }

    public const string Blake3Prefix = "b3:";
    public const Algorithm Current = Algorithm.Blake3;
    const int HexLength = 64;

    public static bool TryAlgorithmOf(string? digest, out Algorithm algorithm)
    {
        algorithm = Algorithm.Sha256;
        if (digest is null) return false;
        var hex = digest.AsSpan();
        if (digest.StartsWith(Blake3Prefix, StringComparison.Ordinal))
        {
            algorithm = Algorithm.Blake3;
            hex = hex[Blake3Prefix.Length..];
        }
        return hex.Length == HexLength && IsLowerHex(hex);
    }

    public static Algorithm AlgorithmOf(string digest) => TryAlgorithmOf(digest, out var a)
        ? a
        : throw new ArgumentException($"'{digest}' is not a content digest (b3: and 64 hex digits for BLAKE3, or 64 hex digits for SHA-256)");

    public static string Of(ReadOnlySpan<byte> bytes, Algorithm algorithm = Current)
    {
        using var h = new Hasher(algorithm);
        h.Append(bytes);
        return h.Finish();
    }

    public static string OfFile(string path, Algorithm algorithm = Current)
    {
        using var h = new Hasher(algorithm);
        h.AppendFile(path);
        return h.Finish();
    }

    /// <summary>The digest as a file or folder name (no ':').</summary>
    public static string Stem(string digest) => digest.Replace(':', '-');

    static bool IsLowerHex(ReadOnlySpan<char> s)
    {
        foreach (var c in s)
            if (c is not (>= '0' and <= '9' or >= 'a' and <= 'f')) return false;
        return true;
    }

    /// <summary>An incremental digest in one algorithm.</summary>
    public sealed class Hasher : IDisposable
    {
        // Blocks this large let BLAKE3 spread their 1 KiB chunks over every core (UpdateWithJoin).
        const int BlockSize = 8 << 20;
        readonly IncrementalHash? _sha;
        readonly Blake3.Hasher? _b3;

        public Hasher(Algorithm algorithm)
        {
            if (algorithm == Algorithm.Sha256) _sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            else _b3 = Blake3.Hasher.New();
        }

        public void Append(ReadOnlySpan<byte> bytes)
        {
            if (_sha is not null) _sha.AppendData(bytes);
            else if (bytes.Length >= 1 << 20) _b3!.UpdateWithJoin(bytes);
            else _b3!.Update(bytes);
        }

        public void AppendFile(string path)
        {
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            var buffer = new byte[BlockSize];
            for (int n; (n = s.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false)) > 0;) Append(buffer.AsSpan(0, n));
        }

        public string Finish() => _sha is not null
            ? Convert.ToHexStringLower(_sha.GetHashAndReset())
            : Blake3Prefix + _b3!.Finalize().ToString();

        public void Dispose()
        {
            _sha?.Dispose();
            _b3?.Dispose();
        }
    }
}
