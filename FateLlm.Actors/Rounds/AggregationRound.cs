using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Rounds;

/// <param name="AbsentGrace">How long a party with no node in the cluster is waited for before it counts as a dropout
/// (null: no membership checks, e.g. outside a cluster).</param>
public sealed record RoundSettings(BlobStore Store, IActorRef PartyRegion, IActorRef BlobServer, TransferSettings Transfer, TimeSpan ResendInterval)
{
    public IPartyPresence Presence { get; init; } = AlwaysPresent.Instance;
    public TimeSpan? AbsentGrace { get; init; }
    /// <summary>How long a finished round answers a re-sent StartRound before it stops.</summary>
    public TimeSpan Linger { get; init; } = TimeSpan.FromMinutes(2);
    public string? ModelsRoot { get; init; }
    public FaultInjection Faults { get; init; } = FaultInjection.None;
    /// <summary>The plug-ins this node runs.</summary>
    public AlgorithmCatalog Algorithms { get; init; } = AlgorithmCatalog.BuiltIn;
    /// <summary>Runs as a sharded entity: it passivates through its shard instead of stopping itself.</summary>
    public bool Sharded { get; init; }
}

/// <summary>
/// One attempt of one round of any algorithm (entity id job/round/attempt), as explicit phases: configuring (the
/// algorithm's first exchange), collecting (an <see cref="UpdateCollection"/> child asks the exchange's parties and
/// pulls their updates), summing (a <see cref="SecureSum"/> child, when the exchange is summed securely), stepping
/// (validation, DP and the algorithm's server step, off the actor thread), and finished. A step may return another
/// exchange: the round reports the finished one to the job (persisted, so a restarted arbiter resumes there) and
/// collects again. The round never looks inside updates or state; the algorithm's codec and server side do.
/// </summary>
public sealed class AggregationRound : ReceiveActor
{
    readonly RoundSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Stopwatch _clock = new();
    StartRound _start = null!;
    IActorRef _replyTo = ActorRefs.Nobody;
    IFederatedAlgorithm _algorithm = null!;
    RoundContext _ctx = null!;
    AlgorithmState _state = null!;
    int _phase;
    Exchange _exchange = null!;
    IActorRef? _child;
    RoundFinished? _finished;
    readonly Dictionary<string, PartyTrack> _parties = new();
    readonly List<string> _rejections = new();
    readonly Dictionary<string, double> _metrics = new();
    IReadOnlyDictionary<string, CollectedUpdate> _collected = new Dictionary<string, CollectedUpdate>();
    string? _secureSummary;
    RoundPrivacy? _privacy;

    /// <summary>A party's part in the round so far, over all exchanges.</summary>
    sealed class PartyTrack
    {
        public bool Succeeded;
        public string? Reason;
        public long Samples, Upload, Download;
        public int Retransmissions;
        public double TrainSeconds;
        public readonly Dictionary<string, double> Metrics = new();
    }

    sealed record Configured(Exchange Exchange);
    sealed record SumPrepared(SecAggSession Session, double Clip);
    sealed record Stepped(StepOutcome Outcome);
    sealed record StepFailed(string Reason);

    public AggregationRound(RoundSettings settings)
    {
        _s = settings;
        Receive<StartRound>(Begin);
        Receive<AbortRound>(_ => Context.Stop(Self));
    }

    string RoundId => _start.RoundId;
    int MinAccepted => Math.Min(_start.Spec.Round.Quorum, _exchange.Instructions.Count);

    /// <summary>What every phase but the last handles alike: a re-sent start (the job retried it) and an abort.</summary>
    void InFlight()
    {
        Receive<StartRound>(s => _replyTo = Sender);
        Receive<AbortRound>(a =>
        {
            _log.Info("round {0}: aborted ({1})", RoundId, a.Reason);
            foreach (var org in _exchange?.Parties ?? []) _s.PartyRegion.Tell(new CancelWork(org, Work(_phase)));
            Context.Stop(Self);
        });
    }

