using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;

namespace FateLlm.Actors.Rounds;

/// <summary>One party's answer as collected: the update (pulled into the arbiter's store unless summed securely) and its transfer.</summary>
public sealed record CollectedUpdate(UpdateReady Update, string Digest, long UploadBytes, int Retransmissions);

/// <summary>The collection's report to its round (local only).</summary>
public sealed record ExchangeCollected(int Phase, IReadOnlyDictionary<string, CollectedUpdate> Succeeded, IReadOnlyDictionary<string, string> Failed,
    IReadOnlyList<string> Rejections);

/// <summary>Published on the arbiter's event stream as each party's answer to an exchange is settled (observability, specs).</summary>
public sealed record PartyAnswered(WorkId Work, string Org, bool Succeeded, string? Reason) : IControlMessage
{
    /// <summary>How it settled: done | failed (the party reported an error) | rejected (refused here) | dropped (no answer, node gone, upload lost).</summary>
    public string Outcome { get; init; } = Succeeded ? "done" : "failed";
}

/// <param name="Requests">What each party of the exchange is asked (its work request).</param>
/// <param name="Secure">Summed securely: parties advertise keys, no update is pulled.</param>
/// <param name="MaxBytes">The codec's size bound, checked before an update is pulled.</param>
public sealed record CollectionSettings(WorkId Work, IReadOnlyDictionary<string, WorkRequest> Requests, bool Secure, long MaxBytes, int Quorum,
    TimeSpan Deadline, RoundSettings Round)
{
    /// <summary>A party whose work shows no progress this long (no new stage or step in its answers) is dropped; null: never.</summary>
    public TimeSpan? Inactivity { get; init; }
}

/// <summary>A party's work moved on (a new stage or step): to its round, and on the event stream for the board.</summary>
public sealed record PartyProgressed(WorkId Work, string Org, WorkProgress Progress) : IControlMessage;

/// <summary>
/// The plain-collect protocol of one exchange (a child of <see cref="AggregationRound"/>): asks every party of the
/// exchange, re-asks those that have not answered (a message to a crashed node is lost), pulls each update from the
/// party's blob server (size checked first), and reports once all answered, or at the deadline. A party whose node is
/// gone gets the absent grace to come back, not the whole deadline. Replies are matched by the work id it supplied;
/// answers for another round or attempt are refused as replays.
/// </summary>
public sealed class UpdateCollection : ReceiveActor, IWithTimers
{
    readonly CollectionSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Dictionary<string, UpdateReady> _fetching = new();
    readonly Dictionary<string, CollectedUpdate> _succeeded = new();
    readonly Dictionary<string, string> _failed = new();
    readonly Dictionary<string, string> _outcomes = new();
    readonly List<string> _rejections = new();
    // When each party's work last moved on, and what it showed then (scheduler time, so specs can move it).
    readonly Dictionary<string, (DateTimeOffset At, WorkProgress? Shown)> _moved = new();

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Resend;
    sealed record Deadline;
    sealed record AbsentCheck;

    RoundSettings R => _s.Round;

    public UpdateCollection(CollectionSettings settings)
    {
        _s = settings;
        Receive<WorkAccepted>(a =>
        {
            if (a.Id != _s.Work || !Waiting(a.Org)) return;
            Context.System.EventStream.Publish(new Board.PartyWorkStarted(a.Id, a.Org));
            if (a.Progress is { } p && p.MovedOnFrom(_moved.GetValueOrDefault(a.Org).Shown))
            {
                _moved[a.Org] = (Context.System.Scheduler.Now, p);
                Progressed(a.Org, p);
            }
        });
        // This arbiter pulling a party's update is the party's upload: shown as its progress.
        Receive<FetchProgress>(f =>
        {
            if (_fetching.ContainsKey(f.Correlation))
                Progressed(f.Correlation, new WorkProgress(WorkProgress.Uploading, 0, 0, 0) { Bytes = f.Received, TotalBytes = f.Total });
        });
        Receive<UpdateReady>(OnUpdate);
        Receive<UpdateFailed>(f => Record(f.Org, f.Id, () => _failed[f.Org] = f.Reason));
        Receive<FetchCompleted>(OnFetched);
        Receive<FetchFailed>(f =>
        {
            if (_fetching.Remove(f.Correlation, out var u)) Record(f.Correlation, u.Id, () => Fail(f.Correlation, "dropped", $"upload failed: {f.Reason}"));
        });
        Receive<Resend>(_ =>
        {
            DropInactive();
            Ask();
        });
        Receive<Deadline>(_ => Conclude(deadline: true));
        Receive<AbsentCheck>(_ => DropAbsent());
        Receive<PartyNodeLeft>(l =>
        {
            if (R.AbsentGrace is { } grace && Waiting(l.Org)) Timers.StartSingleTimer("absent", new AbsentCheck(), grace);
        });
    }

    protected override void PreStart()
    {
        // Timers are armed before the first request leaves: a party that sees the request finds the re-ask pending.
        Timers.StartPeriodicTimer("resend", new Resend(), R.ResendInterval);
        Timers.StartSingleTimer("deadline", new Deadline(), _s.Deadline);
        foreach (var org in Parties) _moved[org] = (Context.System.Scheduler.Now, null);
        if (R.AbsentGrace is { } grace)
        {
            if (R.Presence.Watcher(Self) is { } watcher) Context.ActorOf(watcher, "presence");
            Timers.StartSingleTimer("absent", new AbsentCheck(), grace);
        }
        Ask();
    }

    IEnumerable<string> Parties => _s.Requests.Keys;

