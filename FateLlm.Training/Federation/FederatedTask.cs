using FateLlm.Training.Data;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Federation;

/// <summary>What every party trains with in a job: base model, PEFT method, local optimisation, data layout.</summary>
public sealed record FederatedTask
{
    public required string ModelPath { get; init; }
    public required string ModelDigest { get; init; }
    public PeftConfig Peft { get; init; } = new();
    public int LocalEpochs { get; init; } = 1;
    public int? LocalSteps { get; init; }
    public int BatchSize { get; init; } = 8;
    public double LearningRate { get; init; } = 2e-4;
    public double WarmupRatio { get; init; }
    public LrSchedule Schedule { get; init; } = LrSchedule.Constant;
    public double ProximalMu { get; init; }
    public long Seed { get; init; } = 42;
    public DataOptions Data { get; init; } = new();
    public int Threads { get; init; } = 1;
}

public sealed record LocalRoundResult(byte[] Delta, long Samples, int Steps, double FirstLoss, double LastLoss, double? EvalLoss, double Seconds);

public sealed record EvaluationResult(double Loss, double Perplexity, double? Rouge1, double? Rouge2, double? RougeL, double? Bleu4, int Samples);

/// <summary>What the arbiter enforces when it aggregates a round.</summary>
public sealed record RoundRules(double MaxNorm, int MinAccepted, Privacy.DpOptions Dp, int ExpectedParties);

public sealed record AggregateResult(byte[] Global, byte[] ServerState, IReadOnlyList<(string Party, string Reason)> Rejected, IReadOnlyDictionary<string, double> Metrics);
