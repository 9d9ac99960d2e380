using System.Security.Cryptography;
using System.Text;
using FateLlm.Training.IO;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Versioned content digests: BLAKE3 (<c>b3:</c>) for what is made now, bare SHA-256 for what older stores hold.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ContentDigestSpec
{
    // The official BLAKE3 test vectors (test_vectors.json): input byte i is i % 251.
    static byte[] VectorInput(int length) => Enumerable.Range(0, length).Select(i => (byte)(i % 251)).ToArray();

    [Theory]
    [InlineData(0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")]
    [InlineData(16384, "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4")]
    [InlineData(31744, "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47")]
    [InlineData(102400, "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085")]
    public void Blake3_digests_match_the_published_test_vectors(int length, string hash) =>
        Assert.Equal("b3:" + hash, ContentDigest.Of(VectorInput(length)));

    [Fact]
    public void A_file_hashed_in_blocks_on_every_core_equals_the_bytes_hashed_in_pieces()
    {
        var bytes = VectorInput((17 << 20) + 12345);
        var file = Path.Combine(TestSupport.TempDir(), "blob");
        File.WriteAllBytes(file, bytes);
        using var pieces = new ContentDigest.Hasher(ContentDigest.Algorithm.Blake3);
        for (var at = 0; at < bytes.Length; at += 777_777) pieces.Append(bytes.AsSpan(at, Math.Min(777_777, bytes.Length - at)));
        var expected = pieces.Finish();
        Assert.Equal(expected, ContentDigest.OfFile(file));
        Assert.Equal(expected, ContentDigest.Of(bytes));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(bytes)), ContentDigest.OfFile(file, ContentDigest.Algorithm.Sha256));
    }

    [Theory]
    [InlineData("b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", true, ContentDigest.Algorithm.Blake3)]
    [InlineData("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", true, ContentDigest.Algorithm.Sha256)]
    [InlineData("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", false, ContentDigest.Algorithm.Sha256)]
    [InlineData("b3:af1349b9", false, ContentDigest.Algorithm.Blake3)]
    [InlineData("sha1:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", false, ContentDigest.Algorithm.Sha256)]
    [InlineData("../../etc/passwd", false, ContentDigest.Algorithm.Sha256)]
    public void Only_well_formed_digests_name_an_algorithm(string digest, bool ok, ContentDigest.Algorithm algorithm)
    {
        Assert.Equal(ok, ContentDigest.TryAlgorithmOf(digest, out var a));
        if (ok) Assert.Equal(algorithm, a);
        else Assert.Throws<ArgumentException>(() => new BlobStore(TestSupport.TempDir()).PathOf(digest));
    }

    [Fact]
    public void A_store_puts_blake3_blobs_and_still_verifies_and_serves_the_sha256_blobs_of_an_older_store()
    {
        var store = new BlobStore(TestSupport.TempDir());
        var bytes = Encoding.UTF8.GetBytes("an adapter");
        var digest = store.Put(bytes);
        Assert.StartsWith("b3:", digest);
        Assert.Equal(bytes, store.Read(digest));
        Assert.DoesNotContain(':', Path.GetFileName(store.PathOf(digest)));

        // An older store named blobs by their SHA-256: the file is found, and an incoming copy verifies as SHA-256.
        var legacy = Convert.ToHexStringLower(SHA256.HashData(bytes));
        File.WriteAllBytes(Path.Combine(store.Root, legacy + ".safetensors"), bytes);
        Assert.True(store.Has(legacy));
        var incoming = store.NewIncoming(legacy);
        File.WriteAllBytes(incoming, bytes);
        Assert.True(store.Commit(incoming, legacy));
        var tampered = store.NewIncoming(legacy);
        File.WriteAllBytes(tampered, [.. bytes, 0]);
        Assert.False(store.Commit(tampered, legacy));
        Assert.False(File.Exists(tampered));
    }
}
