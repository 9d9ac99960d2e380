using Akka.Actor;
using Akka.Cluster.Sharding;
using FateLlm.Actors.Jobs;
using Xunit;

namespace FateLlm.Tests;

public class FederationSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task A_job_runs_every_round_through_the_cluster_and_exports_a_peft_adapter()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g);
        var spec = FederationFixture.Job(g, "happy", rounds: 2);
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        var status = await fed.WaitAsync(spec.JobId, Generous);
        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.Equal(2, status.CompletedRounds);
        Assert.All(status.Rounds, r => Assert.All(r.Parties, p => Assert.True(p.Succeeded, p.Reason)));
        Assert.All(status.Rounds.SelectMany(r => r.Parties), p => Assert.True(p.UploadBytes > 0));
        Assert.Equal(3, status.FinalEvaluation.Length);
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_model.safetensors")));
        Assert.Equal(2 * 3, File.ReadAllLines(Path.Combine(spec.OutputDir, "rounds.jsonl")).Length);
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "events.jsonl")));
        Assert.True(new FileInfo(Path.Combine(spec.OutputDir, "loss.png")).Length > 1000);
        // Each organization's entity ran only on its own node.
        foreach (var (org, node) in fed.Parties)
        {
            var state = await node.PartyRegion.Ask<CurrentShardRegionState>(GetShardRegionState.Instance, TimeSpan.FromSeconds(5));
            Assert.Equal([org], state.Shards.SelectMany(s => s.EntityIds));
        }
    }
}
