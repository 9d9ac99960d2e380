using System.Diagnostics;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Rounds;

/// <param name="AbsentGrace">How long a party with no node in the cluster is waited for before it counts as a dropout
/// (null: no membership checks, e.g. outside a cluster).</param>
public sealed record RoundSettings(BlobStore Store, IActorRef PartyRegion, TransferSettings Transfer, TimeSpan ResendInterval, TimeSpan? AbsentGrace = null);

/// <summary>
/// One attempt of one aggregation round (entity id job/round/attempt). Asks every selected party to train, re-asks
/// those that have not answered (a message to a crashed node is lost), pulls each delta from the party's blob server,
/// and aggregates once all answered or, at the deadline, when the quorum is met. Every update is validated first
/// (ids, size, names, shapes, finiteness, norm); a rejected one is logged, counted and left out. Under secure
/// aggregation no delta is pulled: a <see cref="SecureSum"/> child runs SecAgg+ among the parties that trained and
/// only the unmasked sum is aggregated. The result is a new content-addressed global adapter; the job persists it.
/// </summary>
public sealed class AggregationRound : ReceiveActor, IWithTimers
{
    readonly RoundSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Stopwatch _clock = new();
    StartRound? _start;
    IActorRef? _replyTo;
    QuorumPolicy? _quorum;
    readonly Dictionary<string, UpdateReady> _fetching = new();
    readonly Dictionary<string, (UpdateReady Update, FetchCompleted Transfer)> _succeeded = new();
    readonly Dictionary<string, string> _failed = new();
    readonly List<string> _rejections = new();
    RoundFinished? _finished;
    bool _aggregating;
    string? _secureSummary;
    RoundPrivacy? _privacy;

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Resend;
    sealed record Deadline;
    sealed record AbsentCheck;
    sealed record Aggregated(string GlobalDigest, string ServerStateDigest, IReadOnlyList<(string Party, string Reason)> Rejected, IReadOnlyDictionary<string, double> Metrics);
    sealed record AggregationError(string Reason);

    public AggregationRound(RoundSettings settings)
    {
        _s = settings;
        Receive<StartRound>(OnStart);
        Receive<TrainAccepted>(_ => { });
        Receive<UpdateReady>(OnUpdate);
        Receive<UpdateFailed>(f => Record(f.Org, f.Round, f.Attempt, () => _failed[f.Org] = f.Reason));
        Receive<FetchCompleted>(OnFetched);
        Receive<FetchFailed>(OnFetchFailed);
        Receive<Resend>(_ => AskParties());
        Receive<Deadline>(_ => Conclude(deadline: true));
        Receive<AbsentCheck>(_ => DropAbsent());
        Receive<ClusterEvent.MemberRemoved>(e => OnRemoved(e.Member));
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<Aggregated>(OnAggregated);
        Receive<AggregationError>(e => Reply(Failure(e.Reason)));
        Receive<SecureSumReady>(OnSecureSum);
        Receive<SecureSumFailed>(f =>
        {
            foreach (var (org, why) in f.Dropouts) _failed[org] = why;
            Reply(Failure(f.Reason));
        });
        Receive<ReceiveTimeout>(_ => Context.Stop(Self));
    }

