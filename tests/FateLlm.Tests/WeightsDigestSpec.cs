using System.Security.Cryptography;
using System.Text.Json;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The weights digest is hashed once per file version: remembered in memory and beside the weights.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class WeightsDigestSpec
{
    static string Model()
    {
        var dir = TestSupport.TempDir();
        foreach (var f in new[] { HfCheckpoint.ConfigFile, HfCheckpoint.SingleFile })
            File.Copy(TestSupport.FixturePath("families", "qwen3", f), Path.Combine(dir, f));
        return dir;
    }

    static string Blake3(string file) => ContentDigest.Of(File.ReadAllBytes(file));
    static string Sha256(string file) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file)));

    [Fact]
    public void A_digest_is_hashed_once_and_read_back_from_beside_the_weights_by_a_fresh_process()
    {
        var dir = Model();
        var expected = Blake3(Path.Combine(dir, HfCheckpoint.SingleFile));
        Assert.StartsWith("b3:", expected);
        Assert.Equal(expected, WeightsDigest.Of(dir));
        Assert.Equal(expected, WeightsDigest.Of(dir));
        Assert.Equal(1, WeightsDigest.TimesHashed(dir));
        Assert.True(File.Exists(Path.Combine(dir, WeightsDigest.CacheFile)));
        WeightsDigest.ForgetInMemory();
        Assert.Equal(expected, WeightsDigest.Of(dir));
        Assert.Equal(1, WeightsDigest.TimesHashed(dir));
    }

    [Fact]
    public void A_file_replaced_with_the_same_size_and_time_is_hashed_again_because_its_inode_changed()
    {
        var dir = Model();
        var weights = Path.Combine(dir, HfCheckpoint.SingleFile);
        var before = WeightsDigest.Of(dir);
        var time = File.GetLastWriteTimeUtc(weights);
        var bytes = File.ReadAllBytes(weights);
        bytes[^1] ^= 0x01;
        var replacement = weights + ".new";
        File.WriteAllBytes(replacement, bytes);
        File.SetLastWriteTimeUtc(replacement, time);
        File.Move(replacement, weights, overwrite: true);
        WeightsDigest.ForgetInMemory(); // even the file beside the weights must not vouch for the old bytes
        var after = WeightsDigest.Of(dir);
        Assert.NotEqual(before, after);
        Assert.Equal(Blake3(weights), after);
        Assert.Equal(2, WeightsDigest.TimesHashed(dir));
    }

    [Fact]
    public void A_file_rewritten_in_place_is_hashed_again_and_a_damaged_cache_is_ignored()
    {
        var dir = Model();
        var weights = Path.Combine(dir, HfCheckpoint.SingleFile);
        WeightsDigest.Of(dir);
        File.AppendAllText(weights, " ");
        Assert.Equal(Blake3(weights), WeightsDigest.Of(dir));
        File.WriteAllText(Path.Combine(dir, WeightsDigest.CacheFile), "{not json");
        WeightsDigest.ForgetInMemory();
        Assert.Equal(Blake3(weights), WeightsDigest.Of(dir));
        Assert.Equal(3, WeightsDigest.TimesHashed(dir));
    }

    [Fact]
    public void A_job_that_names_a_sha256_digest_is_verified_in_sha256_and_both_digests_are_kept_beside_the_weights()
    {
        var dir = Model();
        var weights = Path.Combine(dir, HfCheckpoint.SingleFile);
        var legacy = Sha256(weights);
        Assert.Equal(legacy, WeightsDigest.Like(dir, legacy));
        Assert.Equal(Blake3(weights), WeightsDigest.Like(dir, Blake3(weights)));
        Assert.Equal(2, WeightsDigest.TimesHashed(dir));
        WeightsDigest.ForgetInMemory();
        Assert.Equal(legacy, WeightsDigest.Like(dir, legacy));
        Assert.Equal(Blake3(weights), WeightsDigest.Of(dir));
        Assert.Equal(2, WeightsDigest.TimesHashed(dir));
    }

    [Fact]
    public void The_sha256_digest_an_older_version_left_beside_the_weights_still_counts()
    {
        var dir = Model();
        var weights = Path.Combine(dir, HfCheckpoint.SingleFile);
        // What version 1 of the cache wrote: one SHA-256 digest under the files' stamp.
        var stamp = FileStamp.Of(weights);
        File.WriteAllText(Path.Combine(dir, WeightsDigest.CacheFile),
            JsonSerializer.Serialize(new { Version = 1, Algorithm = "sha256", Stamp = stamp, Digest = Sha256(weights) }));
        Assert.Equal(Sha256(weights), WeightsDigest.Like(dir, Sha256(weights)));
        Assert.Equal(0, WeightsDigest.TimesHashed(dir));
    }
}
