using FateLlm.Training.Federation;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;

namespace FateLlm.Actors.Board;

// What an arbiter's jobs and rounds publish on its event stream for the live board (relayed to the boards on every
// arbiter by BoardRelay), and the board's snapshot: plain data a web page renders.

/// <summary>A job's status after a change (published by the job entity outside recovery).</summary>
public sealed record JobObserved(JobStatus Status) : IControlMessage;

/// <summary>A party acknowledged the exchange's work: it is training.</summary>
public sealed record PartyWorkStarted(WorkId Work, string Org) : IControlMessage;

/// <summary>The arbiter began pulling a party's update of <paramref name="Bytes"/> bytes.</summary>
public sealed record PartyUploadStarted(WorkId Work, string Org, long Bytes) : IControlMessage;

public sealed record BoardSnapshot(DateTime At, long Version, MemberView[] Members, JobView[] Jobs, EventLine[] Events);

/// <param name="Status">Akka's member status (Up, Leaving, …); <paramref name="Reachable"/> from the failure detector.</param>
public sealed record MemberView(string Address, string[] Roles, string? Organization, string Status, bool Reachable)
{
    /// <summary>The member's FateLlm version (Akka's app-version) and the wire protocol it announced (null: none).</summary>
    public string? Version { get; init; }
    public string? Wire { get; init; }
}

public sealed record JobView(string JobId, string State, string? Algorithm, int CompletedRounds, int TotalRounds, string? Reason,
    double? Epsilon, CurrentRoundView? Current, RoundPoint[] Rounds, PartyEvaluation[] FinalEvaluation, string? OutputDir)
{
    /// <summary>The final evaluation's tasks, document-weighted over the parties that scored them.</summary>
    public TaskScore[] Tasks => [.. TaskScore.Aggregate(FinalEvaluation.SelectMany(e => e.Tasks))];
    /// <summary>A buffered job while it runs: its version, the buffer filling, who trains from which version.</summary>
    public BufferStatus? Buffer { get; init; }
}

/// <param name="SecureAggregation">The secure-aggregation step in flight and who has answered it; null outside one.</param>
public sealed record CurrentRoundView(int Round, int Attempt, int Exchange, string Stage, PartyView[] Parties, SecureStepView? SecureAggregation);

/// <param name="State">asked | training | uploading | done | rejected | dropped</param>
/// <param name="Detail">The reason (rejected, dropped) or the progress (seconds training, bytes uploading).</param>
public sealed record PartyView(string Org, string State, string? Detail, DateTime Since);

public sealed record SecureStepView(string Step, string[] Waiting, string[] Answered);

/// <summary>
/// One completed round, for the charts: sample-weighted training loss, mean dev loss, bytes moved, ε so far; and how
/// each party ended it (<see cref="PartyView"/> states done | failed | rejected | dropped, with the reason).
/// </summary>
public sealed record RoundPoint(int Round, int Attempt, double Seconds, double? Loss, double? EvalLoss, long Bytes, double? Epsilon,
    int Parties, int Dropped, int Rejected, string? SecureAggregation, PartyView[] Outcomes)
{
    /// <summary>A buffered flush's updates with their staleness and weight (none for a synchronous round).</summary>
    public BufferContribution[] Buffer { get; init; } = [];
}

/// <param name="Level">info | warning</param>
public sealed record EventLine(DateTime At, string Level, string Text);
