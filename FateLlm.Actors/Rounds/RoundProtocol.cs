using Akka.Actor;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;

namespace FateLlm.Actors.Rounds;

public interface IRoundCommand : IControlMessage
{
    string RoundId { get; }
}

/// <summary>Runs one attempt of one round; the entity id is <c>job/round/attempt</c>.</summary>
public sealed record StartRound(string JobId, int Round, int Attempt, JobSpec Spec, BlobLocation Global, string? ServerStateDigest) : IRoundCommand
{
    public string RoundId => RoundIds.Of(JobId, Round, Attempt);
}

public sealed record RoundFinished(string JobId, int Round, int Attempt, bool Succeeded, string? Reason, string? GlobalDigest,
    string? ServerStateDigest, RoundSummary? Summary) : IControlMessage;

public static class RoundIds
{
    public static string Of(string job, int round, int attempt) => $"{job}/{round}/{attempt}";
}
