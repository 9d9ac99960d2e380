using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Jobs;

/// <summary>
/// Persisted job history (schema v2), bound to <see cref="Serialization.FederationSerializer"/>: JSON under stable,
/// versioned manifests. Events written by the pre-plug-in code (v1) are upcast on read (<see cref="Serialization.JournalSchemaV1"/>).
/// </summary>
public interface IJobEvent;

/// <param name="SpecDigest">The spec as a blob in the arbiter's store: parties fetch it once per job.</param>
public sealed record JobSubmitted(JobSpec Spec, AlgorithmState Initial, string SpecDigest, DateTime At) : IJobEvent
{
    /// <summary>The submission that made the job (<see cref="SubmitJob.Submission"/>): a client re-sending it is answered as accepted.</summary>
    public string Submission { get; init; } = "";
}

/// <param name="Participants">The parties this attempt asks (the round's sample), recorded so a replay asks the same.</param>
public sealed record RoundStarted(int Round, int Attempt, string[] Participants, DateTime At) : IJobEvent;

/// <summary>One exchange of a multi-phase round is done: its state and the next exchange, so a restarted arbiter resumes there.</summary>
public sealed record RoundPhaseCompleted(int Round, int Attempt, int Phase, AlgorithmState State, Exchange Next, DateTime At) : IJobEvent;

public sealed record RoundCompleted(RoundSummary Summary, AlgorithmState State, DateTime At) : IJobEvent;
public sealed record RoundAttemptFailed(int Round, int Attempt, string Reason, DateTime At) : IJobEvent;
public sealed record FinalEvaluationRecorded(PartyEvaluation[] Results, DateTime At) : IJobEvent
{
    /// <summary>Why no party evaluated at all (the plan failed); null when the evaluation ran.</summary>
    public string? Problem { get; init; }
    /// <summary>Parties asked to evaluate that did not, each with why (no node, an error, no answer in time).</summary>
    public IReadOnlyDictionary<string, string> Missing { get; init; } = new Dictionary<string, string>();
}
public sealed record JobCompleted(string OutputDir, DateTime At) : IJobEvent;
public sealed record JobFailed(string Reason, DateTime At) : IJobEvent;
public sealed record JobCancelled(DateTime At) : IJobEvent
{
    public string Reason { get; init; } = CancelJob.ByOperator;
}

// The buffered schedule (job.schedule = buffered). A flush is a RoundCompleted whose summary carries its FlushReport.

/// <summary>A party was asked to train from global version <see cref="BaseVersion"/>; the update id is its work's round.</summary>
/// <param name="Exchange">What it was told (downloads, parameters), so a restarted arbiter asks it again the same.</param>
public sealed record UpdateDispatched(int UpdateId, string Org, int BaseVersion, Exchange Exchange, DateTime At) : IJobEvent;

/// <summary>A dispatched update arrived, was pulled into the store (<see cref="Digest"/>) and waits in the buffer for a flush.</summary>
public sealed record UpdateBuffered(int UpdateId, string Org, int BaseVersion, string Digest, PartyRoundReport Report, DateTime At) : IJobEvent;

/// <summary>A dispatched or buffered update that will not count: the party failed, dropped out, or its update grew too stale.</summary>
public sealed record UpdateDropped(int UpdateId, string Org, string Reason, DateTime At) : IJobEvent;
