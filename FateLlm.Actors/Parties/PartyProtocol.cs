using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;

namespace FateLlm.Actors.Parties;

public interface IPartyCommand : IControlMessage
{
    string Org { get; }
}

/// <summary>Train from the global adapter and upload the delta. Idempotent per (job, round, attempt): a repeat re-acknowledges.</summary>
public sealed record TrainRequest(string Org, string JobId, int Round, int Attempt, JobSpec Spec, BlobLocation Global) : IPartyCommand;

public sealed record TrainAccepted(string Org, string JobId, int Round, int Attempt) : IControlMessage;

/// <summary>The party's delta is ready to be pulled from its blob server.</summary>
public sealed record UpdateReady(string Org, string JobId, int Round, int Attempt, BlobLocation Delta, long Samples,
    double FirstLoss, double LastLoss, double? EvalLoss, double TrainSeconds, long DownloadBytes) : IControlMessage;

public sealed record UpdateFailed(string Org, string JobId, int Round, int Attempt, string Reason) : IControlMessage;

/// <summary>Evaluate a global adapter on the party's evaluation data (generation metrics included).</summary>
public sealed record EvaluateRequest(string Org, string JobId, JobSpec Spec, BlobLocation Adapter) : IPartyCommand;

public sealed record EvaluateReply(string Org, string JobId, PartyEvaluation? Result, string? Error) : IControlMessage;
