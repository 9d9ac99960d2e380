using Akka.Configuration;
using FateLlm.Actors.Jobs;
using Xunit;

namespace FateLlm.Tests;

/// <summary>A journal written by the pre-plug-in code (schema v1, committed under Fixtures/legacy-journal-v1) still recovers and finishes its job.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class LegacyJournalSpec
{
    [Fact]
    public async Task A_job_journaled_by_the_previous_schema_resumes_and_ends_where_the_old_code_would_have()
    {
        var g = FederationFixture.Prepare();
        // The fixture's job names /tmp/fatellm-legacy/model; nodes find the same weights under their models root.
        // The job names the SHA-256 digest of the weights; the parties verify it in SHA-256, though today's digests are BLAKE3.
        Assert.Equal("d1feb33a48a0fccfc471f68618f2637b9a4373100512206bc1dc85d0034eeacf",
            Training.Models.WeightsDigest.Like(g.Model, "d1feb33a48a0fccfc471f68618f2637b9a4373100512206bc1dc85d0034eeacf"));
        var arbiter = Path.Combine(g.Root, "nodes", "arbiter");
        Directory.CreateDirectory(Path.Combine(arbiter, "blobs"));
        var fixture = TestSupport.FixturePath("legacy-journal-v1");
        File.Copy(Path.Combine(fixture, "journal.db"), Path.Combine(arbiter, "journal.db"));
        foreach (var blob in Directory.GetFiles(Path.Combine(fixture, "blobs"))) File.Copy(blob, Path.Combine(arbiter, "blobs", Path.GetFileName(blob)));
        var recordedOutput = "/tmp/fatellm-legacy/out-legacy-v1";
        try
        {
            var modelsRoot = ConfigurationFactory.ParseString($"fate-llm.models-root = \"{g.Root}\"");
            await using var fed = await FederationFixture.Start(g, modelsRoot);
            // Nobody submits: sharding remembers the job entity, which recovers from the v1 events and resumes round 2.
            var status = await fed.WaitAsync("legacy-v1", TimeSpan.FromSeconds(180));
            Assert.True(status.State == JobState.Completed, status.Reason);
            Assert.Equal([1, 2, 3], status.Rounds.Select(r => r.Round));
            Assert.Equal(1, status.Rounds[0].Attempt); // round 1 came from the journal, not recomputed
            Assert.Equal(2, status.Rounds[1].Attempt); // round 2's first attempt was in flight when the old arbiter died
            // Exactly the global adapter the old code reached running the same job without interruption (its SHA-256; the new
            // code stores it under its BLAKE3 digest).
            var global = new Training.IO.BlobStore(Path.Combine(arbiter, "blobs")).Read(status.GlobalDigest!);
            Assert.Equal("ad194728065c2ab8a6c2b02e79663c33e6a478f793a290f28987eb85732a1da4",
                Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(global)));
            Assert.Equal("homo-peft", status.Algorithm);
            Assert.True(File.Exists(Path.Combine(recordedOutput, "adapter", "adapter_model.safetensors")));
        }
        finally
        {
            if (Directory.Exists(recordedOutput)) Directory.Delete(recordedOutput, recursive: true);
        }
    }
}
