using System.Security.Cryptography;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Parties;

namespace FateLlm.Actors.Security;

/// <summary>Asks a member's guard to prove its organization: sign the nonce and its own address with its certificate key.</summary>
public sealed record ProveIdentity(byte[] Nonce) : IControlMessage;

public sealed record IdentityProof(string Address, byte[] Certificate, byte[] Signature) : IControlMessage;

/// <summary>A member the guard must hold to what its roles claim (from cluster membership, or a spec).</summary>
public sealed record MemberClaim(Address Address, IReadOnlyCollection<string> Roles);

/// <summary>The member left: stop challenging it.</summary>
public sealed record MemberGone(Address Address);

/// <summary>
/// Under TLS, holds every member to the identity its certificate proves: a node with role <c>org-X</c> must sign a
/// fresh challenge with a certificate for X, and seed and arbiter nodes with one of an operator organization. A
/// member that proves something else is downed. Runs on every node; party placement allocates a shard only to a node
/// whose proof matched (<see cref="NodeTls.Identities"/>). Per member it is challenging or settled; a challenge is
/// re-sent every second (a lost message) up to a limit.
/// </summary>
public sealed class OrganizationGuard : ReceiveActor, IWithTimers
{
    public const string Name = "organization-guard";

    /// <summary>How the guard reaches the cluster; specs substitute probes for the members' guards and for downing.</summary>
    public sealed record Membership(Address Self, Func<Address, ICanTell> GuardAt, Action<Address> Down, bool WatchCluster);

    readonly NodeTls _tls;
    readonly IReadOnlySet<string> _operators;
    readonly Membership _m;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Dictionary<Address, (MemberClaim Member, byte[] Nonce, int Attempt)> _pending = new();

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Retry(Address Address);
    const int MaxAttempts = 60;
    static readonly TimeSpan RetryInterval = TimeSpan.FromSeconds(1);

    public OrganizationGuard(NodeTls tls, IReadOnlySet<string> operators, Membership? membership = null)
    {
        _tls = tls;
        _operators = operators;
        _m = membership ?? ClusterMembership(Context.System);
        Receive<ClusterEvent.MemberUp>(e => Challenge(new MemberClaim(e.Member.Address, e.Member.Roles)));
        Receive<ClusterEvent.MemberJoined>(e => Challenge(new MemberClaim(e.Member.Address, e.Member.Roles)));
        Receive<ClusterEvent.MemberRemoved>(e => Forget(e.Member.Address));
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<MemberClaim>(Challenge);
        Receive<MemberGone>(g => Forget(g.Address));
        Receive<Retry>(r => { if (_pending.TryGetValue(r.Address, out var p)) Send(p.Member, p.Nonce, p.Attempt + 1); });
        Receive<ProveIdentity>(p =>
        {
            var self = _m.Self.ToString();
            Sender.Tell(new IdentityProof(self, _tls.Certificate.RawData, _tls.Sign(p.Nonce, self)));
        });
        Receive<IdentityProof>(OnProof);
    }

    static Membership ClusterMembership(ActorSystem system)
    {
        var cluster = Cluster.Get(system);
        return new Membership(cluster.SelfAddress, a => system.ActorSelection(new RootActorPath(a) / "user" / Name), a => cluster.Down(a), true);
    }

    protected override void PreStart()
    {
        _tls.Identities.Record(_m.Self, _tls.Organization);
        if (_m.WatchCluster) Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.IMemberEvent));
    }

    protected override void PostStop()
    {
        if (_m.WatchCluster) Cluster.Get(Context.System).Unsubscribe(Self);
    }

    void Forget(Address address)
    {
        _pending.Remove(address);
        Timers.Cancel(address);
    }

    /// <summary>What a member's roles claim, or null when its roles claim nothing a certificate must back.</summary>
    static (string Claim, Func<string, IReadOnlySet<string>, bool> Accepts)? ClaimOf(MemberClaim m)
    {
        var orgRole = m.Roles.FirstOrDefault(r => r.StartsWith(PartyPlacement.RolePrefix));
        if (orgRole != null) return ($"role {orgRole}", (org, _) => PartyPlacement.RoleOf(org) == orgRole);
        if (m.Roles.Contains(Nodes.ClusterRoles.Arbiter) || m.Roles.Contains(Nodes.ClusterRoles.Seed)) return ("an operator role", (org, ops) => ops.Contains(org));
        return null;
    }

    void Challenge(MemberClaim m)
    {
        if (m.Address == _m.Self || ClaimOf(m) is null || _pending.ContainsKey(m.Address) || _tls.Identities.OrganizationOf(m.Address) != null) return;
        Send(m, RandomNumberGenerator.GetBytes(32), 0);
    }

    void Send(MemberClaim m, byte[] nonce, int attempt)
    {
        if (attempt >= MaxAttempts)
        {
            _pending.Remove(m.Address);
            _log.Warning("TLS: {0} did not prove its organization within {1} attempts; it gets no party shard", m.Address, MaxAttempts);
            return;
        }
        _pending[m.Address] = (m, nonce, attempt);
        // The retry is armed before the challenge leaves, so whoever sees the challenge also sees the retry pending.
        Timers.StartSingleTimer(m.Address, new Retry(m.Address), RetryInterval);
        _m.GuardAt(m.Address).Tell(new ProveIdentity(nonce), Self);
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
        _m.Down(address);
    }

    public static Props Props(NodeTls tls, IReadOnlySet<string> operators, Membership? membership = null) =>
        Akka.Actor.Props.Create(() => new OrganizationGuard(tls, operators, membership));
}
