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

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // FedIPR: the watermarked norm scales train too, under the signature loss
    public void A_round_killed_at_step_k_resumes_at_its_checkpoint_and_uploads_the_update_of_an_uninterrupted_round(bool fedipr)
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "ckpt");
        spec = spec with
        {
            Local = spec.Local with { Steps = 6, BatchSize = 2, CheckpointEvery = 2 }, Peft = spec.Peft with { LoraDropout = 0.1 },
            Ipr = fedipr ? new Training.Ipr.IprOptions { Enabled = true } : Training.Ipr.IprOptions.Off,
        };
        var org = spec.Parties[0].Org;
        var (train, dev) = (g.Datasets[org]["train"], g.Datasets[org]["dev"]);
        var global = FederatedComputation.InitialAdapter(spec, g.Model);
        var workspace = TestSupport.TempDir();
        var keys = TestSupport.TempDir();
        ClientContext Party(IProgress<TrainProgress>? progress = null) =>
            new(spec, org, 1, 1, 1, g.Model, train, dev, workspace) { Progress = progress, KeysDir = keys };
        LocalRoundResult Round(ClientContext? party, CancellationToken ct = default)
        {
            using var run = FederatedComputation.OpenPrivate(spec, g.Model);
            // Under FedIPR the party's own watermark (its signature hinge loss and triggers) trains with the round.
            var watermark = Training.Ipr.PartyWatermark.Open(party ?? Party(), run);
            Assert.Equal(fedipr, watermark is not null);
            return FederatedComputation.LocalRound(spec, run, global, train, dev, 1, ct, watermark, party);
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
        if (fedipr) Assert.Contains("layernorm", System.Text.Encoding.UTF8.GetString(resumed.Delta)); // the watermarked scales travel and resumed too
        Assert.False(Directory.Exists(saved), "a finished round leaves no checkpoint behind");
    }

    sealed class Progress(List<int> steps) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress p) => steps.Add(p.Step);
    }
}
