using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Parties;

namespace FateLlm.Actors.Membership;

/// <summary>
/// One node per organization. On a party node, once the grace after a membership change has passed (long enough for a
/// crashed incarnation to be seen unreachable, so a restarted party never refuses itself): if another reachable, Up node
/// of the same organization is older, this node is the second one — it says so, naming the node that serves the
/// organization, and leaves the cluster; the older node logs that a second node was refused. Party placement
/// independently allocates an organization's shard only to its oldest node.
/// </summary>
public sealed class OrganizationUniqueness : ReceiveActor, IWithTimers
{
    public const string Name = "organization-uniqueness";
    readonly string _org;
    readonly TimeSpan _grace;
    readonly Action<string> _refused;
    readonly Cluster _cluster = Cluster.Get(Context.System);
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly HashSet<UniqueAddress> _reported = new();

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Recheck;

    /// <param name="refused">Called once on the node that must not serve, with the reason, before it leaves.</param>
    public OrganizationUniqueness(string org, TimeSpan grace, Action<string> refused)
    {
        _org = org;
        _grace = grace;
        _refused = refused;
        // Membership is looked at once the grace has passed: by then a crashed incarnation is unreachable and this
        // node's own view of itself is Up.
        Receive<ClusterEvent.MemberUp>(e =>
        {
            if (!e.Member.HasRole(PartyPlacement.RoleOf(_org))) return;
            var self = _cluster.SelfMember;
            // The node that serves the organization says at once that it refuses a younger claimant (which leaves after its grace).
            if (e.Member.UniqueAddress != self.UniqueAddress && self.Status == MemberStatus.Up && self.IsOlderThan(e.Member)) Refusing(e.Member);
            Timers.StartSingleTimer("check", new Recheck(), _grace);
        });
        Receive<ClusterEvent.IClusterDomainEvent>(_ => { });
        Receive<Recheck>(_ => Check());
    }

    protected override void PreStart() =>
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberUp));

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    void Check()
    {
        var self = _cluster.SelfMember;
        if (self.Status != MemberStatus.Up) return;
        var others = PartyPlacement.Nodes(_cluster.State, _org, includeJoining: false).Where(m => m.UniqueAddress != self.UniqueAddress).ToList();
        if (others.FirstOrDefault(m => m.IsOlderThan(self)) is { } older)
        {
            var reason = $"organization '{_org}' is already served by node {older.Address}; this node is refused and leaves the cluster";
            _log.Error(reason);
            _refused(reason);
            _cluster.Leave(_cluster.SelfAddress);
            return;
        }
        foreach (var younger in others) Refusing(younger);
    }

    void Refusing(Member younger)
    {
        if (_reported.Add(younger.UniqueAddress))
            _log.Warning("a second node {0} claims organization '{1}', which this node serves; it is refused", younger.Address, _org);
    }

    public static Props Props(string org, TimeSpan grace, Action<string> refused) =>
        Akka.Actor.Props.Create(() => new OrganizationUniqueness(org, grace, refused));
}
