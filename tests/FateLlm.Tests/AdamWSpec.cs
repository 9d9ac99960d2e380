using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;
using AdamW = FateLlm.Training.Trainer.AdamW;

namespace FateLlm.Tests;

/// <summary>Our AdamW (every number held as a Scalar) against TorchSharp's, and its checkpoint.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class AdamWSpec
{
    static Parameter[] Parameters(int seed)
    {
        manual_seed(seed);
        return [new Parameter(randn(5, 3)), new Parameter(randn(7)), new Parameter(randn(2, 2))];
    }

    /// <summary>A loss whose gradient differs per step; the last parameter gets none at step 2.</summary>
    static void Backward(Parameter[] ps, int step)
    {
        using var scope = NewDisposeScope();
        var loss = ps[0].pow(2).sum().mul(step + 1) + ps[1].sin().sum();
        if (step != 2) loss = loss + ps[2].mul(ps[2]).mean().mul(3.5);
        loss.backward();
    }

    static void Run(Parameter[] ps, Action<int> optimize, int from, int to)
    {
        for (var step = from; step < to; step++)
        {
            foreach (var p in ps) { using var g = p.grad; g?.zero_(); }
            Backward(ps, step);
            optimize(step);
        }
    }

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static double LearningRate(int step) => step < 3 ? 1e-2 : 3e-3;

    [Fact]
    public void Matches_TorchSharps_AdamW_bit_for_bit_with_weight_decay_a_changing_rate_and_a_missing_gradient()
    {
        var ours = Parameters(7);
        var theirs = Parameters(7);
        using var mine = new AdamW(ours, 1e-2, weightDecay: 0.1);
        using var reference = optim.AdamW(theirs, lr: 1e-2, weight_decay: 0.1);
        Run(ours, step => { mine.LearningRate = LearningRate(step); mine.Step(); }, 0, 6);
        Run(theirs, step => { foreach (var g in reference.ParamGroups) g.LearningRate = LearningRate(step); reference.step(); }, 0, 6);
        for (var i = 0; i < ours.Length; i++)
        {
            Assert.True(Same(ours[i], theirs[i]), $"parameter {i} differs: max |Δ| = {(ours[i] - theirs[i]).abs().max().item<float>()}");
            Assert.False(Same(ours[i], Parameters(7)[i]), $"parameter {i} did not move");
        }
    }

    [Fact]
    public void A_run_resumed_from_its_saved_state_ends_where_an_uninterrupted_one_does_and_a_foreign_state_is_refused()
    {
        var straight = Parameters(3);
        using (var o = new AdamW(straight, 5e-3)) Run(straight, _ => o.Step(), 0, 5);

        var resumed = Parameters(3);
        var file = Path.Combine(TestSupport.TempDir(), "optimizer.safetensors");
        using (var first = new AdamW(resumed, 5e-3))
        {
            Run(resumed, _ => first.Step(), 0, 3);
            first.Save(file);
        }
        using (var second = new AdamW(resumed, 5e-3))
        {
            second.Load(file);
            Run(resumed, _ => second.Step(), 3, 5);
        }
        for (var i = 0; i < straight.Length; i++) Assert.True(Same(straight[i], resumed[i]), $"parameter {i} differs after the resume");

        using var other = new AdamW(Parameters(3).Take(2), 5e-3);
        var e = Assert.Throws<InvalidDataException>(() => other.Load(file));
        Assert.Contains("optimizer state for 3 parameters, this run has 2", e.Message);
    }
}
