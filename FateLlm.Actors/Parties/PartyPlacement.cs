using System.Collections.Immutable;
using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Sharding;

namespace FateLlm.Actors.Parties;

/// <summary>
/// Places the shard of organization X only on the node whose cluster roles include <c>org-X</c> — the node that
/// holds X's data. Identity comes from membership itself, so there is no registration to race: while that node is
/// absent, allocation answers Nobody and the coordinator retries, so a party entity never starts elsewhere.
/// Shards never rebalance away from their owner. Under TLS, <paramref name="provenOrganization"/> must also confirm
/// the owner's certificate is for X: a node that merely claims the role gets nothing.
/// </summary>
public sealed class PartyPlacement(ActorSystem system, Func<Address, string?>? provenOrganization = null) : IShardAllocationStrategy
{
    public const string RolePrefix = "org-";
    public static string RoleOf(string org) => RolePrefix + org;

    /// <summary>
    /// The nodes of <paramref name="org"/>: Up (or also still joining, for code that waits for a restarted party),
    /// and reachable unless <paramref name="reachableOnly"/> is false.
    /// </summary>
    public static IEnumerable<Member> Nodes(ClusterEvent.CurrentClusterState state, string org, bool includeJoining, bool reachableOnly = true) =>
        state.Members.Where(m => m.HasRole(RoleOf(org))
            && (m.Status == MemberStatus.Up || includeJoining && m.Status is MemberStatus.Joining or MemberStatus.WeaklyUp)
            && !(reachableOnly && state.Unreachable.Contains(m)));

    /// <summary>
    /// Whether the removed member was <paramref name="org"/>'s node and no other node of it is up: the removal of a
    /// crashed incarnation can arrive after its replacement has joined, and must not count against the new one.
    /// </summary>
    public static bool LastNodeOf(ActorSystem system, Member removed, string org) =>
        removed.HasRole(RoleOf(org)) &&
        !Nodes(Cluster.Get(system).State, org, includeJoining: true, reachableOnly: false).Any(m => m.UniqueAddress != removed.UniqueAddress);

    public Task<IActorRef> AllocateShard(IActorRef requester, string shardId, IImmutableDictionary<IActorRef, IImmutableList<string>> currentShardAllocations)
    {
        var cluster = Cluster.Get(system);
        // The oldest node of the organization: a second node that claims it never gets its shard (see OrganizationUniqueness).
        var owner = Nodes(cluster.State, shardId, includeJoining: false)
            .Where(m => provenOrganization is null || provenOrganization(m.Address) == shardId)
            .OrderBy(m => m, Member.AgeOrdering).Select(m => m.Address).FirstOrDefault();
        if (owner is null) return Task.FromResult<IActorRef>(ActorRefs.Nobody);
        var region = currentShardAllocations.Keys.FirstOrDefault(r => AddressOf(r, cluster) == owner);
        return Task.FromResult<IActorRef>(region ?? ActorRefs.Nobody);
    }

    public Task<IImmutableSet<string>> Rebalance(IImmutableDictionary<IActorRef, IImmutableList<string>> currentShardAllocations, IImmutableSet<string> rebalanceInProgress) =>
        Task.FromResult<IImmutableSet<string>>(ImmutableHashSet<string>.Empty);

    static Address AddressOf(IActorRef region, Cluster cluster) =>
        region.Path.Address.HasLocalScope ? cluster.SelfAddress : region.Path.Address;
}

/// <summary>Shard id = entity id = organization id (both ShardId overloads, as the external-allocation pitfalls require).</summary>
public sealed class PartyMessageExtractor : IMessageExtractor
{
    public string? EntityId(object message) => message switch
    {
        IPartyCommand p => p.Org,
        _ => null,
    };

    public object? EntityMessage(object message) => message;
    public string? ShardId(object message) => EntityId(message);
    public string ShardId(string entityId, object? messageHint = null) => entityId;
}
