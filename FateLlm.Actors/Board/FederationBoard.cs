using Akka.Actor;
using Akka.Cluster;
using FateLlm.Actors.Membership;
using Akka.Cluster.Tools.PublishSubscribe;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;

namespace FateLlm.Actors.Board;

/// <summary>
/// The live board's state on an arbiter node: cluster members (from cluster events), every arbiter's jobs (from
/// <see cref="JobObserved"/>, relayed by <see cref="BoardRelay"/>), each party's state in the exchange in flight (asked → training → uploading → done, or
/// failed / rejected / dropped with the reason), the secure-aggregation step in flight, and an event log. Changes are
/// coalesced and handed to a <see cref="BoardFeed"/> at most every <c>fate-llm.board.publish-interval</c>.
/// </summary>
public sealed class FederationBoard : ReceiveActor, IWithTimers
{
    public const string Name = "board";

    readonly BoardFeed _feed;
    readonly int _maxEvents;
    readonly Dictionary<Address, MemberView> _members = new();
    readonly Dictionary<string, JobStatus> _jobs = new();
    /// <summary>Per exchange (its work id): each party's state.</summary>
    readonly Dictionary<WorkId, Dictionary<string, PartyView>> _parties = new();
    readonly Dictionary<WorkId, SecureStepView> _secure = new();
    /// <summary>How each party ended a round's last exchange (job, round): kept once the exchange leaves the board.</summary>
    readonly Dictionary<(string Job, int Round), Dictionary<string, PartyView>> _ended = new();
    readonly LinkedList<EventLine> _events = new();
    readonly TimeSpan _publishInterval;
    long _version;
    bool _dirty = true;

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Flush;

    public FederationBoard(BoardFeed feed, TimeSpan publishInterval, int maxEvents)
    {
        _feed = feed;
        _maxEvents = maxEvents;
        Receive<ClusterEvent.CurrentClusterState>(s =>
        {
            foreach (var m in s.Members) _members[m.Address] = View(m, !s.Unreachable.Contains(m));
            Changed();
        });
        Receive<ClusterEvent.MemberUp>(e => Member(e.Member, "member up", "info"));
        Receive<ClusterEvent.MemberJoined>(e => Member(e.Member, null, "info"));
        Receive<ClusterEvent.MemberLeft>(e => Member(e.Member, "member leaving", "info"));
        Receive<ClusterEvent.MemberExited>(e => Member(e.Member, null, "info"));
        Receive<ClusterEvent.MemberRemoved>(e =>
        {
            _members.Remove(e.Member.Address);
            Event("warning", $"member removed: {Describe(e.Member)}");
        });
        Receive<ClusterEvent.UnreachableMember>(e => Member(e.Member, "member unreachable", "warning", reachable: false));
        Receive<ClusterEvent.ReachableMember>(e => Member(e.Member, "member reachable again", "info", reachable: true));
        Receive<ClusterEvent.IClusterDomainEvent>(_ => { });
        Receive<JobObserved>(o => OnJob(o.Status));
        Receive<PartyWorkStarted>(w => SetParty(w.Work, w.Org, "training", null, onlyFrom: ["asked"]));
        Receive<Rounds.PartyProgressed>(p => SetParty(p.Work, p.Org, p.Progress.Stage == WorkProgress.Uploading ? "uploading" : "training", p.Progress.ToString(),
            onlyFrom: ["asked", "training", "uploading"]));
        Receive<PartyUploadStarted>(u => SetParty(u.Work, u.Org, "uploading", Training.IO.ByteSize.Text(u.Bytes), onlyFrom: ["asked", "training"]));
        Receive<PartyAnswered>(a =>
        {
            SetParty(a.Work, a.Org, a.Outcome, a.Reason, onlyFrom: null);
            if (a.Outcome != "done") Event("warning", $"{a.Work}: party {a.Org} {a.Outcome}: {a.Reason}");
        });
        Receive<SecureAggregationStepStarted>(s =>
        {
            _secure[s.Work] = new SecureStepView(s.Step.Name(), s.Parties, []);
            Event("info", $"{s.Work}: secure aggregation step '{s.Step.Name()}' asks {string.Join(", ", s.Parties)}");
        });
        Receive<SecureAggregationStepAnswered>(a =>
        {
            if (_secure.TryGetValue(a.Work, out var v) && v.Step == a.Step.Name())
                _secure[a.Work] = v with { Waiting = v.Waiting.Where(o => o != a.Org).ToArray(), Answered = [.. v.Answered, a.Org] };
            Changed();
        });
        Receive<SecureAggregationDropout>(d =>
        {
            SetParty(d.Work, d.Org, "dropped", $"secure aggregation step '{d.Step.Name()}': {d.Reason}", onlyFrom: null);
            if (_secure.TryGetValue(d.Work, out var v)) _secure[d.Work] = v with { Waiting = v.Waiting.Where(o => o != d.Org).ToArray() };
            Event("warning", $"{d.Work}: party {d.Org} dropped out of secure aggregation at '{d.Step.Name()}': {d.Reason}");
        });
        Receive<Flush>(_ => Publish());
        Receive<SubscribeAck>(_ => { });
        _publishInterval = publishInterval;
    }