    void Begin(StartRound s)
    {
        _start = s;
        _replyTo = Sender;
        _clock.Start();
        var spec = s.Spec;
        _algorithm = _s.Algorithms.For(spec);
        _ctx = new RoundContext(new ServerContext(spec, _s.Store, ModelLocation.Resolve(spec.ModelPath, _s.ModelsRoot), m => _log.Info("round {0}: {1}", s.RoundId, m)),
            s.Round, s.Attempt, s.Participants);
        foreach (var org in s.Participants) _parties[org] = new PartyTrack { Reason = "no answer" };
        _state = s.Resume?.State ?? s.State;
        _log.Info("round {0}: {1} parties ({2}), quorum {3}, deadline {4}", s.RoundId, s.Participants.Length, string.Join(", ", s.Participants),
            spec.Round.Quorum, s.ExchangeDeadline);
        // The state may live on another arbiter (the job's), or only with the parties after a fail-over: bring it here first.
        var lacking = _s.Store.Lacking(_state.Artifacts.Values);
        if (lacking.Count > 0)
        {
            _log.Info("round {0}: pulling {1} state blob(s) this arbiter lacks from the cluster", s.RoundId, lacking.Count);
            Context.ActorOf(BlobGather.Props(_s.Store, lacking, _s.Transfer, s.RoundId), "gather-state");
            Become(() =>
            {
                InFlight();
                Receive<BlobsGathered>(_ => Configure());
                Receive<BlobsMissing>(m => Finish(Failure($"the round's state is not on this arbiter and {m.Reason}")));
            });
            return;
        }
        Configure();
    }

    void Configure()
    {
        if (_start.Resume is { } resume)
        {
            _log.Info("round {0}: resuming at exchange {1} ('{2}')", RoundId, resume.Phase, resume.Exchange.Name);
            Collect(resume.Phase, resume.Exchange);
            return;
        }
        var (algorithm, ctx, state) = (_algorithm, _ctx, _state);
        Become(() =>
        {
            InFlight();
            Receive<Configured>(c => Collect(1, c.Exchange));
            Receive<StepFailed>(f => Finish(Failure(f.Reason)));
        });
        Task.Run(() => (object)new Configured(RoundStep.Begin(algorithm, ctx, state)))
            .PipeTo(Self, failure: e => new StepFailed($"the algorithm could not configure the round: {e.GetBaseException().Message}"));
    }

    WorkId Work(int phase) => new(_start.JobId, _start.Round, _start.Attempt, phase);

    bool Secure(Exchange exchange) => _start.Spec.SecureAggregation.Enabled && exchange.VectorLayout is not null && !exchange.LayoutPerParty;

    void Collect(int phase, Exchange exchange)
    {
        (_phase, _exchange) = (phase, exchange);
        var spec = _start.Spec;
        var unknown = exchange.Parties.Where(p => !_parties.ContainsKey(p)).ToList();
        if (unknown.Count > 0)
        {
            Finish(Failure($"exchange '{exchange.Name}' addresses {string.Join(", ", unknown)}, who are not participants of this round"));
            return;
        }
        var missing = exchange.Instructions.Values.SelectMany(i => i.Downloads.Values).Distinct().Where(d => !_s.Store.Has(d)).ToList();
        if (missing.Count > 0)
        {
            Finish(Failure($"exchange '{exchange.Name}' offers downloads this arbiter does not hold: {string.Join(", ", missing.Select(d => d[..12] + "…"))}"));
            return;
        }
        var secure = Secure(exchange);
        var work = Work(phase);
        var cohort = exchange.Parties.ToArray();
        var requests = exchange.Instructions.ToDictionary(kv => kv.Key, kv => new WorkRequest(kv.Key, work, _start.SpecBlob, exchange.Name,
            kv.Value.Downloads.ToDictionary(d => d.Key, d => new BlobLocation(d.Value, _s.Store.Size(d.Value), _s.BlobServer)),
            kv.Value.Parameters, exchange.VectorLayout, cohort));
        var budget = _start.ExchangeDeadline + (secure ? spec.SecureAggregation.PhaseTimeout * SecureAggregationOptions.TimedSteps : TimeSpan.Zero);
        _replyTo.Tell(new RoundProgress(_start.JobId, _start.Round, _start.Attempt, phase, RoundStage.Collect, budget) { Asked = cohort });
        _log.Info("round {0}: exchange {1} ('{2}') asks {3}", RoundId, phase, exchange.Name, string.Join(", ", cohort));
        _child = Context.ActorOf(UpdateCollection.Props(new CollectionSettings(work, requests, secure, _algorithm.Codec.MaxBytes(exchange, spec.Validation),
            MinAccepted, _start.ExchangeDeadline, _s) { Inactivity = spec.Round.Inactivity }), $"collect-{phase}");
        Become(() =>
        {
            InFlight();
            Receive<ExchangeCollected>(OnCollected);
            Receive<PartyAnswered>(a => _replyTo.Tell(new RoundPartyAnswered(_start.JobId, _start.Round, _start.Attempt, a.Work.Phase, a.Org, a.Succeeded, a.Reason)));
            Receive<PartyProgressed>(p => _replyTo.Tell(new RoundPartyProgress(_start.JobId, _start.Round, _start.Attempt, p.Work.Phase, p.Org, p.Progress)));
        });
    }

