using System.Text.Json;
using System.Text.Json.Serialization;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Rounds;

public interface IRoundCommand : IControlMessage
{
    string RoundId { get; }
}

/// <summary>
/// Runs one attempt of one round (entity id <c>job/round/attempt</c>) from the job's state. <see cref="Resume"/> set:
/// start at a later exchange, because the job recorded the earlier ones before the arbiter restarted.
/// </summary>
/// <param name="SpecBlob">The spec as a blob on the arbiter's blob server: what parties fetch once per job.</param>
public sealed record StartRound(string JobId, int Round, int Attempt, JobSpec Spec, BlobLocation SpecBlob, AlgorithmState State,
    string[] Participants, RoundResume? Resume) : IRoundCommand
{
    [JsonIgnore] public string RoundId => RoundIds.Of(JobId, Round, Attempt);
    /// <summary>How long each exchange waits for its parties (derived by the job from round 1); null: the spec's deadline.</summary>
    public TimeSpan? Deadline { get; init; }
    [JsonIgnore] public TimeSpan ExchangeDeadline => Deadline ?? Spec.Round.Deadline;
}

public sealed record RoundResume(int Phase, Exchange Exchange, AlgorithmState State);

/// <summary>The job stopped this round (cancelled): tell the parties to stop and passivate.</summary>
public sealed record AbortRound(string JobId, int Round, int Attempt, string Reason) : IRoundCommand
{
    [JsonIgnore] public string RoundId => RoundIds.Of(JobId, Round, Attempt);
}

/// <summary>What an attempt is doing, as the job's watchdog, its status and the board see it.</summary>
[JsonConverter(typeof(LowercaseEnumConverter<RoundStage>))]
public enum RoundStage
{
    /// <summary>The job started the attempt; the round configures its first exchange.</summary>
    Configure,
    /// <summary>An exchange asks its parties and collects their updates.</summary>
    Collect,
    /// <summary>Validation, DP and the algorithm's server step over the collected updates.</summary>
    Step,
}

/// <summary>Enums in lowercase in JSON (<c>"collect"</c>), as operators and the board read them.</summary>
public sealed class LowercaseEnumConverter<T>() : JsonStringEnumConverter<T>(JsonNamingPolicy.KebabCaseLower) where T : struct, Enum;

public static class RoundStageNames
{
    public static string Name(this RoundStage stage) => stage.ToString().ToLowerInvariant();
}

/// <summary>To the job: a stage of the round began and may take this long (the job's watchdog budget).</summary>
public sealed record RoundProgress(string JobId, int Round, int Attempt, int Phase, RoundStage Stage, TimeSpan Budget) : IControlMessage
{
    /// <summary>For a collect stage: the parties this exchange asks.</summary>
    public string[] Asked { get; init; } = [];
}

/// <summary>To the job: one party's answer to the exchange in flight is settled (live progress for operators).</summary>
/// <summary>A party of the exchange in flight moved on (stage, step n of N), for the job's status and the board.</summary>
public sealed record RoundPartyProgress(string JobId, int Round, int Attempt, int Phase, string Org, Parties.WorkProgress Progress) : IControlMessage;

public sealed record RoundPartyAnswered(string JobId, int Round, int Attempt, int Phase, string Org, bool Succeeded, string? Reason) : IControlMessage;

/// <summary>To the job: an exchange completed and the round goes on with <see cref="Next"/>; persisted so a restart resumes there.</summary>
public sealed record RoundPhaseDone(string JobId, int Round, int Attempt, int Phase, AlgorithmState State, Exchange Next) : IControlMessage;

public sealed record RoundFinished(string JobId, int Round, int Attempt, bool Succeeded, string? Reason, AlgorithmState? State,
    RoundSummary? Summary) : IControlMessage;

public static class RoundIds
{
    public static string Of(string job, int round, int attempt) => $"{job}/{round}/{attempt}";
}