    protected override void PreStart()
    {
        Timers.StartPeriodicTimer("flush", new Flush(), _publishInterval);
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot,
            typeof(ClusterEvent.IMemberEvent), typeof(ClusterEvent.IReachabilityEvent));
        DistributedPubSub.Get(Context.System).Mediator.Tell(new Subscribe(BoardRelay.Topic, Self));
    }

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self); // the mediator drops a stopped subscriber itself

    void Member(Member m, string? what, string level, bool? reachable = null)
    {
        var known = _members.GetValueOrDefault(m.Address);
        _members[m.Address] = View(m, reachable ?? known?.Reachable ?? true);
        if (what is null) Changed();
        else Event(level, $"{what}: {Describe(m)}");
    }

    internal static MemberView View(Member m, bool reachable) =>
        new(m.Address.ToString(), m.Roles.Where(r => !r.StartsWith(WireCompatibility.RolePrefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray(),
            m.Roles.FirstOrDefault(r => r.StartsWith(PartyPlacement.RolePrefix, StringComparison.Ordinal))?[PartyPlacement.RolePrefix.Length..],
            m.Status.ToString(), reachable)
        {
            Version = m.AppVersion.Version, Wire = WireCompatibility.VersionOf(m)?.ToString(),
        };

    static string Describe(Member m) => $"{m.Address} ({string.Join(", ", m.Roles.Order(StringComparer.Ordinal))})";

    void OnJob(JobStatus s)
    {
        var before = _jobs.GetValueOrDefault(s.JobId);
        _jobs[s.JobId] = s;
        if (before is null || before.State != s.State)
            Event(s.State is JobState.Failed or JobState.Cancelled ? "warning" : "info",
                $"job {s.JobId}: {s.State.ToString().ToLowerInvariant()}{(s.State == JobState.Failed && s.Reason is { } r ? $": {r}" : "")}");
        foreach (var r in s.Rounds.Skip(before?.Rounds.Length ?? 0))
        {
            var p = Point(r);
            Event("info", $"job {s.JobId}: round {r.Round} done in {r.Seconds:F1} s, {p.Parties} of {r.Parties.Length} parties" +
                (p.Loss is { } loss ? $", loss {loss:F3}" : "") + (p.Epsilon is { } e ? $", ε {e:F2}" : ""));
        }
        if (s.LastFailure is { } f && f != before?.LastFailure)
            Event("warning", $"job {s.JobId}: round {f.Round} attempt {f.Attempt} failed: {f.Reason}");
        if (s.Current is { } c)
        {
            var work = new WorkId(s.JobId, c.Round, c.Attempt, c.Exchange);
            var parties = _parties.TryGetValue(work, out var known) ? known : _parties[work] = new();
            if (parties.Count == 0 && c.Stage == RoundStage.Collect)
                Event("info", $"job {s.JobId}: round {c.Round} attempt {c.Attempt} exchange {c.Exchange} asks {string.Join(", ", c.Asked)}");
            foreach (var org in c.Asked) parties.TryAdd(org, new PartyView(org, "asked", null, DateTime.UtcNow));
            foreach (var (org, answer) in c.Answers)
                if (parties[org].State is "asked" or "training" or "uploading")
                    parties[org] = new PartyView(org, answer == "ok" ? "done" : "failed", answer == "ok" ? null : answer, DateTime.UtcNow);
        }
        // Only the exchange in flight of each job is shown; earlier ones are history in the rounds.
        foreach (var w in _parties.Keys.Where(w => w.JobId == s.JobId && (s.Current is not { } cur || (w.Round, w.Attempt, w.Phase) != (cur.Round, cur.Attempt, cur.Exchange))).ToList())
        {
            if (_parties.Remove(w, out var ended)) _ended[(w.JobId, w.Round)] = ended;
            _secure.Remove(w);
        }
        Changed();
    }

    void SetParty(WorkId work, string org, string state, string? detail, string[]? onlyFrom)
    {
        var parties = _parties.TryGetValue(work, out var known) ? known : _parties[work] = new();
        if (onlyFrom is not null && parties.TryGetValue(org, out var p) && !onlyFrom.Contains(p.State)) return;
        parties[org] = new PartyView(org, state, detail, DateTime.UtcNow);
        Changed();
    }

    /// <summary>
    /// A completed round as a chart point: the training loss weighted by samples over the parties that answered; each
    /// party's outcome as the board saw it settle, else from the summary (done, or failed with the reason).
    /// </summary>
    public static RoundPoint Point(RoundSummary r, IReadOnlyDictionary<string, PartyView>? seen = null)
    {
        var ok = r.Parties.Where(p => p.Succeeded).ToArray();
        var withLoss = ok.Where(p => double.IsFinite(p.LastLoss) && p.Samples > 0).ToArray();
        double? loss = withLoss.Length == 0 ? null : withLoss.Sum(p => p.LastLoss * p.Samples) / withLoss.Sum(p => (double)p.Samples);
        var evals = ok.Where(p => p.EvalLoss is { } e && double.IsFinite(e)).Select(p => p.EvalLoss!.Value).ToArray();
        return new RoundPoint(r.Round, r.Attempt, r.Seconds, loss, evals.Length == 0 ? null : evals.Average(),
            r.Parties.Sum(p => p.UploadBytes + p.DownloadBytes), r.Privacy?.Epsilon, ok.Length, r.Parties.Length - ok.Length, r.Rejections.Length,
            r.SecureAggregation, r.Parties.Select(p => Outcome(p, seen?.GetValueOrDefault(p.Org))).ToArray()) { Buffer = r.Buffer?.Contributions ?? [] };
    }

    static PartyView Outcome(PartyRoundReport p, PartyView? seen) => p.Succeeded
        ? new PartyView(p.Org, "done", null, seen?.Since ?? DateTime.UtcNow)
        : new PartyView(p.Org, seen?.State is "rejected" or "dropped" ? seen.State : "failed", p.Reason ?? seen?.Detail, seen?.Since ?? DateTime.UtcNow);

    JobView Job(JobStatus s)
    {
        CurrentRoundView? current = null;
        if (s.Current is { } c)
        {
            var work = new WorkId(s.JobId, c.Round, c.Attempt, c.Exchange);
            var parties = _parties.GetValueOrDefault(work)?.Values.OrderBy(p => p.Org, StringComparer.Ordinal)
                .Select(p => p.State == "training" ? p with { Detail = $"{(DateTime.UtcNow - p.Since).TotalSeconds:F0} s" } : p).ToArray() ?? [];
            current = new CurrentRoundView(c.Round, c.Attempt, c.Exchange, c.Stage.Name(), parties, _secure.GetValueOrDefault(work));
        }
        return new JobView(s.JobId, s.State.ToString().ToLowerInvariant(), s.Algorithm, s.CompletedRounds, s.TotalRounds, s.Reason, s.Epsilon,
            current, s.Rounds.Select(r => Point(r, _ended.GetValueOrDefault((s.JobId, r.Round)))).ToArray(), s.FinalEvaluation, s.OutputDir) { Buffer = s.Buffer };
    }

    void Event(string level, string text)
    {
        _events.AddLast(new EventLine(DateTime.UtcNow, level, text));
        while (_events.Count > _maxEvents) _events.RemoveFirst();
        Changed();
    }

    void Changed() => _dirty = true;

    void Publish()
    {
        // Parties in training show their elapsed time, so a job in flight refreshes every interval.
        if (!_dirty && !_parties.Values.Any(ps => ps.Values.Any(p => p.State == "training"))) return;
        _dirty = false;
        _feed.Publish(new BoardSnapshot(DateTime.UtcNow, ++_version,
            _members.Values.OrderBy(m => m.Address, StringComparer.Ordinal).ToArray(),
            _jobs.Values.OrderBy(j => j.JobId, StringComparer.Ordinal).Select(Job).ToArray(),
            _events.Reverse().ToArray()));
    }

    public static Props Props(BoardFeed feed, Akka.Configuration.Config config) => Akka.Actor.Props.Create(() => new FederationBoard(feed,
        config.GetTimeSpan("fate-llm.board.publish-interval"), config.GetInt("fate-llm.board.events")));
}