    void OnCollected(ExchangeCollected c)
    {
        Context.Stop(_child);
        _collected = c.Succeeded;
        _rejections.AddRange(c.Rejections.Where(r => !_rejections.Contains(r)));
        foreach (var (org, why) in c.Failed) Track(org, false, why);
        foreach (var (org, u) in c.Succeeded)
        {
            var t = Track(org, true, null);
            t.Samples = u.Update.Samples;
            t.Upload += u.UploadBytes;
            t.Download += u.Update.DownloadBytes;
            t.Retransmissions += u.Retransmissions;
            t.TrainSeconds += u.Update.TrainSeconds;
            foreach (var (k, v) in u.Update.Metrics) t.Metrics.TryAdd(k, v);
        }
        if (c.Succeeded.Count < MinAccepted)
        {
            Finish(Failure(Shortfall(c.Succeeded.Keys)));
            return;
        }
        if (_s.Faults.Trip(FaultPoints.RoundCollected, Context, round: _start.Round, phase: _phase, job: _start.JobId)) return;
        if (Secure(_exchange)) Sum();
        else
        {
            var (algorithm, ctx, state, exchange, phase, offered, min) = (_algorithm, _ctx, _state, _exchange, _phase, Offered(), MinAccepted);
            Step(() => RoundStep.Plain(algorithm, ctx, state, exchange, phase, offered, min));
        }
    }

    PartyTrack Track(string org, bool succeeded, string? reason)
    {
        var t = _parties[org];
        t.Succeeded = succeeded;
        t.Reason = succeeded ? null : _phase > 1 ? $"exchange {_phase} ('{_exchange.Name}'): {reason}" : reason;
        return t;
    }

    List<OfferedUpdate> Offered() => _collected.Select(kv => new OfferedUpdate(kv.Key, kv.Value.Digest, kv.Value.Update.Samples, kv.Value.Update.Metrics)).ToList();

    string Shortfall(IEnumerable<string> succeeded)
    {
        var ok = succeeded.ToHashSet();
        var missing = _exchange.Parties.Where(p => !ok.Contains(p)).Select(p => $"{p} ({_parties[p].Reason ?? "no answer"})");
        return $"quorum not met: {ok.Count} of {_exchange.Instructions.Count} parties delivered an update{(_phase > 1 ? $" in exchange {_phase}" : "")}, {MinAccepted} required; missing: {string.Join(", ", missing)}";
    }

