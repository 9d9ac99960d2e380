using System.Text.Json.Serialization;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>SecAgg+ settings of a job; threshold and degree 0 mean "derive from the cohort size".</summary>
public sealed record SecureAggregationOptions
{
    public required bool Enabled { get; init; }
    public required int Threshold { get; init; }
    public required int Degree { get; init; }
    /// <summary>Each coordinate of a (weighted) update is clipped to [−r, r] before quantization.</summary>
    public required double ClipRange { get; init; }
    /// <summary>Without DP a party weighs its update by min(samples, cap) / cap, so weights stay in [0, 1].</summary>
    public required long SampleCap { get; init; }
    /// <summary>How long each SecAgg step waits for stragglers before treating them as dropouts.</summary>
    public required double PhaseTimeoutSeconds { get; init; }

    [JsonIgnore] public TimeSpan PhaseTimeout => TimeSpan.FromSeconds(PhaseTimeoutSeconds);

    /// <summary>The steps after the update is offered (share keys, masked input, unmask) that each wait up to the phase timeout.</summary>
    public const int TimedSteps = 3;

    public int ThresholdFor(int parties) => Threshold > 0 ? Threshold : Math.Max(2, (Math.Min(DegreeFor(parties), parties - 1) + 1) / 2 + 1);
    public int DegreeFor(int parties) => Degree > 0 ? Math.Min(Degree, parties - 1) : SecAggSession.DefaultDegree(parties, 2);
}
