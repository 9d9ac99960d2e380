using static TorchSharp.torch;

namespace FateLlm.Training.Privacy;

public enum DpMode { Off, Central, Distributed }

/// <summary>Client-level DP-FedAvg settings (McMahan et al. 2018), with optional adaptive clipping (Andrew et al. 2021).</summary>
public sealed record DpOptions
{
    public DpMode Mode { get; init; } = DpMode.Off;
    /// <summary>Initial (or fixed) clipping norm C of one party's update.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Noise multiplier z: the round's aggregate carries N(0, z²C²) per coordinate.</summary>
    public double NoiseMultiplier { get; init; } = 1.0;
    public double Delta { get; init; } = 1e-5;
    /// <summary>The job stops before a round that would take ε past this.</summary>
    public double? EpsilonBudget { get; init; }
    public bool AdaptiveClip { get; init; }
    public double TargetQuantile { get; init; } = 0.5;
    public double ClipLearningRate { get; init; } = 0.2;
    /// <summary>Noise on the count of unclipped parties, as a multiple of the expected party count (σ_b = this · m).</summary>
    public double ClipCountNoise { get; init; } = 0.05;

    public bool Enabled => Mode != DpMode.Off;

    public void Validate()
    {
        if (!Enabled) return;
        if (!(ClipNorm > 0)) throw new ArgumentException($"dp.clip-norm must be > 0 (got {ClipNorm})");
        if (!(NoiseMultiplier >= 0)) throw new ArgumentException($"dp.noise-multiplier must be ≥ 0 (got {NoiseMultiplier})");
        if (Delta is <= 0 or >= 1) throw new ArgumentException($"dp.delta must be in (0, 1) (got {Delta})");
        if (EpsilonBudget is <= 0) throw new ArgumentException($"dp.epsilon-budget must be > 0 (got {EpsilonBudget})");
        if (TargetQuantile is <= 0 or >= 1) throw new ArgumentException($"dp.target-quantile must be in (0, 1) (got {TargetQuantile})");
        if (AdaptiveClip && !(ClipCountNoise > 0)) throw new ArgumentException("dp.clip-count-noise must be > 0 with adaptive clipping");
    }

    /// <summary>
    /// The noise multiplier left for the update once the clip-count query spends its share (Andrew et al. 2021, §3.1):
    /// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), σ_b in units of parties. Without adaptive clipping it is z.
    /// </summary>
    public double UpdateNoiseMultiplier(int expectedParties)
    {
        if (!AdaptiveClip || NoiseMultiplier == 0) return NoiseMultiplier;
        var sigmaB = ClipCountNoise * expectedParties;
        var inv = Math.Pow(NoiseMultiplier, -2) - Math.Pow(2 * sigmaB, -2);
        if (inv <= 0)
            throw new ArgumentException($"dp: clip-count noise σ_b = {sigmaB:G3} is too small for noise multiplier {NoiseMultiplier}: need 2σ_b > z");
        return Math.Pow(inv, -0.5);
    }
}

/// <summary>The arithmetic of client-level DP on named tensors: L2 norms, clipping, Gaussian noise, the adaptive clip step.</summary>
public static class ClientDp
{
    public static double L2Norm(IReadOnlyDictionary<string, Tensor> tensors)
    {
        using var _ = no_grad();
        double sq = 0;
        foreach (var t in tensors.Values) sq += t.to(ScalarType.Float64).square().sum().item<double>();
        return Math.Sqrt(sq);
    }

    /// <summary>Scales the update in place to norm at most <paramref name="clip"/>; returns its norm before clipping.</summary>
    public static double ClipInPlace(IReadOnlyDictionary<string, Tensor> update, double clip)
    {
        var norm = L2Norm(update);
        if (norm > clip)
        {
            using var _ = no_grad();
            foreach (var t in update.Values) t.mul_(clip / norm);
        }
        return norm;
    }

    /// <summary>Adds N(0, std²) to every coordinate, from a generator seeded with fresh entropy unless a seed is given (tests).</summary>
    public static void AddGaussianNoise(IReadOnlyDictionary<string, Tensor> tensors, double std, long? seed = null)
    {
        if (std == 0) return;
        using var _ = no_grad();
        var gen = new Generator((ulong)(seed ?? BitConverter.ToInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8))));
        foreach (var name in tensors.Keys.Order(StringComparer.Ordinal))
        {
            var t = tensors[name];
            using var noise = randn(t.shape, ScalarType.Float64, generator: gen).mul_(std).to(t.dtype);
            t.add_(noise);
        }
    }

    /// <summary>Geometric quantile tracking: C ← C·exp(−η(b̄ − γ)), b̄ the (noised) fraction of parties whose norm was ≤ C.</summary>
    public static double NextClip(double clip, double unclippedFraction, double targetQuantile, double learningRate) =>
        clip * Math.Exp(-learningRate * (unclippedFraction - targetQuantile));

    /// <summary>A scalar N(0, std²) draw from fresh entropy (the clip-count noise).</summary>
    public static double Gaussian(double std, Random? rng = null)
    {
        rng ??= new Random(BitConverter.ToInt32(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4)));
        var u1 = 1 - rng.NextDouble();
        var u2 = rng.NextDouble();
        return std * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