    /// <summary>The session (from the vector layout) and the DP clip norm are read off the actor thread, then the secure sum runs.</summary>
    void Sum()
    {
        var (spec, store, state, exchange, work, round, attempt, phase) = (_start.Spec, _s.Store, _state, _exchange, Work(_phase), _start.Round, _start.Attempt, _phase);
        Task.Run(() => new SumPrepared(
                RoundStep.Session(spec, work.ToString(), exchange.Parties, round, attempt, phase, RoundStep.VectorLength(store.Read(RoundStep.LayoutDigest(exchange)!))),
                RoundStep.Clip(store, state, spec.Dp)))
            .PipeTo(Self, failure: e => new StepFailed($"secure aggregation could not start: {e.GetBaseException().Message}"));
        Become(() =>
        {
            InFlight();
            Receive<SumPrepared>(p =>
            {
                var keys = _collected.ToDictionary(kv => kv.Key, kv => kv.Value.Update.Keys!);
                _child = Context.ActorOf(SecureSum.Props(new SecureSum.Settings(p.Session, work, keys, _s.PartyRegion, _s.Store, _s.Transfer,
                    _s.ResendInterval, spec.SecureAggregation.PhaseTimeout, p.Clip, _s.Presence)), $"secure-sum-{phase}");
            });
            Receive<StepFailed>(f => Finish(Failure(f.Reason)));
            Receive<SecureSumReady>(OnSecureSum);
            Receive<SecureSumFailed>(f =>
            {
                foreach (var (org, why) in f.Dropouts) Track(org, false, $"dropped out of secure aggregation ({why})");
                Finish(Failure(f.Reason));
            });
        });
    }

    void OnSecureSum(SecureSumReady r)
    {
        foreach (var org in _collected.Keys.Where(o => !r.Result.Contributors.Contains(o)))
            Track(org, false, r.Dropouts.TryGetValue(org, out var why) ? $"dropped out of secure aggregation ({why})" : "dropped out of secure aggregation");
        foreach (var (org, bytes) in r.UploadBytes) { _parties[org].Upload += bytes; _parties[org].Retransmissions += r.Retransmissions.GetValueOrDefault(org); }
        _secureSummary = _secureSummary is null ? r.Summary : $"{_secureSummary}; exchange {_phase}: {r.Summary}";
        _log.Info("round {0}: secure aggregation: {1}", RoundId, r.Summary);
        if (r.Result.Contributors.Count < MinAccepted)
        {
            Finish(Failure(Shortfall(r.Result.Contributors)));
            return;
        }
        var (algorithm, ctx, state, exchange, phase, input) = (_algorithm, _ctx, _state, _exchange, _phase, new SecureSumInput(r.Session, r.Result, Offered()));
        Step(() => RoundStep.Secure(algorithm, ctx, state, exchange, phase, input));
    }

    /// <summary>Validation, DP and the algorithm's server step (which may train) off the actor thread.</summary>
    void Step(Func<StepOutcome> run)
    {
        _replyTo.Tell(new RoundProgress(_start.JobId, _start.Round, _start.Attempt, _phase, RoundStage.Step, _start.ExchangeDeadline));
        Become(() =>
        {
            InFlight();
            Receive<Stepped>(OnStepped);
            Receive<StepFailed>(f => Finish(Failure(f.Reason)));
        });
        Task.Run(() => (object)new Stepped(run())).PipeTo(Self, failure: e => new StepFailed($"aggregation failed: {e.GetBaseException().Message}"));
    }

