using FateLlm.Actors.Transfer;

namespace FateLlm.Actors.Services;

/// <summary>A caller's proof of its organization: its certificate and a signature over the request's digest (under TLS).</summary>
public sealed record OrganizationProof(byte[] Certificate, byte[] Signature);

public interface IServiceRequest : IControlMessage
{
    string RequestId { get; }
    string Org { get; }
    string Service { get; }
    OrganizationProof? Proof { get; }
    /// <summary>What the proof signs: the request's content, so a proof cannot be moved to another request.</summary>
    byte[] Content();
}

/// <summary>Generate an answer to each prompt (at most the service's max-prompts, each within its max-prompt-chars).</summary>
public sealed record GenerateRequest(string RequestId, string Org, string Service, string[] Prompts, int MaxNewTokens, double Temperature, long Seed)
    : IServiceRequest
{
    public OrganizationProof? Proof { get; init; }
    public byte[] Content() => System.Text.Encoding.UTF8.GetBytes(
        string.Join('\u0001', [RequestId, Org, Service, MaxNewTokens.ToString(), Temperature.ToString("R"), Seed.ToString(), .. Prompts]));
}

public sealed record GenerateReply(string RequestId, string[] Answers, double Seconds) : IControlMessage;

/// <summary>The service's perturbation kit for its model (InferDPT), pulled from where the reply says.</summary>
public sealed record KitRequest(string RequestId, string Org, string Service) : IServiceRequest
{
    public OrganizationProof? Proof { get; init; }
    public byte[] Content() => System.Text.Encoding.UTF8.GetBytes(string.Join('\u0001', RequestId, Org, Service, "kit"));
}

public sealed record KitReply(string RequestId, BlobLocation Kit, string ModelDigest) : IControlMessage;

public enum RefusalKind { NotAllowed, Overloaded, BadRequest, Failed }

/// <summary>Any request the service does not serve, with the reason; never a silent drop.</summary>
public sealed record ServiceRefused(string RequestId, string Service, RefusalKind Kind, string Reason) : IControlMessage;
