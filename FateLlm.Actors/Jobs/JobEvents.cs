namespace FateLlm.Actors.Jobs;

/// <summary>Persisted job history; bound to the JSON branch of <see cref="Serialization.FederationSerializer"/> for stable manifests.</summary>
public interface IJobEvent;

public sealed record JobSubmitted(JobSpec Spec, string InitialDigest, DateTime At) : IJobEvent;
public sealed record RoundStarted(int Round, int Attempt, DateTime At) : IJobEvent;
public sealed record RoundCompleted(RoundSummary Summary, string? ServerStateDigest, DateTime At) : IJobEvent;
public sealed record RoundAttemptFailed(int Round, int Attempt, string Reason, DateTime At) : IJobEvent;
public sealed record FinalEvaluationRecorded(PartyEvaluation[] Results, DateTime At) : IJobEvent;
public sealed record JobCompleted(string OutputDir, DateTime At) : IJobEvent;
public sealed record JobFailed(string Reason, DateTime At) : IJobEvent;
public sealed record JobCancelled(DateTime At) : IJobEvent;
