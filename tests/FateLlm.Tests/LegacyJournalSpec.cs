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
            // Exactly the global adapter the same job reaches without interruption. (The old code's was recorded as a SHA-256,
            // but a trained adapter's bits follow the CPU's kernels — AVX2 and AVX-512 machines differ — so the uninterrupted
            // run is made here, by today's code, from the spec the recovered job stored.)
            var store = new Training.IO.BlobStore(Path.Combine(arbiter, "blobs"));
            var spec = Directory.GetFiles(Path.Combine(arbiter, "blobs")).Select(TryJob).First(j => j?.JobId == "legacy-v1")!;
            var uninterrupted = await FederationFixture.RunToCompletion(fed, spec with { JobId = "legacy-v1-again", OutputDir = Path.Combine(g.Root, "again") },
                TimeSpan.FromSeconds(180));
            Assert.Equal([1, 1, 1], uninterrupted.Rounds.Select(r => r.Attempt));
            // Round 1 came from the old machine's journal, rounds 2 and 3 from this one's kernels: equal up to their rounding,
            // which two rounds of Adam amplify to ~1e-4 between an AVX2 and an AVX-512 machine; a round applied twice or lost
            // would move them by a whole round of local training.
            using var scope = TorchSharp.torch.NewDisposeScope();
            var (resumed, again) = (Training.IO.SafeTensors.FromBytes(store.Read(status.GlobalDigest!)), Training.IO.SafeTensors.FromBytes(store.Read(uninterrupted.GlobalDigest!)));
            var moved = resumed.Keys.Max(k => (resumed[k] - again[k]).abs().max().item<float>());
            Assert.True(moved < 1e-3, $"the resumed job ends {moved} away from the uninterrupted one");
            Assert.Equal("homo-peft", status.Algorithm);
            Assert.True(File.Exists(Path.Combine(recordedOutput, "adapter", "adapter_model.safetensors")));
        }
        finally
        {
            if (Directory.Exists(recordedOutput)) Directory.Delete(recordedOutput, recursive: true);
        }
    }

    static Training.Federation.JobSpec? TryJob(string blob)
    {
        try { return Training.Federation.JobSpec.FromJson(File.ReadAllBytes(blob), blob); }
        catch (Training.Federation.JobSpecException) { return null; }
    }
}
