using FateLlm.Training.Federation;

namespace FateLlm.Actors.Jobs;

public interface IJobCommand : IControlMessage
{
    string JobId { get; }
}

/// <param name="Submission">
/// Names this request (a fresh id per client invocation): a client that hears nothing re-sends it, and a job made by
/// the same submission answers it as accepted instead of "already exists", so a lost reply never loses or doubles a job.
/// </param>
public sealed record SubmitJob(string JobId, JobSpec Spec) : IJobCommand
{
    public string Submission { get; init; } = "";
}
public sealed record GetJobStatus(string JobId) : IJobCommand;
public sealed record CancelJob(string JobId) : IJobCommand
{
    public const string ByOperator = "cancelled by an operator";
    public string Reason { get; init; } = ByOperator;
}

/// <param name="WaitingFor">Organizations with no party node yet, whom round 1 waits for (up to <paramref name="WaitUpTo"/>).</param>
public sealed record JobAccepted(string JobId) : IControlMessage
{
    public string[] WaitingFor { get; init; } = [];
    public TimeSpan WaitUpTo { get; init; }
}
public sealed record JobRejected(string JobId, string Reason) : IControlMessage;

public enum JobState { Unknown, Preparing, Running, Completed, Failed, Cancelled }

/// <summary>One party's part in a round. Losses and times come from its update's metrics (NaN when it did not answer).</summary>
public sealed record PartyRoundReport(string Org, bool Succeeded, string? Reason, long Samples, double FirstLoss, double LastLoss,
    double? EvalLoss, long UploadBytes, long DownloadBytes, int Retransmissions, double TrainSeconds) : IControlMessage
{
    /// <summary>Everything the party's algorithm reported, by name (losses, steps, algorithm-specific figures).</summary>
    public IReadOnlyDictionary<string, double> Metrics { get; init; } = new Dictionary<string, double>();
}

/// <summary>A round's DP accounting: sampling rate q, effective noise multiplier z, clip norm C, and ε after this round (cumulative).</summary>
public sealed record RoundPrivacy(double SamplingRate, double NoiseMultiplier, double ClipNorm, double Epsilon, double Delta) : IControlMessage
{
    /// <summary>ε of this round alone, at the same δ.</summary>
    public double RoundEpsilon { get; init; } = double.NaN;
}

/// <param name="GlobalDigest">The state's <c>global</c> artifact when the algorithm has one (the global adapter).</param>
public sealed record RoundSummary(int Round, int Attempt, string? GlobalDigest, double Seconds, PartyRoundReport[] Parties) : IControlMessage
{
    public RoundPrivacy? Privacy { get; init; }
    /// <summary>Updates refused before aggregation, one line each naming the party and the reason.</summary>
    public string[] Rejections { get; init; } = [];
    /// <summary>Under secure aggregation: how many parties reached each step and which dropouts were recovered.</summary>
    public string? SecureAggregation { get; init; }
    /// <summary>Exchanges the round held (1 for single-exchange algorithms).</summary>
    public int Exchanges { get; init; } = 1;
    /// <summary>What the algorithm's server step reported, by name.</summary>
    public IReadOnlyDictionary<string, double> Metrics { get; init; } = new Dictionary<string, double>();
    /// <summary>Under a buffered schedule the round is a flush (its number the version it published): what went into it.</summary>
    public FlushReport? Buffer { get; init; }
}

/// <summary>One update of a buffered flush: its id, party, the version it trained from, its staleness and weight w(s).</summary>
public sealed record BufferContribution(int UpdateId, string Org, int BaseVersion, int Staleness, double Weight) : IControlMessage;

/// <param name="Contributions">The updates the flush took, in arrival order (a codec's rejection is in the round's Rejections).</param>
public sealed record FlushReport(BufferContribution[] Contributions) : IControlMessage
{
    /// <summary>Every update id this flush settled: none of them is applied again.</summary>
    [System.Text.Json.Serialization.JsonIgnore] public IReadOnlySet<int> Settled => Contributions.Select(c => c.UpdateId).ToHashSet();
}

/// <summary>A buffered job now: the version, how full the buffer is, and each training party's base version and progress.</summary>
public sealed record BufferStatus(int Version, int Filled, int Size, BufferedWork[] InFlight) : IControlMessage;

/// <param name="Progress">Where its work stands ("step 3/10"), or null before it reported.</param>
public sealed record BufferedWork(int UpdateId, string Org, int BaseVersion, string? Progress) : IControlMessage;

public sealed record PartyEvaluation(string Org, double Loss, double Perplexity, double? Rouge1, double? Rouge2, double? RougeL, double? Bleu4, int Samples) : IControlMessage
{
    /// <summary>The job's evaluation tasks as this party scored them on its own data (none in jobs that name none, or journaled before tasks existed).</summary>
    public TaskScore[] Tasks { get; init; } = [];
}

public sealed record JobStatus(string JobId, JobState State, int CompletedRounds, int TotalRounds, int CurrentAttempt, string? GlobalDigest,
    string? Reason, RoundSummary[] Rounds, PartyEvaluation[] FinalEvaluation, string? OutputDir) : IControlMessage
{
    /// <summary>(ε, δ) spent so far under DP; null without DP.</summary>
    public double? Epsilon { get; init; }
    public double? Delta { get; init; }
    /// <summary>Organizations the next attempt waits for: without their nodes its quorum cannot be met, so no attempt is spent.</summary>
    public string[] WaitingFor { get; init; } = [];
    /// <summary>The last attempt that failed, with its reason (the job retries it while attempts are left).</summary>
    public AttemptFailure? LastFailure { get; init; }
    /// <summary>The round in flight: its exchange, stage and who has answered.</summary>
    public RoundInFlight? Current { get; init; }
    /// <summary>The algorithm and its state's artifacts (name → digest) after the last completed round.</summary>
    public string? Algorithm { get; init; }
    public IReadOnlyDictionary<string, string> Artifacts { get; init; } = new Dictionary<string, string>();
    /// <summary>Why the job has no final evaluation, when it could not be planned.</summary>
    public string? EvaluationProblem { get; init; }
    /// <summary>Parties left out of the final evaluation, each with why.</summary>
    public IReadOnlyDictionary<string, string> EvaluationMissing { get; init; } = new Dictionary<string, string>();
    /// <summary>Under a buffered schedule while running: the version, the buffer filling and who trains from which version.</summary>
    public BufferStatus? Buffer { get; init; }
}

/// <param name="Answers">Party → "ok" or the reason it failed, for the exchange in flight.</param>
public sealed record RoundInFlight(int Round, int Attempt, int Exchange, Rounds.RoundStage Stage, string[] Asked, IReadOnlyDictionary<string, string> Answers) : IControlMessage
{
    /// <summary>Party → where its work stands ("loading", "step 37/120, 850 tok/s"), for parties that have not answered.</summary>
    public IReadOnlyDictionary<string, string> Progress { get; init; } = new Dictionary<string, string>();
}

public sealed record AttemptFailure(int Round, int Attempt, string Reason) : IControlMessage;
