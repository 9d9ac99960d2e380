using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Rounds;

/// <param name="State">The plug-in's state at the ledger's version.</param>
/// <param name="Collection">How each dispatch's <see cref="UpdateCollection"/> asks, re-asks and pulls.</param>
public sealed record BufferSettings(string JobId, JobSpec Spec, BlobLocation SpecBlob, AlgorithmState State, BufferLedger Ledger,
    IFederatedAlgorithm Algorithm, ServerContext Server, RoundSettings Collection)
{
    /// <summary>A party whose work failed is asked again after this long (also how often absent parties are looked for).</summary>
    public TimeSpan RetryAfter { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// The buffered schedule of one job (FedBuff), a child of its <see cref="JobActor"/>: keeps <c>concurrency</c> parties
/// training, each from the version it downloaded (one <see cref="UpdateCollection"/> per dispatch, its work id's round the
/// update id); buffers the updates that arrive, refusing those staler than <c>max-staleness</c>; and every <c>buffer</c>
/// updates runs the plug-in's step over them with their staleness weights, publishing the next version. It persists
/// nothing itself: every event goes to the job (<see cref="Record"/>), and it acts on it only once the job answers that
/// it is journaled (<see cref="Recorded"/>), folding it into the same <see cref="BufferLedger"/> the job recovers — so a
/// restarted job resumes exactly where the journal says, re-asking its in-flight work under the same ids.
/// </summary>
public sealed class UpdateBuffer : ReceiveActor, IWithTimers
{
    /// <summary>To the job: journal this event and answer <see cref="Recorded"/>.</summary>
    public sealed record Record(IJobEvent Event);
    /// <summary>From the job: the event is journaled (a flush's RoundCompleted carries the new state).</summary>
    public sealed record Recorded(IJobEvent Event);
    /// <summary>To the job: no flush for too long; the job fails with the reason.</summary>
    public sealed record Stalled(string Reason);
    /// <summary>From the job: stop every party's work (the job is cancelled, or has all its versions).</summary>
    public sealed record Stop(string Reason);

    sealed record Configured(int Id, string Org, int Version, Exchange Exchange);
    sealed record ConfigureFailed(string Org, string Reason);
    sealed record Flushed(StepOutcome Outcome, IReadOnlyList<PendingUpdate> Taken, BufferContribution[] Contributions);
    sealed record FlushFailed(IReadOnlyList<PendingUpdate> Taken, string Reason);
    sealed record Retry(string Org);
    sealed record FillCheck;
    sealed record StallCheck;

    readonly BufferSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    BufferLedger _ledger;
    AlgorithmState _state;
    int _nextId;
    bool _flushing, _stopping;
    DateTimeOffset _lastFlush;
    /// <summary>Parties whose next dispatch is being configured (off the actor thread), by update id.</summary>
    readonly Dictionary<string, int> _configuring = new();
    readonly HashSet<string> _waiting = new();
    /// <summary>Drops after which the party is asked again at once (it trained, but too stale) rather than after the retry delay.</summary>
    readonly HashSet<int> _noBackoff = new();
    readonly Dictionary<IActorRef, UpdateDispatched> _collecting = new();
    readonly Dictionary<string, long> _lastAsked = new();
    readonly Dictionary<string, string> _lastFailure = new();
    long _asks;

    public ITimerScheduler Timers { get; set; } = null!;

    ScheduleSpec Schedule => _s.Spec.Schedule;
    string Job => _s.JobId;
    /// <summary>How long the buffer may go without a flush: every party's whole retry budget of one round.</summary>
    TimeSpan StallAfter => _s.Spec.Round.Deadline * _s.Spec.Round.MaxAttempts;

    public UpdateBuffer(BufferSettings settings)
    {
        _s = settings;
        _ledger = settings.Ledger;
        _state = settings.State;
        _nextId = _ledger.NextUpdate;
        Receive<Configured>(OnConfigured);
        Receive<ConfigureFailed>(f => Context.Parent.Tell(new Stalled($"the algorithm could not configure the work of party {f.Org}: {f.Reason}")));
        Receive<Recorded>(r => OnRecorded(r.Event));
        Receive<ExchangeCollected>(OnCollected);
        Receive<PartyProgressed>(p => Context.Parent.Forward(p));
        Receive<PartyAnswered>(_ => { }); // the board has it from the event stream
        Receive<Flushed>(OnFlushed);
        Receive<FlushFailed>(f =>
        {
            _flushing = false;
            _log.Warning("job {0}: the flush to version {1} failed ({2}); its {3} updates are dropped and their parties train again", Job, _ledger.Version + 1, f.Reason, f.Taken.Count);
            foreach (var p in f.Taken) Drop(p.Id, p.Org, $"the flush it was in failed: {f.Reason}", backoff: false);
        });
        Receive<Retry>(r =>
        {
            _waiting.Remove(r.Org);
            Fill();
        });
        Receive<FillCheck>(_ => Fill());
        Receive<StallCheck>(_ => Context.Parent.Tell(new Stalled(StallReason())));
        Receive<Stop>(OnStop);
    }

    protected override void PreStart()
    {
        _lastFlush = Context.System.Scheduler.Now;
        Timers.StartPeriodicTimer("fill", new FillCheck(), _s.RetryAfter);
        Timers.StartSingleTimer("stall", new StallCheck(), StallAfter);
        // A resumed job: its work in flight is asked again under the same ids; what it cannot serve is dropped.
        foreach (var d in _ledger.InFlight.Values)
        {
            var lacking = d.Exchange.Instructions[d.Org].Downloads.Values.Where(x => !_s.Collection.Store.Has(x)).ToList();
            if (lacking.Count == 0) Ask(d);
            else Drop(d.UpdateId, d.Org, $"its downloads ({string.Join(", ", lacking.Select(x => x[..12] + "…"))}) are not on this arbiter after the job moved; it trains again from the newest version", backoff: false);
        }
        foreach (var p in _ledger.Pending.Where(p => !_s.Collection.Store.Has(p.Arrival.Digest)))
            Drop(p.Id, p.Org, "its buffered update is not on this arbiter after the job moved; it trains again from the newest version", backoff: false);
        DropStale();
        _log.Info($"job {Job}: buffered schedule at version {_ledger.Version}/{_s.Spec.Rounds}: buffer {_ledger.Pending.Count}/{Schedule.Buffer}, " +
            $"{_ledger.InFlight.Count} training, up to {Schedule.ConcurrencyFor(_s.Spec.Parties.Length)} at once");
        Fill();
        MaybeFlush();
    }

    // ---- dispatch ----

    int Training => _ledger.InFlight.Count + _configuring.Count;

    /// <summary>Asks idle parties (longest idle first) until <c>concurrency</c> train; absent ones and ones waiting to retry are passed over.</summary>
    void Fill()
    {
        if (_stopping) return;
        var limit = Schedule.ConcurrencyFor(_s.Spec.Parties.Length);
        var idle = _s.Spec.Parties.Select((p, i) => (p.Org, i))
            .Where(p => !_ledger.Busy(p.Org) && !_configuring.ContainsKey(p.Org) && !_waiting.Contains(p.Org) && _s.Collection.Presence.Present(p.Org))
            .OrderBy(p => _lastAsked.GetValueOrDefault(p.Org, -1)).ThenBy(p => p.i).Select(p => p.Org);
        foreach (var org in idle.Take(Math.Max(0, limit - Training)).ToList()) Dispatch(org);
    }

    void Dispatch(string org)
    {
        var id = _nextId++;
        _configuring[org] = id;
        _lastAsked[org] = ++_asks;
        var (algorithm, ctx, state, version) = (_s.Algorithm, new RoundContext(_s.Server, id, 1, [org]), _state, _ledger.Version);
        Task.Run(() => (object)new Configured(id, org, version, RoundStep.Begin(algorithm, ctx, state)))
            .PipeTo(Self, failure: e => new ConfigureFailed(org, e.GetBaseException().Message));
    }

    void OnConfigured(Configured c)
    {
        if (_stopping) return;
        if (!c.Exchange.Instructions.ContainsKey(c.Org))
        {
            Context.Parent.Tell(new Stalled($"the algorithm's exchange for party {c.Org} does not address it"));
            return;
        }
        Context.Parent.Tell(new Record(new UpdateDispatched(c.Id, c.Org, c.Version, c.Exchange with { Instructions = new Dictionary<string, PartyInstruction> { [c.Org] = c.Exchange.Instructions[c.Org] } }, DateTime.UtcNow)));
    }

    /// <summary>One party's work as a one-party exchange: asked, re-asked as its heartbeat, its update pulled into the store.</summary>
    void Ask(UpdateDispatched d)
    {
        var work = Work(d);
        var instruction = d.Exchange.Instructions[d.Org];
        var store = _s.Collection.Store;
        var request = new WorkRequest(d.Org, work, _s.SpecBlob, d.Exchange.Name,
            instruction.Downloads.ToDictionary(x => x.Key, x => new BlobLocation(x.Value, store.Size(x.Value), _s.Collection.BlobServer)),
            instruction.Parameters, d.Exchange.VectorLayout, [d.Org]);
        var spec = _s.Spec;
        var child = Context.ActorOf(UpdateCollection.Props(new CollectionSettings(work, new Dictionary<string, WorkRequest> { [d.Org] = request }, Secure: false,
            _s.Algorithm.Codec.MaxBytes(d.Exchange, spec.Validation), Quorum: 1, spec.Round.Deadline, _s.Collection) { Inactivity = spec.Round.Inactivity }), $"update-{d.UpdateId}");
        _collecting[child] = d;
    }

    WorkId Work(UpdateDispatched d) => new(Job, d.UpdateId, 1, 1);

    void OnCollected(ExchangeCollected c)
    {
        if (!_collecting.Remove(Sender, out var d)) return;
        Context.Stop(Sender);
        if (_stopping) return;
        if (!c.Succeeded.TryGetValue(d.Org, out var u))
        {
            Drop(d.UpdateId, d.Org, c.Failed.GetValueOrDefault(d.Org, "no answer"), backoff: true);
            return;
        }
        var staleness = _ledger.Version - d.BaseVersion;
        if (Schedule.Refusal(staleness, d.BaseVersion, _ledger.Version) is { } stale)
        {
            Drop(d.UpdateId, d.Org, stale, backoff: false);
            return;
        }
        var r = u.Update;
        double M(string k) => r.Metrics.TryGetValue(k, out var v) ? v : double.NaN;
        var report = new PartyRoundReport(d.Org, true, null, r.Samples, M(ClientUpdate.FirstLoss), M(ClientUpdate.LastLoss),
            r.Metrics.TryGetValue(ClientUpdate.EvalLoss, out var e) ? e : null, u.UploadBytes, r.DownloadBytes, u.Retransmissions, r.TrainSeconds) { Metrics = r.Metrics };
        Context.Parent.Tell(new Record(new UpdateBuffered(d.UpdateId, d.Org, d.BaseVersion, u.Digest, report, DateTime.UtcNow)));
    }

    void Drop(int id, string org, string reason, bool backoff)
    {
        if (!backoff) _noBackoff.Add(id);
        Context.Parent.Tell(new Record(new UpdateDropped(id, org, reason, DateTime.UtcNow)));
    }

    /// <summary>Buffered updates the last flush made staler than <c>max-staleness</c> leave the buffer; their parties train again.</summary>
    void DropStale()
    {
        foreach (var p in _ledger.Pending)
            if (Schedule.Refusal(_ledger.Version - p.Dispatch.BaseVersion, p.Dispatch.BaseVersion, _ledger.Version) is { } stale)
                Drop(p.Id, p.Org, stale, backoff: false);
    }

    // ---- journaled events ----

    void OnRecorded(IJobEvent e)
    {
        if (_stopping) return;
        _ledger = _ledger.Apply(e);
        switch (e)
        {
            case UpdateDispatched d:
                _configuring.Remove(d.Org); // busy from now on as in flight
                Ask(d);
                break;
            case UpdateBuffered b:
                _log.Info("job {0}: update {1} of {2} (from version {3}) buffered: {4}/{5}", Job, b.UpdateId, b.Org, b.BaseVersion, _ledger.Pending.Count, Schedule.Buffer);
                MaybeFlush();
                break;
            case UpdateDropped x:
                _lastFailure[x.Org] = x.Reason;
                _log.Warning("job {0}: update {1} of {2} dropped: {3}", Job, x.UpdateId, x.Org, x.Reason);
                if (!_noBackoff.Remove(x.UpdateId))
                {
                    _waiting.Add(x.Org);
                    Timers.StartSingleTimer("retry-" + x.Org, new Retry(x.Org), _s.RetryAfter);
                }
                Fill();
                break;
            case RoundCompleted c:
                _state = c.State;
                _flushing = false;
                _lastFlush = Context.System.Scheduler.Now;
                Timers.StartSingleTimer("stall", new StallCheck(), StallAfter);
                DropStale();
                Fill();
                MaybeFlush();
                break;
        }
    }

    // ---- flushes ----

    void MaybeFlush()
    {
        if (_flushing || _stopping || _ledger.Pending.Count < Schedule.Buffer) return;
        _flushing = true;
        var taken = _ledger.Pending.Take(Schedule.Buffer).ToList();
        var version = _ledger.Version;
        var contributions = taken.Select(p =>
        {
            var s = version - p.Dispatch.BaseVersion;
            return new BufferContribution(p.Id, p.Org, p.Dispatch.BaseVersion, s, Schedule.Weight(s));
        }).ToArray();
        var offered = taken.Zip(contributions, (p, c) => new OfferedUpdate(p.Org, p.Arrival.Digest, p.Arrival.Report.Samples, p.Arrival.Report.Metrics) { Weight = c.Weight }).ToList();
        var (algorithm, ctx, state, exchange) = (_s.Algorithm, new RoundContext(_s.Server, version + 1, 1, taken.Select(p => p.Org).ToArray()), _state, FlushExchange(taken));
        _log.Info("job {0}: flushing {1} updates into version {2} (staleness {3})", Job, taken.Count, version + 1, string.Join(", ", contributions.Select(c => $"{c.Org} {c.Staleness}")));
        Task.Run(() => (object)new Flushed(RoundStep.Plain(algorithm, ctx, state, exchange, 1, offered, 1), taken, contributions))
            .PipeTo(Self, failure: e => new FlushFailed(taken, e.GetBaseException().Message));
    }

    /// <summary>
    /// The flush as one exchange of the buffered parties. Their updates trained from different versions, which share the
    /// vector layout's names and shapes: the newest one's stands for all (the step applies the mean to the current global).
    /// </summary>
    static Exchange FlushExchange(IReadOnlyList<PendingUpdate> taken)
    {
        var newest = taken.MaxBy(p => p.Dispatch.BaseVersion)!.Dispatch.Exchange;
        var layout = newest.VectorLayout is { } name ? newest.Instructions.Values.Single().Downloads[name] : null;
        return new Exchange(newest.Name, taken.ToDictionary(p => p.Org, p =>
        {
            var own = p.Dispatch.Exchange.Instructions[p.Org];
            return layout is null ? own : own with { Downloads = new Dictionary<string, string>(own.Downloads) { [newest.VectorLayout!] = layout } };
        }, StringComparer.Ordinal)) { VectorLayout = newest.VectorLayout };
    }

    void OnFlushed(Flushed f)
    {
        if (_stopping) return;
        var o = f.Outcome;
        var rejected = o.Rejected.ToDictionary(r => r.Party, r => r.Reason);
        var reports = f.Taken.Select(p => rejected.TryGetValue(p.Org, out var why)
            ? p.Arrival.Report with { Succeeded = false, Reason = $"rejected: {why}" }
            : p.Arrival.Report).ToArray();
        var dp = _s.Spec.Dp;
        var summary = new RoundSummary(_ledger.Version + 1, 1, o.State.Find(AlgorithmState.Global), (Context.System.Scheduler.Now - _lastFlush).TotalSeconds, reports)
        {
            // Each flush is charged as one Gaussian step over every party (q = 1): which K updates a flush holds depends on
            // speed, not on a random draw, so no amplification by sampling is claimed.
            Privacy = o.Metrics.TryGetValue("dp.clip", out var clip) ? new RoundPrivacy(1.0, dp.NoiseMultiplier, clip, double.NaN, dp.Delta) : null,
            Rejections = o.Rejected.Select(r => $"{r.Party}: {r.Reason}").ToArray(),
            Metrics = o.Metrics,
            Buffer = new FlushReport(f.Contributions),
        };
        Context.Parent.Tell(new Record(new RoundCompleted(summary, o.State, DateTime.UtcNow)));
    }

    // ---- ending ----

    string StallReason()
    {
        var parties = string.Join("; ", _s.Spec.Parties.Select(p => p.Org).Select(org =>
            _ledger.InFlight.Values.FirstOrDefault(d => d.Org == org) is { } d ? $"{org}: training update {d.UpdateId} from version {d.BaseVersion}"
            : _ledger.Pending.Any(p => p.Org == org) ? $"{org}: its update waits in the buffer"
            : !_s.Collection.Presence.Present(org) ? $"{org}: no node in the cluster"
            : _lastFailure.TryGetValue(org, out var why) ? $"{org}: {why}" : $"{org}: idle"));
        return $"no buffered flush for {StallAfter.TotalSeconds:G4} s (round-deadline × max-round-attempts): the buffer holds {_ledger.Pending.Count} of {Schedule.Buffer} updates at version {_ledger.Version}; {parties}";
    }

    void OnStop(Stop s)
    {
        _stopping = true;
        Timers.CancelAll();
        foreach (var d in _ledger.InFlight.Values) _s.Collection.PartyRegion.Tell(new CancelWork(d.Org, Work(d)));
        if (_ledger.Pending.Count > 0)
            _log.Info("job {0}: {1} buffered update(s) left unapplied ({2})", Job, _ledger.Pending.Count, s.Reason);
        Context.Stop(Self);
    }

    public static Props Props(BufferSettings settings) => Akka.Actor.Props.Create(() => new UpdateBuffer(settings));
}
