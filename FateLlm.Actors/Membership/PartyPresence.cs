using Akka.Actor;
using Akka.Cluster;
using FateLlm.Actors.Parties;

namespace FateLlm.Actors.Membership;

/// <summary>Sent to a watcher's subscriber when the last node of an organization has left the cluster.</summary>
public sealed record PartyNodeLeft(string Org);

/// <summary>
/// Which organizations have a node in the cluster. Rounds and jobs ask it instead of the cluster directly, so specs
/// can stand in for membership with a script.
/// </summary>
public interface IPartyPresence
{
    /// <summary>Whether <paramref name="org"/> has a node (one still joining counts: a restarted party is on its way back).</summary>
    bool Present(string org);

    /// <summary>Props of a child that tells <paramref name="subscriber"/> <see cref="PartyNodeLeft"/>; null when membership is not watched.</summary>
    Props? Watcher(IActorRef subscriber);
}

/// <summary>No membership (a round run outside a cluster, as in benchmarks): every party counts as present.</summary>
public sealed class AlwaysPresent : IPartyPresence
{
    public static readonly AlwaysPresent Instance = new();
    public bool Present(string org) => true;
    public Props? Watcher(IActorRef subscriber) => null;
}

public sealed class ClusterPresence(ActorSystem system) : IPartyPresence
{
    public bool Present(string org) => PartyPlacement.Nodes(Cluster.Get(system).State, org, includeJoining: true).Any();

    public Props Watcher(IActorRef subscriber) => Props.Create(() => new RemovalWatcher(subscriber));

    /// <summary>Turns member removals into <see cref="PartyNodeLeft"/> for organizations whose last node left.</summary>
    sealed class RemovalWatcher : ReceiveActor
    {
        public RemovalWatcher(IActorRef subscriber)
        {
            Receive<ClusterEvent.MemberRemoved>(e =>
            {
                foreach (var role in e.Member.Roles.Where(r => r.StartsWith(PartyPlacement.RolePrefix)))
                {
                    var org = role[PartyPlacement.RolePrefix.Length..];
                    if (PartyPlacement.LastNodeOf(Context.System, e.Member, org)) subscriber.Tell(new PartyNodeLeft(org));
                }
            });
            Receive<ClusterEvent.IMemberEvent>(_ => { });
        }

        protected override void PreStart() =>
            Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberRemoved));

        protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);
    }
}
