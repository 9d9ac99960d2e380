namespace FateLlm.Training.Privacy;

/// <summary>
/// The privacy a job has spent so far, as an immutable value: the RDP of every sampled Gaussian step composed, order by
/// order (<see cref="RdpAccountant"/>). A job folds one step in per round, so ε is read off without replaying history.
/// </summary>
public sealed class PrivacyLedger
{
    public static readonly PrivacyLedger Empty = new(new double[RdpAccountant.DefaultOrders.Length], 0);
    readonly double[] _rdp;

    PrivacyLedger(double[] rdp, int steps)
    {
        _rdp = rdp;
        Steps = steps;
    }

    public int Steps { get; }

    /// <summary>This ledger with one more step of sampling rate q and noise multiplier z.</summary>
    public PrivacyLedger Compose(double samplingRate, double noiseMultiplier)
    {
        var step = RdpAccountant.SampledGaussianRdp(samplingRate, noiseMultiplier, RdpAccountant.DefaultOrders);
        var rdp = new double[_rdp.Length];
        for (int i = 0; i < rdp.Length; i++) rdp[i] = _rdp[i] + step[i];
        return new PrivacyLedger(rdp, Steps + 1);
    }

    /// <summary>ε at δ of everything composed (0 before any step).</summary>
    public double Epsilon(double delta) => Steps == 0 ? 0 : RdpAccountant.EpsilonFromRdp(RdpAccountant.DefaultOrders, _rdp, delta).Epsilon;
}