    void OnStart(StartRound s)
    {
        if (_start != null)
        {
            // Duplicate start (the job re-sent it): answer with the result if we have one.
            _replyTo = Sender;
            if (_finished != null) Sender.Tell(_finished);
            return;
        }
        _start = s;
        _replyTo = Sender;
        _quorum = new QuorumPolicy(s.Spec.Quorum, s.Spec.Parties.Select(p => p.Org).ToList());
        _clock.Start();
        _log.Info("round {0}: asking {1} parties (quorum {2}, deadline {3})", s.RoundId, _quorum.Parties.Count, _quorum.Min, s.Spec.RoundDeadline);
        AskParties();
        Timers.StartPeriodicTimer("resend", new Resend(), _s.ResendInterval);
        Timers.StartSingleTimer("deadline", new Deadline(), s.Spec.RoundDeadline);
        if (_s.AbsentGrace is { } grace)
        {
            // A party whose node is gone cannot answer: do not hold the round to its deadline for it.
            Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberRemoved));
            Timers.StartSingleTimer("absent", new AbsentCheck(), grace);
        }
    }

    protected override void PostStop()
    {
        if (_s.AbsentGrace is not null) Cluster.Get(Context.System).Unsubscribe(Self);
        base.PostStop();
    }

    bool Waiting(string org) => !_succeeded.ContainsKey(org) && !_failed.ContainsKey(org) && !_fetching.ContainsKey(org);

    /// <summary>
    /// A waiting party's last node left: it gets the absent grace to come back (a restarted party usually does, on a new
    /// node) before it counts as a dropout, rather than the whole round deadline.
    /// </summary>
    void OnRemoved(Member m)
    {
        if (_start is null || _finished != null || _aggregating) return;
        if (_quorum!.Parties.Any(o => Waiting(o) && PartyPlacement.LastNodeOf(Context.System, m, o)))
            Timers.StartSingleTimer("absent", new AbsentCheck(), _s.AbsentGrace!.Value);
    }

    void DropAbsent()
    {
        if (_start is not { } s || _finished != null || _aggregating) return;
        var state = Cluster.Get(Context.System).State;
        // A node still joining counts as present: a restarted party is on its way back.
        foreach (var org in _quorum!.Parties.Where(o => Waiting(o) && !PartyPlacement.Nodes(state, o, includeJoining: true).Any()).ToList())
            Record(org, s.Round, s.Attempt, () => _failed[org] = $"its node left or never joined: no node of this organization in the cluster for {_s.AbsentGrace!.Value.TotalSeconds:G3} s");
    }

    void AskParties()
    {
        if (_start is not { } s || _finished != null) return;
        foreach (var org in _quorum!.Parties.Where(p => !_succeeded.ContainsKey(p) && !_failed.ContainsKey(p) && !_fetching.ContainsKey(p)))
            _s.PartyRegion.Tell(new TrainRequest(org, s.JobId, s.Round, s.Attempt, s.Spec, s.Global));
    }

    void Record(string org, int round, int attempt, Action apply)
    {
        if (_start is not { } s || _finished != null || _aggregating) return;
        if (round != s.Round || attempt != s.Attempt)
        {
            Reject(org, $"answer for round {round} attempt {attempt}, this is round {s.Round} attempt {s.Attempt} (replay refused)");
            return;
        }
        if (_succeeded.ContainsKey(org) || _failed.ContainsKey(org)) return;
        apply();
        if (_quorum!.AllAnswered(_succeeded.Count + _failed.Count)) Conclude(deadline: false);
    }

    void Reject(string org, string reason)
    {
        var line = $"{org}: {reason}";
        if (_rejections.Contains(line)) return; // a re-sent copy of the same bad answer
        _rejections.Add(line);
        _log.Warning("round {0}: rejected update of party {1}: {2}", _start!.RoundId, org, reason);
    }

    void OnUpdate(UpdateReady u)
    {
        if (_start is not { } s || _finished != null || _aggregating) return;
        // A duplicate of an update already being pulled or accepted is idempotent.
        if (_fetching.ContainsKey(u.Org) || _succeeded.ContainsKey(u.Org) || _failed.ContainsKey(u.Org)) return;
        if (u.JobId != s.JobId || u.Round != s.Round || u.Attempt != s.Attempt)
        {
            Reject(u.Org, $"update for {RoundIds.Of(u.JobId, u.Round, u.Attempt)}, this round is {s.RoundId} (replay refused)");
            return;
        }
        if (!_quorum!.Parties.Contains(u.Org))
        {
            Reject(u.Org, "party was not asked in this round");
            return;
        }
        if (s.Spec.SecureAggregation.Enabled)
        {
            if (u.Keys is null || u.Keys.Party != u.Org) Record(u.Org, u.Round, u.Attempt, () => _failed[u.Org] = "rejected: no secure-aggregation keys under its name");
            else Record(u.Org, u.Round, u.Attempt, () => _succeeded[u.Org] = (u, new FetchCompleted("", 0, 0, 0, TimeSpan.Zero)));
            return;
        }
        if (u.Delta is null) { Record(u.Org, u.Round, u.Attempt, () => _failed[u.Org] = "rejected: plain round but no delta offered"); return; }
        if (u.Delta.Size > s.Spec.Limits.MaxBytes)
        {
            Reject(u.Org, $"update of {u.Delta.Size} bytes exceeds the limit of {s.Spec.Limits.MaxBytes}");
            Record(u.Org, u.Round, u.Attempt, () => _failed[u.Org] = $"rejected: update of {u.Delta.Size} bytes exceeds the limit");
            return;
        }
        _fetching[u.Org] = u;
        Context.ActorOf(BlobFetcher.Props(_s.Store, u.Delta, _s.Transfer), FetcherPrefix + u.Org);
    }

    // Fetchers are named per party: two parties may well upload identical deltas (same digest).
    string? FetchingParty() => Sender.Path.Name.StartsWith(FetcherPrefix) ? Sender.Path.Name[FetcherPrefix.Length..] : null;
    const string FetcherPrefix = "fetch-";

    void OnFetched(FetchCompleted f)
    {
        if (FetchingParty() is not { } org || !_fetching.Remove(org, out var update)) return;
        Record(org, update.Round, update.Attempt, () => _succeeded[org] = (update, f));
    }

    void OnFetchFailed(FetchFailed f)
    {
        if (FetchingParty() is not { } org || !_fetching.Remove(org, out var update)) return;
        Record(org, update.Round, update.Attempt, () => _failed[org] = $"upload failed: {f.Reason}");
    }

    void Conclude(bool deadline)
    {
        if (_finished != null || _aggregating || _start is not { } s) return;
        Timers.Cancel("resend");
        Timers.Cancel("deadline");
        if (deadline)
            foreach (var org in _quorum!.Parties.Where(p => !_succeeded.ContainsKey(p) && !_failed.ContainsKey(p)))
                _failed[org] = _fetching.ContainsKey(org) ? "upload not finished by the deadline" : "no answer by the deadline";
        if (!_quorum!.Met(_succeeded.Count))
        {
            Reply(Failure(_quorum.Shortfall(_failed, _succeeded.Keys)));
            return;
        }
        _aggregating = true;
        if (s.Spec.SecureAggregation.Enabled) StartSecureSum(s);
        else AggregatePlain(s);
    }

    void AggregatePlain(StartRound s)
    {
        var store = _s.Store;
        var updates = _succeeded.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (kv.Key, kv.Value.Update.Delta!.Digest, kv.Value.Update.Samples)).ToList();
        var spec = s.Spec;
        var globalDigest = s.Global.Digest;
        var stateDigest = s.ServerStateDigest;
        var rules = new RoundRules(spec.Limits.MaxNorm, _quorum!.Min, spec.Dp, _quorum.Parties.Count);
        // Aggregation touches every adapter byte: keep it off the actor's thread.
        Task.Run(() =>
        {
            var r = FederatedComputation.AggregateValidated(store.Read(globalDigest),
                updates.Select(u => (u.Key, store.Read(u.Digest), u.Samples)).ToList(),
                stateDigest is null ? null : store.Read(stateDigest), spec.Strategy(), rules);
            return (object)new Aggregated(store.Put(r.Global), store.Put(r.ServerState), r.Rejected, r.Metrics);
        }).PipeTo(Self, failure: e => new AggregationError($"aggregation failed: {e.GetBaseException().Message}"));
    }

    void StartSecureSum(StartRound s)
    {
        var global = _s.Store.Read(s.Global.Digest);
        var session = SecureRoundSession.For(s.Spec, s.Round, s.Attempt, FederatedComputation.AdapterLength(global));
        var clip = FederatedComputation.CurrentClip(s.ServerStateDigest is null ? null : _s.Store.Read(s.ServerStateDigest), s.Spec.Dp);
        var keys = _succeeded.ToDictionary(kv => kv.Key, kv => kv.Value.Update.Keys!);
        Context.ActorOf(SecureSum.Props(new SecureSum.Settings(session, s.JobId, s.Round, s.Attempt, keys, _s.PartyRegion, _s.Store, _s.Transfer,
            _s.ResendInterval, TimeSpan.FromSeconds(s.Spec.SecureAggregation.PhaseTimeoutSeconds), clip, _s.AbsentGrace is not null)), "secure-sum");
    }

    void OnSecureSum(SecureSumReady r)
    {
        var s = _start!;
        foreach (var (org, why) in r.Dropouts)
            if (!r.Result.Contributors.Contains(org)) { _succeeded.Remove(org); _failed[org] = $"dropped out of secure aggregation ({why})"; }
        foreach (var org in _succeeded.Keys.Where(o => !r.Result.Contributors.Contains(o)).ToList())
        {
            _succeeded.Remove(org);
            _failed[org] = "dropped out of secure aggregation";
        }
        foreach (var (org, bytes) in r.UploadBytes)
            if (_succeeded.TryGetValue(org, out var ok)) _succeeded[org] = (ok.Update, new FetchCompleted("", bytes, 0, r.Retransmissions.GetValueOrDefault(org), TimeSpan.Zero));
        _secureSummary = r.Summary;
        _log.Info("round {0}: secure aggregation: {1}", s.RoundId, r.Summary);
        if (!_quorum!.Met(_succeeded.Count))
        {
            Reply(Failure(_quorum.Shortfall(_failed, _succeeded.Keys)));
            return;
        }
        var store = _s.Store;
        var spec = s.Spec;
        var globalDigest = s.Global.Digest;
        var stateDigest = s.ServerStateDigest;
        var expected = _quorum.Parties.Count;
        Task.Run(() =>
        {
            var a = FederatedComputation.AggregateSecure(store.Read(globalDigest), r.Session, r.Result,
                stateDigest is null ? null : store.Read(stateDigest), spec.Strategy(), spec.Dp, expected);
            return (object)new Aggregated(store.Put(a.Global), store.Put(a.ServerState), a.Rejected, a.Metrics);
        }).PipeTo(Self, failure: e => new AggregationError($"aggregation failed: {e.GetBaseException().Message}"));
    }

    void OnAggregated(Aggregated a)
    {
        var s = _start!;
        foreach (var (org, reason) in a.Rejected)
        {
            Reject(org, reason);
            _succeeded.Remove(org);
            _failed[org] = $"rejected: {reason}";
        }
        if (s.Spec.Dp.Enabled)
        {
            var dp = s.Spec.Dp;
            var population = dp.Population ?? _quorum!.Parties.Count;
            // Under distributed DP a dropout's noise share is missing: account with the noise that is really there.
            var z = dp.NoiseMultiplier * (dp.Mode == DpMode.Distributed ? Math.Sqrt(a.Metrics.GetValueOrDefault("dp.contributors", _quorum!.Parties.Count) / _quorum!.Parties.Count) : 1);
            _privacy = new RoundPrivacy(_quorum!.Parties.Count / (double)population, z, a.Metrics.GetValueOrDefault("dp.clip", dp.ClipNorm), double.NaN, dp.Delta);
        }
        var reports = _quorum!.Parties.Select(org =>
        {
            if (_succeeded.TryGetValue(org, out var ok))
            {
                var u = ok.Update;
                return new PartyRoundReport(org, true, null, u.Samples, u.FirstLoss, u.LastLoss, u.EvalLoss, ok.Transfer.Bytes, u.DownloadBytes,
                    ok.Transfer.Retransmissions, u.TrainSeconds);
            }
            return new PartyRoundReport(org, false, _failed.GetValueOrDefault(org, "no answer"), 0, double.NaN, double.NaN, null, 0, 0, 0, 0);
        }).ToArray();
        var summary = new RoundSummary(s.Round, s.Attempt, a.GlobalDigest, _clock.Elapsed.TotalSeconds, reports)
        {
            Privacy = _privacy, Rejections = _rejections.ToArray(), SecureAggregation = _secureSummary,
        };
        _log.Info("round {0}: aggregated {1} updates into {2}", s.RoundId, _succeeded.Count, a.GlobalDigest[..12]);
        Reply(new RoundFinished(s.JobId, s.Round, s.Attempt, true, null, a.GlobalDigest, a.ServerStateDigest, summary));
    }

    RoundFinished Failure(string reason)
    {
        _log.Warning("round {0}: {1}", _start!.RoundId, reason);
        return new RoundFinished(_start.JobId, _start.Round, _start.Attempt, false, reason, null, null, null);
    }

    void Reply(RoundFinished result)
    {
        _finished = result;
        _aggregating = false;
        _replyTo?.Tell(result);
        // Stay a little for duplicate StartRounds, then free the entity.
        Context.SetReceiveTimeout(TimeSpan.FromMinutes(2));
    }

    public static Props Props(RoundSettings settings) => Akka.Actor.Props.Create(() => new AggregationRound(settings));
}
