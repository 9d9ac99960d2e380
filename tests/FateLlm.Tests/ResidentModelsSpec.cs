using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using Xunit;

namespace FateLlm.Tests;

/// <summary>A node keeps a base loaded between rounds and evaluations; what a round computes does not change.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ResidentModelsSpec
{
    [Fact]
    public void A_party_loads_the_base_once_for_two_rounds_and_an_evaluation_and_gets_the_update_a_fresh_load_gives()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "resident") with { ModelDigest = HfCheckpoint.WeightsDigest(g.Model) };
        var org = spec.Parties[0].Org;
        var (train, dev) = (g.Datasets[org]["train"], g.Datasets[org]["dev"]);
        var models = ResidentModels.Shared;
        var idleRelease = models.IdleRelease;
        models.IdleRelease = TimeSpan.FromMinutes(10);
        try
        {
            var global = FederatedComputation.InitialAdapter(spec, g.Model);
            var loads = models.Loads;
            FederatedComputation.LocalRound(spec, g.Model, global, train, dev, 1, default);
            var second = FederatedComputation.LocalRound(spec, g.Model, global, train, dev, 2, default);
            FederatedComputation.Evaluate(spec, g.Model, global, dev);
            Assert.Equal(loads + 1, models.Loads);

            using var fresh = FederatedComputation.OpenPrivate(spec, g.Model);
            var expected = FederatedComputation.LocalRound(spec, fresh, global, train, dev, 2, default);
            Assert.Equal(expected.Delta, second.Delta);
            Assert.Equal(expected.EvalLoss, second.EvalLoss);
        }
        finally
        {
            models.IdleRelease = idleRelease;
            models.ReleaseIdle();
        }
    }

    static bool Freed(FineTuning run) => run.Model.InputEmbeddings.IsInvalid;

    static FineTuning Load(string model) => FineTuning.Open(model, new PeftConfig { Method = PeftMethod.Lora, LoraR = 2 }, 1);

    [Fact]
    public void Concurrent_users_get_their_own_copy_and_another_configuration_of_the_same_base_frees_the_idle_one()
    {
        var model = FederationFixture.Prepare().Model;
        var models = new ResidentModels { IdleRelease = TimeSpan.FromMinutes(10) };
        var a = models.Open(model, "r2", () => Load(model));
        var b = models.Open(model, "r2", () => Load(model));
        Assert.NotSame(a.Model, b.Model);
        Assert.Equal(2, models.Loads);
        a.Dispose();
        b.Dispose();
        Assert.Equal(2, models.Count);
        using (var again = models.Open(model, "r2", () => Load(model))) Assert.True(ReferenceEquals(again.Model, a.Model) || ReferenceEquals(again.Model, b.Model));
        Assert.Equal(2, models.Loads);

        using (models.Open(model, "r4", () => Load(model))) Assert.Equal(1, models.Count);
        Assert.Equal(3, models.Loads);
        Assert.True(Freed(a) && Freed(b), "both idle copies of the other configuration were freed");
        models.ReleaseIdle();
        Assert.Equal(0, models.Count);
    }

    [Fact]
    public void A_model_first_loaded_inside_a_callers_dispose_scope_outlives_that_scope_while_it_stays_resident()
    {
        var model = FederationFixture.Prepare().Model;
        var models = new ResidentModels { IdleRelease = TimeSpan.FromMinutes(10) };
        FineTuning first;
        using (TorchSharp.torch.NewDisposeScope())
            using (first = models.Open(model, "r2", () => Load(model))) { }
        using var again = models.Open(model, "r2", () => Load(model));
        Assert.Same(first.Model, again.Model);
        Assert.False(Freed(again));
        Assert.Equal(16, PeftModel.TrainableParameters(again.Model).Count); // the tiny model's q and v LoRA factors, 4 blocks
        using (TorchSharp.torch.NewDisposeScope())
            Assert.True(again.Model.Forward(TorchSharp.torch.tensor(new long[] { 1, 2, 3 }).unsqueeze(0)).isfinite().all().item<bool>());
        models.ReleaseIdle();
    }

    [Fact]
    public void Without_an_idle_release_nothing_stays_loaded()
    {
        var model = FederationFixture.Prepare().Model;
        var models = new ResidentModels();
        var run = models.Open(model, "k", () => Load(model));
        run.Dispose();
        Assert.Equal(0, models.Count);
        Assert.True(Freed(run));
    }
}
