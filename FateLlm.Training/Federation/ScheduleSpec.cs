using System.Text.Json.Serialization;

namespace FateLlm.Training.Federation;

/// <summary>How a job's global model moves on: in synchronous rounds, or by buffered asynchronous flushes (FedBuff).</summary>
public enum ScheduleMode { Sync, Buffered }

/// <summary>How much a buffered update counts given its staleness s: 1, or (1 + s)^−a (FedBuff's polynomial weight).</summary>
public enum StalenessWeighting { Constant, Polynomial }

/// <summary>
/// <c>job.schedule</c>. Under <see cref="ScheduleMode.Buffered"/> (FedBuff, Nguyen et al. 2022) the arbiter keeps
/// <see cref="Concurrency"/> parties training, each from the global version it downloaded; every <see cref="Buffer"/>
/// validated updates it takes one server step with the FedAvg family's rule over Σ p_i·w(s_i)·Δ_i (p_i the sample share,
/// s_i = version now − the update's base version, refused beyond <see cref="MaxStaleness"/>) and publishes the next
/// version. <c>job.rounds</c> then counts versions (flushes).
/// </summary>
public sealed record ScheduleSpec
{
    public required ScheduleMode Mode { get; init; }
    /// <summary>K: updates per flush.</summary>
    public required int Buffer { get; init; }
    /// <summary>S: an update based on a version more than this many flushes old is refused.</summary>
    public required int MaxStaleness { get; init; }
    public required StalenessWeighting Weighting { get; init; }
    /// <summary>a in (1 + s)^−a.</summary>
    public required double Exponent { get; init; }
    /// <summary>C: parties training at once (0: every party).</summary>
    public required int Concurrency { get; init; }
    /// <summary>η_g of the flush's server step; null: <c>aggregation.server-learning-rate</c>.</summary>
    public double? ServerLearningRate { get; init; }

    /// <summary>What jobs written before schedules existed ran: synchronous rounds.</summary>
    public static ScheduleSpec Synchronous { get; } = new()
    {
        Mode = ScheduleMode.Sync, Buffer = 1, MaxStaleness = 0, Weighting = StalenessWeighting.Constant, Exponent = 0.5, Concurrency = 0,
    };

    [JsonIgnore] public bool Buffered => Mode == ScheduleMode.Buffered;

    /// <summary>w(s): how much an update <paramref name="staleness"/> versions old counts (1 when fresh).</summary>
    public double Weight(int staleness)
    {
        if (staleness < 0) throw new ArgumentOutOfRangeException(nameof(staleness), staleness, "an update cannot be based on a later version than the current one");
        return Weighting == StalenessWeighting.Constant ? 1.0 : Math.Pow(1 + staleness, -Exponent);
    }

    /// <summary>Why an update <paramref name="staleness"/> versions old is refused, or null when it may count.</summary>
    public string? Refusal(int staleness, int baseVersion, int version) => staleness > MaxStaleness
        ? $"stale: trained from version {baseVersion}, the global is at version {version} (staleness {staleness} > schedule.buffered.max-staleness {MaxStaleness})"
        : null;

    public int ConcurrencyFor(int parties) => Concurrency > 0 ? Math.Min(Concurrency, parties) : parties;

    public static ScheduleMode ParseMode(string s) => s.ToLowerInvariant() switch
    {
        "sync" or "synchronous" => ScheduleMode.Sync,
        "buffered" or "async" or "fedbuff" => ScheduleMode.Buffered,
        _ => throw new ArgumentException($"'{s}' is not one of sync, buffered"),
    };

    public static StalenessWeighting ParseWeighting(string s) => s.ToLowerInvariant() switch
    {
        "constant" => StalenessWeighting.Constant,
        "polynomial" => StalenessWeighting.Polynomial,
        _ => throw new ArgumentException($"'{s}' is not one of constant, polynomial"),
    };
}
