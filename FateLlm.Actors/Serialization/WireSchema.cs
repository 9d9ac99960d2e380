using FateLlm.Actors.Board;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Security;
using FateLlm.Actors.Services;
using FateLlm.Actors.Transfer;

namespace FateLlm.Actors.Serialization;

/// <summary>
/// The wire protocol between nodes: a major.minor version and the manifest of every message. A minor version adds
/// messages or optional fields (older nodes skip what they do not know); a major version removes or changes a message,
/// and nodes of different majors do not join one cluster. A manifest's <c>.vN</c> changes only with its shape; a later
/// version keeps decoding the old one (the committed fixtures under <c>Fixtures/wire</c> hold it to that).
/// </summary>
public static class WireSchema
{
    /// <summary>
    /// 1.1: jobs carry compression, party LoRA ranks and the rank rule; exchanges may lay out updates per party.
    /// 1.2: jobs carry their schedule and local DP-SGD; a round summary may be a buffered flush, and a job's status shows its buffer.
    /// </summary>
    public static readonly WireVersion Version = new(1, 2);

    static readonly (Type Type, string Manifest)[] Messages =
    [
        // Jobs: clients and the job entities.
        (typeof(SubmitJob), "SubmitJob.v1"), (typeof(GetJobStatus), "GetJobStatus.v1"), (typeof(CancelJob), "CancelJob.v1"),
        (typeof(JobAccepted), "JobAccepted.v1"), (typeof(JobRejected), "JobRejected.v1"), (typeof(JobStatus), "JobStatus.v1"),
        (typeof(ListJobs), "ListJobs.v1"), (typeof(JobList), "JobList.v1"), (typeof(ListMembers), "ListMembers.v1"), (typeof(MemberList), "MemberList.v1"),
        (typeof(PartyRoundReport), "PartyRoundReport.v1"), (typeof(RoundPrivacy), "RoundPrivacy.v1"), (typeof(RoundSummary), "RoundSummary.v1"),
        (typeof(PartyEvaluation), "PartyEvaluation.v1"), (typeof(RoundInFlight), "RoundInFlight.v1"), (typeof(AttemptFailure), "AttemptFailure.v1"),
        (typeof(BufferContribution), "BufferContribution.v1"), (typeof(FlushReport), "FlushReport.v1"), (typeof(BufferStatus), "BufferStatus.v1"),
        (typeof(BufferedWork), "BufferedWork.v1"),
        // Rounds: the job and its round entities (on any arbiter).
        (typeof(StartRound), "StartRound.v1"), (typeof(AbortRound), "AbortRound.v1"), (typeof(RoundProgress), "RoundProgress.v1"),
        (typeof(RoundPartyProgress), "RoundPartyProgress.v1"), (typeof(RoundPartyAnswered), "RoundPartyAnswered.v1"),
        (typeof(RoundPhaseDone), "RoundPhaseDone.v1"), (typeof(RoundFinished), "RoundFinished.v1"),
        // Parties: work, evaluation and secure aggregation between an arbiter and an organization.
        (typeof(WorkRequest), "WorkRequest.v1"), (typeof(WorkAccepted), "WorkAccepted.v1"), (typeof(WorkProgress), "WorkProgress.v1"),
        (typeof(UpdateReady), "UpdateReady.v1"), (typeof(UpdateFailed), "UpdateFailed.v1"), (typeof(CancelWork), "CancelWork.v1"),
        (typeof(EvaluateRequest), "EvaluateRequest.v1"), (typeof(EvaluateReply), "EvaluateReply.v1"),
        (typeof(SecAggShareRequest), "SecAggShareRequest.v1"), (typeof(SecAggSharesReady), "SecAggSharesReady.v1"),
        (typeof(SecAggMaskRequest), "SecAggMaskRequest.v1"), (typeof(SecAggMaskedReady), "SecAggMaskedReady.v1"),
        (typeof(SecAggUnmaskRequest), "SecAggUnmaskRequest.v1"), (typeof(SecAggUnmaskReady), "SecAggUnmaskReady.v1"),
        (typeof(SecAggStepFailed), "SecAggStepFailed.v1"),
        // The board: what arbiters publish to every arbiter's board.
        (typeof(JobObserved), "JobObserved.v1"), (typeof(PartyWorkStarted), "PartyWorkStarted.v1"), (typeof(PartyUploadStarted), "PartyUploadStarted.v1"),
        (typeof(PartyAnswered), "PartyAnswered.v1"), (typeof(PartyProgressed), "PartyProgressed.v1"),
        (typeof(SecureAggregationStepStarted), "SecureAggregationStepStarted.v1"), (typeof(SecureAggregationStepAnswered), "SecureAggregationStepAnswered.v1"),
        (typeof(SecureAggregationDropout), "SecureAggregationDropout.v1"),
        // Security and services.
        (typeof(ProveIdentity), "ProveIdentity.v1"), (typeof(IdentityProof), "IdentityProof.v1"),
        (typeof(GenerateRequest), "GenerateRequest.v1"), (typeof(GenerateReply), "GenerateReply.v1"), (typeof(KitRequest), "KitRequest.v1"),
        (typeof(KitReply), "KitReply.v1"), (typeof(ServiceRefused), "ServiceRefused.v1"),
        // Transfer: the blob servers' control messages (chunks themselves are FederationSerializer's frames).
        (typeof(FetchChunk), "FetchChunk.v1"), (typeof(BlobNotFound), "BlobNotFound.v1"), (typeof(BlobLocation), "BlobLocation.v1"),
        (typeof(LocateBlob), "LocateBlob.v1"), (typeof(BlobHeld), "BlobHeld.v1"), (typeof(ReplicateBlob), "ReplicateBlob.v1"),
        (typeof(OpenStream), "OpenStream.v1"), (typeof(StreamOffered), "StreamOffered.v1"), (typeof(StreamRefused), "StreamRefused.v1"),
    ];

    static readonly Dictionary<Type, string> Manifests = Messages.ToDictionary(m => m.Type, m => m.Manifest);
    static readonly Dictionary<string, Type> Types = Messages.ToDictionary(m => m.Manifest, m => m.Type);

    public static IReadOnlyDictionary<Type, string> All => Manifests;
    public static string? ManifestOf(Type type) => Manifests.GetValueOrDefault(type);
    public static Type? TypeOf(string manifest) => Types.GetValueOrDefault(manifest);
}

/// <summary>A wire protocol version: nodes of one major speak to each other; the minor only adds.</summary>
public sealed record WireVersion(int Major, int Minor)
{
    public override string ToString() => $"{Major}.{Minor}";

    public static WireVersion? Parse(string text) =>
        text.Split('.') is [var major, var minor] && int.TryParse(major, out var a) && int.TryParse(minor, out var b) && a >= 0 && b >= 0
            ? new WireVersion(a, b) : null;

    public bool CanSpeakTo(WireVersion other) => Major == other.Major;
}
