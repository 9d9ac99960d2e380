using FateLlm.Training.Federation;

namespace FateLlm.Training.Ipr;

/// <summary>
/// <c>job.ipr { ... }</c>: FedIPR ownership watermarks (defaults in reference.conf <c>fate-llm.job-defaults.ipr</c>).
/// The job names only the shape of the watermark; every party's keys are its own and stay on its node.
/// </summary>
public sealed record IprOptions
{
    public bool Enabled { get; init; }
    /// <summary>The sign watermark sits in the norm scales of this many last blocks.</summary>
    public int Blocks { get; init; } = 1;
    /// <summary>Bits per party; 0 = auto, FATE's capacity bound ⌊P / parties⌋ − 1.</summary>
    public int Bits { get; init; } = 64;
    public double Margin { get; init; } = 0.25;
    /// <summary>How far the expected aggregate's z of a bit short of the margin moves per local step.</summary>
    public double LearningRate { get; init; } = 0.1;
    public int Triggers { get; init; } = 8;
    public int TriggersPerBatch { get; init; } = 1;

    public static IprOptions Off => new();

    /// <summary>Bits each party embeds given the embeddable scalars P and the party count K; refuses Σ bits ≥ P.</summary>
    public int BitsPerParty(long embeddable, int parties, string where)
    {
        var bits = Bits > 0 ? Bits : (int)Math.Min(int.MaxValue, embeddable / parties - 1);
        if (bits < 1 || (long)bits * parties >= embeddable)
            throw new JobSpecException($"job.ipr.bits: {parties} parties × {(Bits > 0 ? bits : "auto")} bits = {(long)Math.Max(bits, 0) * parties} must stay below the {embeddable} embeddable norm scalars of {where}; lower job.ipr.bits or raise job.ipr.blocks");
        return bits;
    }

    public void Validate()
    {
        if (!Enabled) return;
        void Check(bool ok, string field, string message)
        {
            if (!ok) throw new JobSpecException($"job.ipr.{field} {message}");
        }
        Check(Blocks >= 1, "blocks", $"must be ≥ 1, got {Blocks}");
        Check(Bits >= 0, "bits", $"must be ≥ 1 or auto, got {Bits}");
        Check(Margin > 0, "margin", $"must be > 0 (a zero margin leaves bits on the sign boundary, where aggregation flips them), got {Margin}");
        Check(LearningRate > 0, "learning-rate", $"must be > 0, got {LearningRate}");
        Check(Triggers >= 0, "triggers", $"must be ≥ 0, got {Triggers}");
        Check(TriggersPerBatch >= 1, "triggers-per-batch", $"must be ≥ 1, got {TriggersPerBatch}");
    }
}
