using FateLlm.Training.Aggregation;
using FateLlm.Training.Privacy;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>The RDP accountant against the values Google's dp_accounting publishes in its own tests.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class RdpAccountantSpec
{
    [Fact]
    public void Sampled_gaussian_rdp_matches_dp_accounting_at_integer_and_fractional_orders()
    {
        // dp_accounting rdp_privacy_accountant_test.test_compute_rdp_poisson_sampled_gaussian: q = 0.01, σ = 2.5, 50 steps.
        double[] orders = [2.5, 5, 50, 100];
        double[] published = [1.08548710e-03, 2.18075656e-03, 2.38460375e-02, 1.67416308e02];
        var accountant = new RdpAccountant(orders);
        accountant.Compose(0.01, 2.5, 50);
        for (int i = 0; i < orders.Length; i++)
            Assert.True(Math.Abs(accountant.Rdp[i] / published[i] - 1) < 1e-3, $"order {orders[i]}: {accountant.Rdp[i]:E6} vs {published[i]:E6}");
    }

    [Fact]
    public void Below_order_two_the_rdp_is_the_exact_renyi_divergence_by_numerical_integration()
    {
        // dp_accounting now reports 6.7058e-4 at α = 1.5 (a looser bound); TF Privacy's published 6.5007e-4 is the exact
        // divergence. Check it against A_α = ∫ μ0(z)·((1−q) + q·exp((2z−1)/(2σ²)))^α dz integrated here.
        double q = 0.01, sigma = 2.5, alpha = 1.5, h = 1e-3, a = 0;
        for (var z = -60.0; z < 60; z += h)
            a += Math.Exp(-z * z / (2 * sigma * sigma)) / (sigma * Math.Sqrt(2 * Math.PI)) * Math.Pow((1 - q) + q * Math.Exp((2 * z - 1) / (2 * sigma * sigma)), alpha) * h;
        var exact = 50 * Math.Log(a) / (alpha - 1);
        var accountant = new RdpAccountant([alpha]);
        accountant.Compose(q, sigma, 50);
        Assert.Equal(6.5007e-4, exact, 7);
        Assert.True(Math.Abs(accountant.Rdp[0] / exact - 1) < 1e-4, $"{accountant.Rdp[0]:E6} vs {exact:E6}");
    }

    [Fact]
    public void Epsilon_conversion_matches_dp_accounting_for_pure_dp()
    {
        // test_compute_epsilon_delta_pure_dp: orders 2..32, RDP 1.1 at each, δ = 1e-5 → ε = 1.32783806176 at order 32.
        var orders = Enumerable.Range(2, 31).Select(o => (double)o).ToArray();
        var (eps, order) = RdpAccountant.EpsilonFromRdp(orders, orders.Select(_ => 1.1).ToArray(), 1e-5);
        Assert.Equal(1.32783806176, eps, 9);
        Assert.Equal(32, order);
    }

    [Fact]
    public void The_gaussian_mechanism_calibrated_to_epsilon_one_reports_epsilon_one_within_one_percent()
    {
        // test_compute_epsilon_delta_gaussian: σ = 4.530877117 without sampling is exactly (1, 1e-6)-DP (dense orders).
        var accountant = new RdpAccountant();
        accountant.Compose(1.0, 4.530877117);
        var (eps, _) = accountant.Epsilon(1e-6);
        Assert.InRange(eps, 1.0, 1.01);
    }

    [Theory]
    [InlineData(0.01, 1.1, 1000, 1e-5)]
    [InlineData(0.1, 2.0, 100, 1e-6)]
    [InlineData(1.0, 5.0, 20, 1e-5)]
    public void Composition_is_additive_and_more_noise_or_fewer_rounds_means_smaller_epsilon(double q, double sigma, int steps, double delta)
    {
        var once = new RdpAccountant();
        once.Compose(q, sigma, steps);
        var stepwise = new RdpAccountant();
        for (int i = 0; i < steps; i++) stepwise.Compose(q, sigma);
        Assert.Equal(once.Epsilon(delta).Epsilon, stepwise.Epsilon(delta).Epsilon, 6);
        var noisier = new RdpAccountant();
        noisier.Compose(q, sigma * 1.5, steps);
        var shorter = new RdpAccountant();
        shorter.Compose(q, sigma, steps / 2);
        Assert.True(noisier.Epsilon(delta).Epsilon < once.Epsilon(delta).Epsilon);
        Assert.True(shorter.Epsilon(delta).Epsilon < once.Epsilon(delta).Epsilon);
    }

    [Fact]
    public void The_jobs_privacy_ledger_folds_rounds_of_different_noise_into_the_accountants_epsilon_and_leaves_earlier_values_unchanged()
    {
        var rounds = new[] { (0.5, 1.0), (0.5, 1.0), (1.0, 2.5), (0.2, 0.8) };
        var ledger = PrivacyLedger.Empty;
        var accountant = new RdpAccountant();
        Assert.Equal(0, ledger.Epsilon(1e-5));
        foreach (var (q, z) in rounds)
        {
            var before = ledger;
            var epsilonBefore = before.Epsilon(1e-5);
            ledger = ledger.Compose(q, z);
            accountant.Compose(q, z);
            Assert.Equal(accountant.Epsilon(1e-5).Epsilon, ledger.Epsilon(1e-5), 12);
            Assert.Equal(epsilonBefore, before.Epsilon(1e-5)); // a value: composing made a new one
        }
        Assert.Equal(rounds.Length, ledger.Steps);
    }

    [Fact]
    public void Log_erfc_is_accurate_far_into_the_tail()
    {
        Assert.Equal(Math.Log(0.157299207050285), RdpAccountant.LogErfc(1.0), 12);
        Assert.Equal(Math.Log(2.08848758376254e-45), RdpAccountant.LogErfc(10.0), 10);
        Assert.Equal(Math.Log(1.842700792949715), RdpAccountant.LogErfc(-1.0), 12);
    }
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ClientDpSpec
{
    static Dictionary<string, Tensor> Update(params float[] v) => new() { ["a.lora_A.weight"] = tensor(v) };

    [Fact]
    public void Clipping_bounds_every_contribution_to_the_clip_norm()
    {
        var big = Update(30, 40);
        var norm = ClientDp.ClipInPlace(big, 1.0);
        Assert.Equal(50, norm, 4);
        Assert.Equal(1.0, ClientDp.L2Norm(big), 5);
        var small = Update(0.3f, 0.4f);
        ClientDp.ClipInPlace(small, 1.0);
        Assert.Equal(0.5, ClientDp.L2Norm(small), 5);
    }

    [Fact]
    public void Central_dp_noise_has_the_calibrated_standard_deviation_and_no_party_moves_the_mean_by_more_than_c_over_m()
    {
        var global = new Dictionary<string, Tensor> { ["a.lora_A.weight"] = zeros(20000) };
        var dp = new DpOptions { Mode = DpMode.Central, ClipNorm = 2.0, NoiseMultiplier = 1.5 };
        var deltas = Enumerable.Range(0, 4).Select(i => new AdapterDelta($"p{i}", new Dictionary<string, Tensor> { ["a.lora_A.weight"] = zeros(20000) }, 10)).ToList();
        var outcome = PrivateAggregation.Central(global, deltas, dp.ClipNorm, dp, expectedParties: 4, noiseSeed: 7);
        // Zero updates: what remains is the noise, N(0, (zC/m)²) per coordinate.
        var std = outcome.Mean["a.lora_A.weight"].std().item<float>();
        Assert.InRange(std, 1.5 * 2.0 / 4 * 0.97, 1.5 * 2.0 / 4 * 1.03);
        Assert.Equal(0.75, outcome.Metrics["dp.noise_std"] / 4, 6);

        var poisoned = deltas.Take(3).Append(new AdapterDelta("evil", new Dictionary<string, Tensor> { ["a.lora_A.weight"] = full(20000, 1000f) }, 10)).ToList();
        var quiet = dp with { NoiseMultiplier = 0 };
        var shifted = PrivateAggregation.Central(global, poisoned, quiet.ClipNorm, quiet, 4);
        Assert.Equal(2.0 / 4, ClientDp.L2Norm(shifted.Mean), 4);
    }

    [Fact]
    public void Adaptive_clipping_moves_the_clip_norm_toward_the_target_quantile_and_keeps_it_in_the_privacy_state()
    {
        var global = new Dictionary<string, Tensor> { ["a.lora_A.weight"] = zeros(2) };
        var dp = new DpOptions { Mode = DpMode.Central, ClipNorm = 1.0, NoiseMultiplier = 0, AdaptiveClip = true, ClipCountNoise = 0.01 };
        // All norms are 10 ≫ C: the fraction under C is 0 < 0.5, so C must grow each round.
        double clip = 1.0;
        for (int round = 0; round < 3; round++)
        {
            var deltas = Enumerable.Range(0, 5).Select(i => new AdapterDelta($"p{i}", Update(6, 8), 1)).ToList();
            var outcome = PrivateAggregation.Central(global, deltas, clip, dp, 5, noiseSeed: round);
            Assert.True(outcome.NextClip > clip);
            Assert.Equal(outcome.NextClip, outcome.Metrics["dp.next_clip"]);
            // Between rounds the clip norm lives in the privacy state artifact, and reads back exactly.
            clip = PrivacyState.Clip(PrivacyState.ToBytes(outcome.NextClip), dp);
            Assert.Equal(outcome.NextClip, clip, 12);
        }
        Assert.Equal(dp.ClipNorm, PrivacyState.Clip(null, dp));
    }

    [Fact]
    public void Adaptive_clipping_spends_part_of_the_noise_budget_on_the_count()
    {
        var dp = new DpOptions { Mode = DpMode.Central, NoiseMultiplier = 1.0, AdaptiveClip = true, ClipCountNoise = 0.5 };
        // z_Δ = (1 − (2·0.5·10)⁻²)^(−1/2)
        Assert.Equal(Math.Pow(1 - 0.01, -0.5), dp.UpdateNoiseMultiplier(10), 9);
        Assert.Throws<ArgumentException>(() => (dp with { ClipCountNoise = 0.01 }).UpdateNoiseMultiplier(10));
    }
}
