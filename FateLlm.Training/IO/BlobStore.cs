namespace FateLlm.Training.IO;

/// <summary>
/// Content-addressed blobs on disk, named by their <see cref="ContentDigest"/> (BLAKE3 for what is put now; SHA-256 blobs
/// of older stores are still found and verified); writes are atomic.
/// </summary>
public sealed class BlobStore
{
    public string Root { get; }

    public BlobStore(string root)
    {
        Root = root;
        Directory.CreateDirectory(root);
    }

    public static string Digest(ReadOnlySpan<byte> bytes) => ContentDigest.Of(bytes);

    public static string DigestOfFile(string path) => ContentDigest.OfFile(path);

    public string PathOf(string digest)
    {
        ContentDigest.AlgorithmOf(digest);
        return Path.Combine(Root, ContentDigest.Stem(digest) + ".safetensors");
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
        var tmp = Path.Combine(Root, $".{ContentDigest.Stem(digest)}.{Guid.NewGuid():N}.tmp");
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
        return digest;
    }

    public byte[] Read(string digest) => File.ReadAllBytes(PathOf(digest));

    /// <summary>A scratch file for an incoming blob; <see cref="Commit"/> verifies and moves it into place.</summary>
    public string NewIncoming(string digest) => Path.Combine(Root, $".{ContentDigest.Stem(digest)}.{Guid.NewGuid():N}.part");

    /// <param name="hashed">The incoming file's digest, in <paramref name="digest"/>'s algorithm, when the caller computed it as
    /// the bytes arrived (else it is read again).</param>
    public bool Commit(string incoming, string digest, string? hashed = null)
    {
        if ((hashed ?? ContentDigest.OfFile(incoming, ContentDigest.AlgorithmOf(digest))) != digest)
        {
            File.Delete(incoming);
            return false;
        }
        File.Move(incoming, PathOf(digest), overwrite: true);
        return true;
    }
}
