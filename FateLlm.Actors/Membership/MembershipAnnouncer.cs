using Akka.Actor;
using Akka.Cluster;
using Akka.Event;

namespace FateLlm.Actors.Membership;

/// <summary>
/// Tells the operator, one line each, what happens to the cluster's members: joined, up, unreachable (a WARNING
/// naming the node and what it serves), reachable again, left or downed.
/// </summary>
public sealed class MembershipAnnouncer : ReceiveActor
{
    public const string Name = "membership";
    readonly Cluster _cluster = Cluster.Get(Context.System);
    readonly ILoggingAdapter _log = Context.GetLogger();

    public MembershipAnnouncer()
    {
        Receive<ClusterEvent.MemberUp>(e => _log.Info("member up: {0}", Describe(e.Member)));
        Receive<ClusterEvent.UnreachableMember>(e => _log.Warning("member unreachable: {0}", Describe(e.Member)));
        Receive<ClusterEvent.ReachableMember>(e => _log.Info("member reachable again: {0}", Describe(e.Member)));
        Receive<ClusterEvent.MemberRemoved>(e =>
        {
            if (e.PreviousStatus == MemberStatus.Down) _log.Warning("member downed and removed: {0}", Describe(e.Member));
            else _log.Info("member left: {0}", Describe(e.Member));
        });
        Receive<ClusterEvent.IClusterDomainEvent>(_ => { });
    }

    static string Describe(Member m)
    {
        var org = m.Roles.FirstOrDefault(r => r.StartsWith(Parties.PartyPlacement.RolePrefix));
        var what = org is not null ? $"party {org[Parties.PartyPlacement.RolePrefix.Length..]}"
            : string.Join(", ", m.Roles.Where(r => r is Nodes.ClusterRoles.Seed or Nodes.ClusterRoles.Arbiter or Nodes.ClusterRoles.Client));
        return $"{what} at {m.Address}";
    }

    protected override void PreStart() =>
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvent.MemberUp), typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.ReachableMember), typeof(ClusterEvent.MemberRemoved));

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    public static Props Props() => Akka.Actor.Props.Create(() => new MembershipAnnouncer());
}