    void OnStepped(Stepped s)
    {
        var o = s.Outcome;
        if (_s.Faults.Trip(FaultPoints.RoundStepped, Context, round: _start.Round, phase: _phase, job: _start.JobId)) return;
        foreach (var r in o.Rejected)
        {
            var line = $"{r.Party}: {r.Reason}";
            if (!_rejections.Contains(line)) _rejections.Add(line);
            _log.Warning("round {0}: rejected update of party {1}: {2}", RoundId, r.Party, r.Reason);
            Track(r.Party, false, $"rejected: {r.Reason}");
        }
        foreach (var (k, v) in o.Metrics) _metrics[k] = v;
        if (o.Metrics.ContainsKey("dp.clip")) _privacy = Privacy(o);
        _state = o.State;
        if (o.Next is { } next)
        {
            _replyTo.Tell(new RoundPhaseDone(_start.JobId, _start.Round, _start.Attempt, _phase, _state, next));
            Collect(_phase + 1, next);
            return;
        }
        var reports = _start.Participants.Select(org =>
        {
            var t = _parties[org];
            double M(string k) => t.Metrics.TryGetValue(k, out var v) ? v : double.NaN;
            return t.Succeeded
                ? new PartyRoundReport(org, true, null, t.Samples, M(ClientUpdate.FirstLoss), M(ClientUpdate.LastLoss),
                    t.Metrics.TryGetValue(ClientUpdate.EvalLoss, out var e) ? e : null, t.Upload, t.Download, t.Retransmissions, t.TrainSeconds) { Metrics = t.Metrics }
                : new PartyRoundReport(org, false, t.Reason ?? "no answer", 0, double.NaN, double.NaN, null, t.Upload, t.Download, t.Retransmissions, t.TrainSeconds);
        }).ToArray();
        var summary = new RoundSummary(_start.Round, _start.Attempt, _state.Find(AlgorithmState.Global), _clock.Elapsed.TotalSeconds, reports)
        {
            Privacy = _privacy, Rejections = _rejections.ToArray(), SecureAggregation = _secureSummary, Exchanges = _phase, Metrics = _metrics,
        };
        _log.Info("round {0}: done after {1} exchange(s) with {2} contributors", RoundId, _phase, o.Contributors.Count);
        Finish(new RoundFinished(_start.JobId, _start.Round, _start.Attempt, true, null, _state, summary));
    }

    /// <summary>The round's DP accounting: q from the sample, z from the noise really present (a dropout's share is missing).</summary>
    RoundPrivacy Privacy(StepOutcome o)
    {
        var dp = _start.Spec.Dp;
        var expected = _exchange.Instructions.Count;
        var contributors = o.Metrics.GetValueOrDefault("dp.contributors", expected);
        var z = dp.NoiseMultiplier * (dp.Mode == DpMode.Distributed ? Math.Sqrt(contributors / expected) : 1);
        return new RoundPrivacy(_start.Participants.Length / (double)_start.Spec.Parties.Length, z, o.Metrics["dp.clip"], double.NaN, dp.Delta);
    }

    RoundFinished Failure(string reason)
    {
        _log.Warning("round {0}: {1}", RoundId, reason);
        return new RoundFinished(_start.JobId, _start.Round, _start.Attempt, false, reason, null, null);
    }

    void Finish(RoundFinished result)
    {
        if (_child is not null) Context.Stop(_child);
        _finished = result;
        _replyTo.Tell(result);
        Become(() =>
        {
            // Re-sent starts get the result; then the entity passivates.
            Receive<StartRound>(_ => Sender.Tell(_finished));
            Receive<ReceiveTimeout>(_ => Entity.Passivate(Context, _s.Sharded));
            ReceiveAny(_ => { });
        });
        Context.SetReceiveTimeout(_s.Linger);
    }

    public static Props Props(RoundSettings settings) => Akka.Actor.Props.Create(() => new AggregationRound(settings));
}

/// <summary>Runs one round outside a job (benchmarks, specs): completes with its result, skipping its progress reports.</summary>
public static class RoundRunner
{
    public static Task<RoundFinished> RunAsync(ActorSystem system, RoundSettings settings, StartRound start, TimeSpan timeout)
    {
        var done = new TaskCompletionSource<RoundFinished>(TaskCreationOptions.RunContinuationsAsynchronously);
        system.ActorOf(Props.Create(() => new Runner(settings, start, done)));
        return done.Task.WaitAsync(timeout);
    }

    sealed class Runner : ReceiveActor
    {
        public Runner(RoundSettings settings, StartRound start, TaskCompletionSource<RoundFinished> done)
        {
            Context.ActorOf(AggregationRound.Props(settings)).Tell(start);
            Receive<RoundFinished>(f =>
            {
                done.TrySetResult(f);
                Context.Stop(Self);
            });
            ReceiveAny(_ => { });
        }
    }
}
