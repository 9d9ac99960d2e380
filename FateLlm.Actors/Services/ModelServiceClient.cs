using Akka.Actor;
using Akka.Cluster;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Inference;

namespace FateLlm.Actors.Services;

/// <summary>A service refused a request (not allowed, overloaded, bad request, failed), or none serves that name.</summary>
public sealed class ServiceRefusedException(string message, RefusalKind? kind = null) : Exception(message)
{
    public RefusalKind? Kind { get; } = kind;
}

/// <summary>
/// The caller's side of a model service: find the member serving <c>ORG/SERVICE</c>, send a request with this node's
/// proof of organization (under TLS), and turn a refusal into an exception naming the service and the reason.
/// </summary>
public static class ModelServiceClient
{
    /// <summary>How long a caller waits for a serving member to appear in its view of the cluster.</summary>
    static readonly TimeSpan LocateWait = TimeSpan.FromSeconds(5);

    /// <summary>"ORG/SERVICE" → its parts, or a usage error naming the text.</summary>
    public static (string Org, string Service) ParseRemote(string remote)
    {
        var parts = remote.Split('/');
        if (parts.Length != 2 || parts.Any(p => p.Length == 0)) throw new ArgumentException($"--remote '{remote}' must be ORG/SERVICE (e.g. acme/server)");
        return (parts[0], parts[1]);
    }

    /// <summary>The serving member's service actor. A member that has just joined may not be in this node's view yet, so
    /// the view is polled for up to <paramref name="wait"/> before the service is declared missing.</summary>
    public static async Task<ActorSelection> Locate(ActorSystem system, string org, string service, TimeSpan wait)
    {
        var role = ModelService.RoleOf(org, service);
        var deadline = DateTime.UtcNow + wait;
        while (true)
        {
            var member = Cluster.Get(system).State.Members.FirstOrDefault(m => m.Status == MemberStatus.Up && m.HasRole(role));
            if (member is not null) return system.ActorSelection(new RootActorPath(member.Address) / "user" / ModelService.ActorName(service));
            if (DateTime.UtcNow >= deadline) throw new ServiceRefusedException($"no member of the cluster serves {org}/{service} (role {role})");
            await Task.Delay(200);
        }
    }

    public static async Task<T> Call<T>(FederationNode node, string org, IServiceRequest request, TimeSpan timeout) where T : class
    {
        if (node.Options.Tls is { } tls) request = request switch
        {
            GenerateRequest g => g with { Proof = ModelService.Prove(tls, g) },
            KitRequest k => k with { Proof = ModelService.Prove(tls, k) },
            _ => request,
        };
        object answer;
        var service = await Locate(node.System, org, request.Service, LocateWait < timeout ? LocateWait : timeout);
        try { answer = await service.Ask<object>(request, timeout); }
        catch (AskTimeoutException) { throw new ServiceRefusedException($"{org}/{request.Service} did not answer within {timeout.TotalSeconds:F0} s"); }
        return answer switch
        {
            T reply => reply,
            ServiceRefused r => throw new ServiceRefusedException($"{org}/{r.Service} refused request {r.RequestId} ({r.Kind}): {r.Reason}", r.Kind),
            _ => throw new ServiceRefusedException($"{org}/{request.Service} answered with an unexpected {answer.GetType().Name}"),
        };
    }

    /// <summary>The service's perturbation kit: pulled into this node's store, checked against the digest the service named.</summary>
    public static async Task<PerturbationKit> FetchKit(FederationNode node, string org, string service, string callerOrg, TimeSpan timeout)
    {
        var reply = await Call<KitReply>(node, org, new KitRequest(Guid.NewGuid().ToString("N"), callerOrg, service), timeout);
        if (!node.Store.Has(reply.Kit.Digest))
        {
            var fetched = await BlobDownload.Run(node.System, node.Store, reply.Kit, node.BlobTransfer).WaitAsync(timeout);
            if (fetched is FetchFailed f) throw new ServiceRefusedException($"the kit of {org}/{service} could not be fetched: {f.Reason}");
        }
        var kit = PerturbationKit.Parse(node.Store.Read(reply.Kit.Digest));
        if (kit.Digest != reply.Kit.Digest) throw new ServiceRefusedException($"the kit of {org}/{service} does not match its digest {reply.Kit.Digest[..12]}…");
        return kit;
    }
}
