using System.Security.Cryptography;

namespace FateLlm.Training.IO;

/// <summary>Content-addressed blobs on disk (name = SHA-256 of the bytes); writes are atomic.</summary>
public sealed class BlobStore
{
    public string Root { get; }

    public BlobStore(string root)
    {
        Root = root;
        Directory.CreateDirectory(root);
    }

    public static string Digest(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    public static string DigestOfFile(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }

    public string PathOf(string digest)
    {
        if (digest.Length != 64 || !digest.All(Uri.IsHexDigit)) throw new ArgumentException($"'{digest}' is not a SHA-256 digest");
        return Path.Combine(Root, digest + ".safetensors");
    }

    public bool Has(string digest) => File.Exists(PathOf(digest));

    /// <summary>The digests among <paramref name="digests"/> this store does not hold, each once.</summary>
    public IReadOnlyList<string> Lacking(IEnumerable<string> digests) => digests.Distinct().Where(d => !Has(d)).ToList();

    public long Size(string digest) => new FileInfo(PathOf(digest)).Length;

    public string Put(byte[] bytes)
    {
        var digest = Digest(bytes);
        var path = PathOf(digest);
        if (File.Exists(path)) return digest;
        var tmp = Path.Combine(Root, $".{digest}.{Guid.NewGuid():N}.tmp");
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
        return digest;
    }

    public byte[] Read(string digest) => File.ReadAllBytes(PathOf(digest));

    /// <summary>A scratch file for an incoming blob; <see cref="Commit"/> verifies and moves it into place.</summary>
    public string NewIncoming(string digest) => Path.Combine(Root, $".{digest}.{Guid.NewGuid():N}.part");

    /// <param name="hashed">The incoming file's SHA-256 when the caller computed it as the bytes arrived (else it is read again).</param>
    public bool Commit(string incoming, string digest, string? hashed = null)
    {
        if ((hashed ?? DigestOfFile(incoming)) != digest)
        {
            File.Delete(incoming);
            return false;
        }
        File.Move(incoming, PathOf(digest), overwrite: true);
        return true;
    }
}
