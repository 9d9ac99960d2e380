using System.Text.Json.Serialization;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Parties;

/// <summary>The correlation id of one party's work in one exchange of one round attempt; every reply echoes it.</summary>
public sealed record WorkId(string JobId, int Round, int Attempt, int Phase)
{
    public override string ToString() => $"{JobId}/{Round}/{Attempt}/{Phase}";

    /// <summary>Whether this work comes after <paramref name="other"/> of the same job (a later round, attempt or exchange).</summary>
    public bool After(WorkId other) => JobId == other.JobId && (Round, Attempt, Phase).CompareTo((other.Round, other.Attempt, other.Phase)) > 0;
}

public interface IPartyCommand : IControlMessage
{
    string Org { get; }
}

/// <summary>
/// One exchange's work for one party: fetch the job's spec (a blob, fetched once per job and then cached by digest),
/// the exchange's downloads, run the algorithm's party side, offer the update. Idempotent per <see cref="WorkId"/>:
/// a re-sent request is re-acknowledged or answered with the result.
/// </summary>
/// <param name="VectorLayout">The download defining a summable update; with secure aggregation on, the update is masked, never offered.</param>
/// <param name="Cohort">Every party of this exchange (the secure-aggregation session's members).</param>
public sealed record WorkRequest(string Org, WorkId Id, BlobLocation Spec, string Exchange, IReadOnlyDictionary<string, BlobLocation> Downloads,
    IReadOnlyDictionary<string, string> Parameters, string? VectorLayout, string[] Cohort) : IPartyCommand;

/// <summary>
/// The party has the work; answered again to every re-sent request, with where it stands: the arbiter's re-asks are the
/// heartbeat, and an answer that shows no progress for the job's <c>round-inactivity</c> fails the party.
/// </summary>
public sealed record WorkAccepted(string Org, WorkId Id) : IControlMessage
{
    public WorkProgress? Progress { get; init; }
}

/// <summary>A party's work so far: stage (downloading | loading | training | uploading), optimizer steps done of the round's total, throughput, bytes moved.</summary>
public sealed record WorkProgress(string Stage, int Step, int TotalSteps, double TokensPerSecond) : IControlMessage
{
    public const string Downloading = "downloading", Uploading = "uploading";

    /// <summary>Bytes moved so far of <see cref="TotalBytes"/>, while downloading the work's files or uploading its update.</summary>
    public long Bytes { get; init; }
    public long TotalBytes { get; init; }

    /// <summary>Whether this shows the work further on than <paramref name="before"/>: another stage, step, or bytes moved.</summary>
    public bool MovedOnFrom(WorkProgress? before) => before is null || before.Stage != Stage || before.Step != Step || before.Bytes != Bytes;

    public override string ToString() => Stage switch
    {
        "training" => $"step {Step}/{TotalSteps}" + (TokensPerSecond > 0 ? $", {TokensPerSecond:F0} tok/s" : ""),
        Downloading or Uploading => $"{Stage} {ByteSize.Text(Bytes)} of {ByteSize.Text(TotalBytes)}",
        _ => Stage,
    };
}

/// <summary>
/// The party has its update. In plain exchanges it is ready to be pulled from the party's blob server; under secure
/// aggregation there is nothing to pull (<see cref="Update"/> is null) and the message advertises the party's keys.
/// </summary>
public sealed record UpdateReady(string Org, WorkId Id, BlobLocation? Update, long Samples, IReadOnlyDictionary<string, double> Metrics,
    double TrainSeconds, long DownloadBytes) : IControlMessage
{
    public SecAggKeys? Keys { get; init; }
}

public sealed record UpdateFailed(string Org, WorkId Id, string Reason) : IControlMessage;

/// <summary>The job stopped this work (cancelled, or the round gave up): stop training now.</summary>
public sealed record CancelWork(string Org, WorkId Id) : IPartyCommand;

/// <summary>Evaluate the job's final state on the party's evaluation data (generation metrics included).</summary>
public sealed record EvaluateRequest(string Org, string JobId, BlobLocation Spec, IReadOnlyDictionary<string, BlobLocation> Downloads,
    IReadOnlyDictionary<string, string> Parameters) : IPartyCommand;

public sealed record EvaluateReply(string Org, string JobId, PartyEvaluation? Result, string? Error) : IControlMessage;

// Secure aggregation steps 2–4 (step 1, the keys, rides on UpdateReady). Each request is idempotent per work id: a
// repeat gets the same answer. Shares and masks are tied to the exchange's session id.

/// <summary>The party's steps of SecAgg+ after advertising its keys (step 1 rides on its offer).</summary>
public enum SecAggStep { Share, Mask, Unmask }

public static class SecAggStepNames
{
    public static string Name(this SecAggStep step) => step.ToString().ToLowerInvariant();
}

public interface ISecAggRequest : IPartyCommand
{
    WorkId Id { get; }
    SecAggStep Step { get; }
}

/// <summary>Step 2: the keys of the party's neighbours that advertised; answer with sealed shares.</summary>
public sealed record SecAggShareRequest(string Org, WorkId Id, SecAggKeys[] Advertised) : ISecAggRequest
{
    [JsonIgnore] public SecAggStep Step => SecAggStep.Share;
}

public sealed record SecAggSharesReady(string Org, WorkId Id, ShareBundle Bundle) : IControlMessage;

/// <summary>Step 3: the shares addressed to this party and this round's clip norm; answer with the masked input's blob.</summary>
public sealed record SecAggMaskRequest(string Org, WorkId Id, EncryptedShare[] Inbox, double ClipNorm) : ISecAggRequest
{
    [JsonIgnore] public SecAggStep Step => SecAggStep.Mask;
}

public sealed record SecAggMaskedReady(string Org, WorkId Id, BlobLocation Masked) : IControlMessage;

/// <summary>Step 4: who uploaded a masked input; answer with the shares that let the arbiter strip the masks.</summary>
public sealed record SecAggUnmaskRequest(string Org, WorkId Id, string[] Survivors) : ISecAggRequest
{
    [JsonIgnore] public SecAggStep Step => SecAggStep.Unmask;
}

public sealed record SecAggUnmaskReady(string Org, WorkId Id, UnmaskShares Shares) : IControlMessage;

public sealed record SecAggStepFailed(string Org, WorkId Id, SecAggStep Step, string Reason) : IControlMessage;
