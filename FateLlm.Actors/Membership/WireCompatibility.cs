using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Serialization;

namespace FateLlm.Actors.Membership;

/// <summary>
/// Holds every member to a wire protocol this cluster speaks. A node announces its version as the role
/// <c>wire-MAJOR.MINOR</c>; the cluster's version is the oldest member's. A joining node whose major differs (or that
/// announces none: a build from before the versioned wire) is refused: it says so itself, naming both versions, and
/// leaves; the members say so too, and the leader downs it if it is still there after a grace (an old build does not
/// know to leave). A minor difference is allowed and said once.
/// </summary>
public sealed class WireCompatibility : ReceiveActor, IWithTimers
{
    public const string Name = "wire-compatibility", RolePrefix = "wire-";

    readonly Cluster _cluster = Cluster.Get(Context.System);
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Settings _settings;
    readonly Action<string> _refused;
    readonly HashSet<UniqueAddress> _reported = new();
    readonly Dictionary<UniqueAddress, Member> _members = new();
    readonly List<Member> _unjudged = new();
    bool _leaving;

    public ITimerScheduler Timers { get; set; } = null!;

    /// <param name="Self">The version this node announces.</param>
    /// <param name="Settle">How long membership must be quiet before judging: one gossip's events arrive in a burst, and
    /// judging in the middle of one would take a younger member for the cluster's oldest.</param>
    /// <param name="Grace">How long the leader lets a refused node leave by itself (and say why on its console) before downing it.</param>
    public sealed record Settings(WireVersion Self, TimeSpan Settle, TimeSpan Grace);

    sealed record Judge;
    sealed record DownIfStill(UniqueAddress Member);

    /// <param name="refused">Called once, with the line, on a node the cluster cannot speak to, before it leaves.</param>
    public WireCompatibility(Settings settings, Action<string> refused)
    {
        _settings = settings;
        _refused = refused;
        // Membership as the events tell it (Cluster.State may lag behind them); each member is judged once things settle,
        // even if it has left by then (a refused node leaves quickly).
        Receive<ClusterEvent.CurrentClusterState>(state =>
        {
            foreach (var m in state.Members) Seen(m);
        });
        Receive<ClusterEvent.IMemberEvent>(e => Seen(e.Member, removed: e is ClusterEvent.MemberRemoved));
        Receive<ClusterEvent.IClusterDomainEvent>(_ => { });
        Receive<Judge>(_ =>
        {
            if (CheckSelf()) foreach (var m in _unjudged) Consider(m);
            _unjudged.Clear();
        });
        Receive<DownIfStill>(d =>
        {
            if (_members.GetValueOrDefault(d.Member) is { Status: MemberStatus.Joining or MemberStatus.WeaklyUp or MemberStatus.Up } m)
                _cluster.Down(m.Address);
        });
    }

    void Seen(Member m, bool removed = false)
    {
        if (removed) _members.Remove(m.UniqueAddress);
        else _members[m.UniqueAddress] = m;
        _unjudged.Add(m);
        Timers.StartSingleTimer("judge", new Judge(), _settings.Settle);
    }

    public static string RoleOf(WireVersion v) => RolePrefix + v;

    /// <summary>The version a member announces; null for a member from before versioned wires (or a malformed role).</summary>
    public static WireVersion? VersionOf(Member m) =>
        m.Roles.FirstOrDefault(r => r.StartsWith(RolePrefix, StringComparison.Ordinal)) is { } role ? WireVersion.Parse(role[RolePrefix.Length..]) : null;

    static string Text(WireVersion? v) => v?.ToString() ?? "none (a build before versioned wires)";

    /// <summary>Whether this node may stay: it speaks the major of the cluster's oldest Up member (its own while alone).</summary>
    bool CheckSelf()
    {
        if (_leaving) return false;
        var oldest = _members.Values.Where(m => m.Status == MemberStatus.Up).OrderBy(m => m, Member.AgeOrdering).FirstOrDefault();
        if (oldest is null || oldest.UniqueAddress == _cluster.SelfUniqueAddress || VersionOf(oldest) is var theirs && Compatible(theirs)) return true;
        _leaving = true;
        var line = $"refused by the cluster: this node speaks wire protocol {_settings.Self}, the cluster ({oldest.Address}) speaks {Text(theirs)}; this node leaves";
        _log.Error(line);
        _refused(line);
        _cluster.Leave(_cluster.SelfAddress);
        return false;
    }

    void Consider(Member m)
    {
        if (m.UniqueAddress == _cluster.SelfUniqueAddress) return;
        var version = VersionOf(m);
        if (!Compatible(version))
        {
            if (_reported.Add(m.UniqueAddress))
                _log.Warning("refused node {0} at join: it speaks wire protocol {1}, this cluster speaks {2}", m.Address, Text(version), _settings.Self);
            // The leader downs it if it has not left by itself after the grace (a build from before versioned wires does not know to).
            if (_cluster.State.Leader == _cluster.SelfAddress && m.Status is MemberStatus.Joining or MemberStatus.WeaklyUp or MemberStatus.Up)
                Timers.StartSingleTimer(m.UniqueAddress, new DownIfStill(m.UniqueAddress), _settings.Grace);
        }
        else if (version != _settings.Self && _reported.Add(m.UniqueAddress))
            _log.Info("node {0} speaks wire protocol {1} (this node {2}): a minor difference, allowed", m.Address, version, _settings.Self);
    }

    bool Compatible(WireVersion? other) => other is not null && _settings.Self.CanSpeakTo(other);

    protected override void PreStart() =>
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot, typeof(ClusterEvent.IMemberEvent));

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    public static Props Props(Settings settings, Action<string> refused) => Akka.Actor.Props.Create(() => new WireCompatibility(settings, refused));
}
