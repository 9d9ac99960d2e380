using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.Trainer;
using Xunit;

namespace FateLlm.Tests;

/// <summary>A party killed in the middle of its local round resumes from its last checkpoint and computes the same update.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class LocalRoundCheckpointSpec
{
    sealed class AtStep(int step, Action act) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress p) { if (p.Step == step) act(); }
    }

    [Fact]
    public void A_round_killed_at_step_k_resumes_at_its_checkpoint_and_uploads_the_update_of_an_uninterrupted_round()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "ckpt");
        spec = spec with { Local = spec.Local with { Steps = 6, BatchSize = 2, CheckpointEvery = 2 }, Peft = spec.Peft with { LoraDropout = 0.1 } };
        var org = spec.Parties[0].Org;
        var (train, dev) = (g.Datasets[org]["train"], g.Datasets[org]["dev"]);
        var global = FederatedComputation.InitialAdapter(spec, g.Model);
        var workspace = TestSupport.TempDir();
        ClientContext Party(IProgress<TrainProgress>? progress = null) =>
            new(spec, org, 1, 1, 1, g.Model, train, dev, workspace) { Progress = progress };
        LocalRoundResult Round(ClientContext? party, CancellationToken ct = default)
        {
            using var run = FederatedComputation.OpenPrivate(spec, g.Model);
            return FederatedComputation.LocalRound(spec, run, global, train, dev, 1, ct, party: party);
        }

        var uninterrupted = Round(null);
        // The kill: step 5 done, its checkpoint (every 2 steps) is step 4's; nothing of the run survives but the workspace.
        using (var cts = new CancellationTokenSource())
            Assert.ThrowsAny<OperationCanceledException>(() => Round(Party(new AtStep(5, cts.Cancel)), cts.Token));
        var saved = Directory.GetDirectories(Path.Combine(workspace, "checkpoints", org)).Single();
        Assert.Equal(4, TrainerCheckpoint.Latest(saved)!.State.Step);

        var steps = new List<int>();
        var resumed = Round(Party(new Progress(steps)));
        Assert.Equal([5, 6], steps); // only the steps after the checkpoint ran again
        Assert.Equal(uninterrupted.Delta, resumed.Delta);
        Assert.Equal(uninterrupted.LastLoss, resumed.LastLoss);
        Assert.False(Directory.Exists(saved), "a finished round leaves no checkpoint behind");
    }

    sealed class Progress(List<int> steps) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress p) => steps.Add(p.Step);
    }
}