    void Progressed(string org, WorkProgress p)
    {
        var progressed = new PartyProgressed(_s.Work, org, p);
        Context.System.EventStream.Publish(progressed);
        Context.Parent.Tell(progressed);
    }

    bool Waiting(string org) => _s.Requests.ContainsKey(org) && !_succeeded.ContainsKey(org) && !_failed.ContainsKey(org) && !_fetching.ContainsKey(org);

    void Ask()
    {
        foreach (var org in Parties.Where(Waiting)) R.PartyRegion.Tell(_s.Requests[org]);
    }

    /// <summary>Parties whose work has not moved on for the inactivity bound (checked at every re-ask, which is its heartbeat).</summary>
    void DropInactive()
    {
        if (_s.Inactivity is not { } limit) return;
        var now = Context.System.Scheduler.Now;
        foreach (var org in Parties.Where(o => Waiting(o) && now - _moved[o].At >= limit).ToList())
        {
            var shown = _moved[org].Shown is { } p ? $"still {p}" : "no answer";
            Record(org, _s.Work, () => Fail(org, "dropped", $"no progress for {limit.TotalSeconds:G4} s ({shown}; job.round-inactivity)"));
        }
    }

    void DropAbsent()
    {
        foreach (var org in Parties.Where(o => Waiting(o) && !R.Presence.Present(o)).ToList())
            Record(org, _s.Work, () => Fail(org, "dropped", $"its node left or never joined: no node of this organization in the cluster for {R.AbsentGrace!.Value.TotalSeconds:G3} s"));
    }

    void Reject(string org, string reason)
    {
        var line = $"{org}: {reason}";
        if (_rejections.Contains(line)) return; // a re-sent copy of the same bad answer
        _rejections.Add(line);
        _log.Warning("round {0}: rejected update of party {1}: {2}", _s.Work, org, reason);
    }

    /// <summary>Records an answer of the current exchange once; anything for another work id is a replay.</summary>
    void Record(string org, WorkId id, Action apply)
    {
        if (id != _s.Work)
        {
            Reject(org, $"answer for {id}, this exchange is {_s.Work} (replay refused)");
            return;
        }
        if (!_s.Requests.ContainsKey(org))
        {
            Reject(org, "party was not asked in this exchange");
            return;
        }
        if (_succeeded.ContainsKey(org) || _failed.ContainsKey(org)) return;
        apply();
        if (_succeeded.ContainsKey(org) || _failed.ContainsKey(org))
        {
            var answered = Answer(org);
            Context.System.EventStream.Publish(answered);
            Context.Parent.Tell(answered);
        }
        if (_succeeded.Count + _failed.Count == _s.Requests.Count) Conclude(deadline: false);
    }

    void OnUpdate(UpdateReady u)
    {
        // A duplicate of an update already being pulled or accepted is idempotent.
        if (_fetching.ContainsKey(u.Org) || _succeeded.ContainsKey(u.Org) || _failed.ContainsKey(u.Org)) return;
        if (_s.Secure)
        {
            Record(u.Org, u.Id, () =>
            {
                if (u.Keys is null || u.Keys.Party != u.Org) Fail(u.Org, "rejected", "rejected: no secure-aggregation keys under its name");
                else _succeeded[u.Org] = new CollectedUpdate(u, "", 0, 0);
            });
            return;
        }
        Record(u.Org, u.Id, () =>
        {
            if (u.Update is null) Fail(u.Org, "rejected", "rejected: plain exchange but no update offered");
            else if (u.Update.Size > _s.MaxBytes)
            {
                Reject(u.Org, $"update of {u.Update.Size} bytes exceeds the limit of {_s.MaxBytes}");
                Fail(u.Org, "rejected", $"rejected: update of {u.Update.Size} bytes exceeds the limit");
            }
            else
            {
                _fetching[u.Org] = u;
                Context.System.EventStream.Publish(new Board.PartyUploadStarted(u.Id, u.Org, u.Update.Size));
                Context.ActorOf(BlobFetcher.Props(R.Store, u.Update, R.Transfer, correlation: u.Org, progress: true));
            }
        });
    }

    PartyAnswered Answer(string org) => new(_s.Work, org, _succeeded.ContainsKey(org), _failed.GetValueOrDefault(org))
    {
        Outcome = _succeeded.ContainsKey(org) ? "done" : _outcomes.GetValueOrDefault(org, "failed"),
    };

    void Fail(string org, string outcome, string reason)
    {
        _failed[org] = reason;
        _outcomes[org] = outcome;
    }

    void OnFetched(FetchCompleted f)
    {
        if (!_fetching.Remove(f.Correlation, out var u)) return;
        Record(f.Correlation, u.Id, () => _succeeded[f.Correlation] = new CollectedUpdate(u, f.Digest, f.Bytes, f.Retransmissions));
    }

    void Conclude(bool deadline)
    {
        Timers.CancelAll();
        if (deadline)
            foreach (var org in Parties.Where(p => !_succeeded.ContainsKey(p) && !_failed.ContainsKey(p)))
            {
                Fail(org, "dropped", _fetching.ContainsKey(org) ? "upload not finished by the deadline" : "no answer by the deadline");
                Context.System.EventStream.Publish(Answer(org));
            }
        Context.Parent.Tell(new ExchangeCollected(_s.Work.Phase, _succeeded.ToDictionary(), _failed.ToDictionary(), _rejections.ToList()));
        Become(Concluded);
    }

    void Concluded() => ReceiveAny(_ => { }); // late answers: the exchange is over

    public static Props Props(CollectionSettings settings) => Akka.Actor.Props.Create(() => new UpdateCollection(settings));
}
