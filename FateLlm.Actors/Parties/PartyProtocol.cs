using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Parties;

public interface IPartyCommand : IControlMessage
{
    string Org { get; }
}

/// <summary>Train from the global adapter and upload the delta. Idempotent per (job, round, attempt): a repeat re-acknowledges.</summary>
public sealed record TrainRequest(string Org, string JobId, int Round, int Attempt, JobSpec Spec, BlobLocation Global) : IPartyCommand;

public sealed record TrainAccepted(string Org, string JobId, int Round, int Attempt) : IControlMessage;

/// <summary>
/// The party has trained. In plain rounds its delta is ready to be pulled from its blob server; under secure
/// aggregation there is no pullable delta (<see cref="Delta"/> is null) and the message advertises the party's keys.
/// </summary>
public sealed record UpdateReady(string Org, string JobId, int Round, int Attempt, BlobLocation? Delta, long Samples,
    double FirstLoss, double LastLoss, double? EvalLoss, double TrainSeconds, long DownloadBytes) : IControlMessage
{
    public SecAggKeys? Keys { get; init; }
}

public sealed record UpdateFailed(string Org, string JobId, int Round, int Attempt, string Reason) : IControlMessage;

/// <summary>Evaluate a global adapter on the party's evaluation data (generation metrics included).</summary>
public sealed record EvaluateRequest(string Org, string JobId, JobSpec Spec, BlobLocation Adapter) : IPartyCommand;

public sealed record EvaluateReply(string Org, string JobId, PartyEvaluation? Result, string? Error) : IControlMessage;

// Secure aggregation steps 2–4 (step 1, the keys, rides on UpdateReady). Each request is idempotent per
// (job, round, attempt): a repeat gets the same answer. Shares and masks are tied to the round's session id.

/// <summary>Step 2: the keys of the party's neighbours that advertised; answer with sealed shares.</summary>
public sealed record SecAggShareRequest(string Org, string JobId, int Round, int Attempt, SecAggKeys[] Advertised) : IPartyCommand;

public sealed record SecAggSharesReady(string Org, string JobId, int Round, int Attempt, ShareBundle Bundle) : IControlMessage;

/// <summary>Step 3: the shares addressed to this party and this round's clip norm; answer with the masked input's blob.</summary>
public sealed record SecAggMaskRequest(string Org, string JobId, int Round, int Attempt, EncryptedShare[] Inbox, double ClipNorm) : IPartyCommand;

public sealed record SecAggMaskedReady(string Org, string JobId, int Round, int Attempt, BlobLocation Masked) : IControlMessage;

/// <summary>Step 4: who uploaded a masked input; answer with the shares that let the arbiter strip the masks.</summary>
public sealed record SecAggUnmaskRequest(string Org, string JobId, int Round, int Attempt, string[] Survivors) : IPartyCommand;

public sealed record SecAggUnmaskReady(string Org, string JobId, int Round, int Attempt, UnmaskShares Shares) : IControlMessage;

public sealed record SecAggStepFailed(string Org, string JobId, int Round, int Attempt, string Step, string Reason) : IControlMessage;
