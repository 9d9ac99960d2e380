using System.Security.Cryptography;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Parties;

namespace FateLlm.Actors.Security;

/// <summary>Asks a member's guard to prove its organization: sign the nonce and its own address with its certificate key.</summary>
public sealed record ProveIdentity(byte[] Nonce) : IControlMessage;

public sealed record IdentityProof(string Address, byte[] Certificate, byte[] Signature) : IControlMessage;

/// <summary>
/// Under TLS, holds every member to the identity its certificate proves: a node with role <c>org-X</c> must sign a
/// fresh challenge with a certificate for X, and seed and arbiter nodes with one of an operator organization. A
/// member that proves something else is downed. Runs on every node; party placement allocates a shard only to a node
/// whose proof matched (<see cref="NodeTls.Identities"/>).
/// </summary>
public sealed class OrganizationGuard : ReceiveActor, IWithTimers
{
    public const string Name = "organization-guard";
    readonly NodeTls _tls;
    readonly IReadOnlySet<string> _operators;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Cluster _cluster = Cluster.Get(Context.System);
    readonly Dictionary<Address, (Member Member, byte[] Nonce, int Attempt)> _pending = new();

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Retry(Address Address);
    const int MaxAttempts = 60;

    public OrganizationGuard(NodeTls tls, IReadOnlySet<string> operators)
    {
        _tls = tls;
        _operators = operators;
        Receive<ClusterEvent.MemberUp>(e => Challenge(e.Member));
        Receive<ClusterEvent.MemberJoined>(e => Challenge(e.Member));
        Receive<ClusterEvent.MemberRemoved>(e => _pending.Remove(e.Member.Address));
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<Retry>(r => { if (_pending.TryGetValue(r.Address, out var p)) Send(p.Member, p.Nonce, p.Attempt + 1); });
        Receive<ProveIdentity>(p =>
        {
            var self = _cluster.SelfAddress.ToString();
            Sender.Tell(new IdentityProof(self, _tls.Certificate.RawData, _tls.Sign(p.Nonce, self)));
        });
        Receive<IdentityProof>(OnProof);
    }

    protected override void PreStart()
    {
        _tls.Identities.Record(_cluster.SelfAddress, _tls.Organization);
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.IMemberEvent));
    }

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    /// <summary>What a member's roles claim, or null when its roles claim nothing a certificate must back.</summary>
    static (string Claim, Func<string, IReadOnlySet<string>, bool> Accepts)? ClaimOf(Member m)
    {
        var orgRole = m.Roles.FirstOrDefault(r => r.StartsWith("org-"));
        if (orgRole != null) return ($"role {orgRole}", (org, _) => PartyPlacement.RoleOf(org) == orgRole);
        if (m.HasRole("arbiter") || m.HasRole("seed")) return ("an operator role", (org, ops) => ops.Contains(org));
        return null;
    }

    void Challenge(Member m)
    {
        if (m.Address == _cluster.SelfAddress || ClaimOf(m) is null || _pending.ContainsKey(m.Address) || _tls.Identities.OrganizationOf(m.Address) != null) return;
        Send(m, RandomNumberGenerator.GetBytes(32), 0);
    }

    void Send(Member m, byte[] nonce, int attempt)
    {
        if (attempt >= MaxAttempts)
        {
            _pending.Remove(m.Address);
            _log.Warning("TLS: {0} did not prove its organization within {1} s; it gets no party shard", m.Address, MaxAttempts);
            return;
        }
        _pending[m.Address] = (m, nonce, attempt);
        Context.ActorSelection(new RootActorPath(m.Address) / "user" / Name).Tell(new ProveIdentity(nonce));
        Timers.StartSingleTimer(m.Address, new Retry(m.Address), TimeSpan.FromSeconds(1));
    }

    void OnProof(IdentityProof p)
    {
        var address = Sender.Path.Address;
        if (!_pending.Remove(address, out var pending)) return;
        Timers.Cancel(address);
        var claim = ClaimOf(pending.Member)!.Value;
        string? org = null;
        var why = $"the proof names address {p.Address}";
        if (p.Address == address.ToString()) org = _tls.Verify(p.Certificate, p.Signature, pending.Nonce, p.Address, out why);
        if (org is not null && claim.Accepts(org, _operators))
        {
            _tls.Identities.Record(address, org);
            return;
        }
        _log.Error("TLS: node {0} claims {1} but {2}; downing it", address, claim.Claim,
            org is null ? $"could not prove any identity ({why})" : $"its certificate is for organization '{org}'");
        _cluster.Down(address);
    }

    public static Props Props(NodeTls tls, IReadOnlySet<string> operators) => Akka.Actor.Props.Create(() => new OrganizationGuard(tls, operators));
}
