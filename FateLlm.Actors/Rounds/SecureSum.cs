using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Rounds;

/// <summary>The secure-aggregation session of one round attempt, as every participant derives it from the job spec.</summary>
public static class SecureRoundSession
{
    public static SecAggSession For(JobSpec spec, int round, int attempt, int vectorLength)
    {
        var n = spec.Parties.Length;
        var sa = spec.SecureAggregation;
        return new SecAggSession
        {
            SessionId = RoundIds.Of(spec.JobId, round, attempt),
            Parties = spec.Parties.Select(p => p.Org).Order(StringComparer.Ordinal).ToArray(),
            Threshold = sa.ThresholdFor(n),
            Degree = sa.DegreeFor(n),
            GraphSeed = spec.Seed * 1_000_003 + round * 1_009L + attempt,
            VectorLength = vectorLength,
            ClipRange = sa.ClipRange,
            Extras = spec.Dp.Enabled && spec.Dp.AdaptiveClip ? 2 : 1,
        };
    }
}

/// <summary>Result of <see cref="SecureSum"/> to its parent round (local only, never sent over the wire).</summary>
public sealed record SecureSumReady(SecAggSession Session, SecAggResult Result, string Summary, IReadOnlyDictionary<string, string> Dropouts,
    IReadOnlyDictionary<string, long> UploadBytes, IReadOnlyDictionary<string, int> Retransmissions);

public sealed record SecureSumFailed(string Reason, IReadOnlyDictionary<string, string> Dropouts);

/// <summary>
/// Runs SecAgg+ steps 2–4 for one round among the parties that advertised keys (U1): relays sealed shares, pulls
/// masked inputs, collects unmasking shares, and unmasks off-thread. Each step waits for everyone still in or for the
/// phase timeout, whichever comes first; a party that misses a step is a dropout, recovered while the threshold holds.
/// </summary>
public sealed class SecureSum : ReceiveActor, IWithTimers
{
    public sealed record Settings(SecAggSession Session, string JobId, int Round, int Attempt, IReadOnlyDictionary<string, SecAggKeys> Keys,
        IActorRef PartyRegion, BlobStore Store, TransferSettings Transfer, TimeSpan ResendInterval, TimeSpan PhaseTimeout, double ClipNorm,
        bool WatchMembership);

    enum Step { Share, Mask, Unmask, Unmasking }

    readonly Settings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Dictionary<string, ShareBundle> _bundles = new();
    readonly Dictionary<string, BlobLocation> _fetching = new();
    readonly Dictionary<string, uint[]> _masked = new();
    readonly Dictionary<string, UnmaskShares> _revealed = new();
    readonly Dictionary<string, string> _dropouts = new();
    readonly Dictionary<string, (long Bytes, int Retransmissions)> _uploads = new();
    Dictionary<string, List<EncryptedShare>> _inbox = new();
    Step _step = Step.Share;

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Resend;
    sealed record PhaseTimeout(Step Step);

    public SecureSum(Settings settings)
    {
        _s = settings;
        Receive<SecAggSharesReady>(OnShares);
        Receive<SecAggMaskedReady>(OnMaskedReady);
        Receive<FetchCompleted>(OnFetched);
        Receive<FetchFailed>(f => { if (FetchingParty() is { } org && _fetching.Remove(org)) Drop(org, $"masked upload failed: {f.Reason}"); AdvanceIfComplete(); });
        Receive<SecAggUnmaskReady>(OnUnmaskReady);
        Receive<SecAggStepFailed>(f => { if (Current(f.Round, f.Attempt) && Waiting().Contains(f.Org)) { Drop(f.Org, $"{f.Step}: {f.Reason}"); AdvanceIfComplete(); } });
        Receive<Resend>(_ => Ask());
        Receive<PhaseTimeout>(t => { if (t.Step == _step) Advance(timedOut: true); });
        Receive<ClusterEvent.MemberRemoved>(e =>
        {
            // A party whose node left cannot answer this step: do not wait out the phase timeout for it.
            foreach (var org in Waiting().Where(o => PartyPlacement.LastNodeOf(Context.System, e.Member, o)).ToList())
            {
                if (_fetching.Remove(org)) Context.Child(FetcherPrefix + org).Tell(PoisonPill.Instance);
                Drop(org, $"its node left the cluster during step '{_step.ToString().ToLowerInvariant()}'");
            }
            AdvanceIfComplete();
        });
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<SecureSumReady>(r => { Context.Parent.Tell(r); Context.Stop(Self); });
        Receive<SecureSumFailed>(f => { Context.Parent.Tell(f); Context.Stop(Self); });
    }

    protected override void PreStart()
    {
        if (_s.Keys.Count < _s.Session.Threshold)
        {
            Fail($"only {_s.Keys.Count} parties advertised keys, secure-aggregation threshold {_s.Session.Threshold}");
            return;
        }
        Timers.StartPeriodicTimer("resend", new Resend(), _s.ResendInterval);
        if (_s.WatchMembership) Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberRemoved));
        EnterStep(Step.Share);
    }

    protected override void PostStop()
    {
        if (_s.WatchMembership) Cluster.Get(Context.System).Unsubscribe(Self);
        base.PostStop();
    }

    bool Current(int round, int attempt) => round == _s.Round && attempt == _s.Attempt;

    /// <summary>Parties whose answer the current step still waits for.</summary>
    HashSet<string> Waiting() => _step switch
    {
        Step.Share => _s.Keys.Keys.Where(p => !_bundles.ContainsKey(p) && !_dropouts.ContainsKey(p)).ToHashSet(),
        Step.Mask => _bundles.Keys.Where(p => !_masked.ContainsKey(p) && !_dropouts.ContainsKey(p)).ToHashSet(),
        Step.Unmask => _masked.Keys.Where(p => !_revealed.ContainsKey(p) && !_dropouts.ContainsKey(p)).ToHashSet(),
        _ => [],
    };

    void EnterStep(Step step)
    {
        _step = step;
        _log.Info("round {0}: secure aggregation step {1} with {2} parties", RoundIds.Of(_s.JobId, _s.Round, _s.Attempt), step, Waiting().Count);
        Context.System.EventStream.Publish(new SecureAggregationStepStarted(_s.JobId, _s.Round, _s.Attempt, step.ToString().ToLowerInvariant(), Waiting().Order().ToArray()));
        Timers.StartSingleTimer("phase", new PhaseTimeout(step), _s.PhaseTimeout);
        Ask();
    }

    void Ask()
    {
        foreach (var org in Waiting().Where(p => !_fetching.ContainsKey(p)))
        {
            object request = _step switch
            {
                Step.Share => new SecAggShareRequest(org, _s.JobId, _s.Round, _s.Attempt,
                    _s.Keys.Values.Where(k => k.Party != org).OrderBy(k => k.Party, StringComparer.Ordinal).ToArray()),
                Step.Mask => new SecAggMaskRequest(org, _s.JobId, _s.Round, _s.Attempt, _inbox.GetValueOrDefault(org)?.ToArray() ?? [], _s.ClipNorm),
                _ => new SecAggUnmaskRequest(org, _s.JobId, _s.Round, _s.Attempt, _masked.Keys.Order(StringComparer.Ordinal).ToArray()),
            };
            _s.PartyRegion.Tell(request);
        }
    }

    void OnShares(SecAggSharesReady r)
    {
        if (_step != Step.Share || !Current(r.Round, r.Attempt) || !Waiting().Contains(r.Org)) return;
        if (r.Bundle.Party != r.Org || r.Bundle.Shares.Any(s => s.From != r.Org))
            Drop(r.Org, "sent shares under another party's name");
        else _bundles[r.Org] = r.Bundle;
        AdvanceIfComplete();
    }

    void OnMaskedReady(SecAggMaskedReady r)
    {
        if (_step != Step.Mask || !Current(r.Round, r.Attempt) || !Waiting().Contains(r.Org) || _fetching.ContainsKey(r.Org)) return;
        if (r.Masked.Size != _s.Session.Words * 4L)
        {
            Drop(r.Org, $"masked input of {r.Masked.Size} bytes, expected {_s.Session.Words * 4L}");
            AdvanceIfComplete();
            return;
        }
        _fetching[r.Org] = r.Masked;
        Context.ActorOf(BlobFetcher.Props(_s.Store, r.Masked, _s.Transfer), FetcherPrefix + r.Org);
    }

    const string FetcherPrefix = "masked-";
    string? FetchingParty() => Sender.Path.Name.StartsWith(FetcherPrefix) ? Sender.Path.Name[FetcherPrefix.Length..] : null;

    void OnFetched(FetchCompleted f)
    {
        if (FetchingParty() is not { } org || !_fetching.Remove(org)) return;
        if (_step != Step.Mask) return; // arrived after the step closed: too late to count
        _masked[org] = FederatedComputation.MaskedWords(_s.Store.Read(f.Digest), _s.Session, org);
        _uploads[org] = (f.Chunks > 0 ? f.Bytes : 0, f.Retransmissions);
        AdvanceIfComplete();
    }

    void OnUnmaskReady(SecAggUnmaskReady r)
    {
        if (_step != Step.Unmask || !Current(r.Round, r.Attempt) || !Waiting().Contains(r.Org)) return;
        if (r.Shares.Party != r.Org) Drop(r.Org, "sent unmasking shares under another party's name");
        else _revealed[r.Org] = r.Shares;
        AdvanceIfComplete();
    }

    void Drop(string org, string reason)
    {
        _dropouts.TryAdd(org, reason);
        _log.Warning("round {0}: party {1} dropped out of secure aggregation: {2}", RoundIds.Of(_s.JobId, _s.Round, _s.Attempt), org, reason);
    }

    void AdvanceIfComplete()
    {
        if (Waiting().Count == 0 && _fetching.Count == 0) Advance(timedOut: false);
    }

    void Advance(bool timedOut)
    {
        if (timedOut)
        {
            var stepName = _step.ToString().ToLowerInvariant();
            foreach (var org in Waiting()) Drop(org, $"no answer to step '{stepName}' within {_s.PhaseTimeout.TotalSeconds:G4} s");
            foreach (var org in _fetching.Keys.ToList()) Drop(org, "masked upload not finished in time");
            _fetching.Clear();
        }
        switch (_step)
        {
            case Step.Share:
                if (_bundles.Count < _s.Session.Threshold) { Fail($"only {_bundles.Count} parties shared keys, threshold {_s.Session.Threshold}"); return; }
                try { _inbox = SecAggServer.Route(_bundles.Values); }
                catch (SecAggException e) { Fail(e.Message); return; }
                EnterStep(Step.Mask);
                break;
            case Step.Mask:
                if (_masked.Count < _s.Session.Threshold) { Fail($"only {_masked.Count} masked inputs arrived, threshold {_s.Session.Threshold}"); return; }
                EnterStep(Step.Unmask);
                break;
            case Step.Unmask:
                _step = Step.Unmasking;
                Timers.CancelAll();
                var (s, keys, bundles, masked, revealed) = (_s.Session, _s.Keys, _bundles.ToDictionary(), _masked.ToDictionary(), _revealed.Values.ToList());
                var dropouts = _dropouts.ToDictionary();
                var bytes = _uploads.ToDictionary(kv => kv.Key, kv => kv.Value.Bytes);
                var retransmissions = _uploads.ToDictionary(kv => kv.Key, kv => kv.Value.Retransmissions);
                var counts = $"{keys.Count} keyed, {bundles.Count} shared, {masked.Count} masked, {revealed.Count} revealed (t = {s.Threshold}, k = {Math.Min(s.Degree, s.Parties.Count - 1)})";
                Task.Run(() =>
                {
                    var result = SecAggServer.Unmask(s, keys, bundles, masked, revealed);
                    var summary = counts + (result.RecoveredDropouts.Count > 0 ? $"; masks of dropped {string.Join(", ", result.RecoveredDropouts)} removed" : "")
                        + (result.WrongShares.Count > 0 ? $"; {string.Join("; ", result.WrongShares)}" : "");
                    return (object)new SecureSumReady(s, result, summary, dropouts, bytes, retransmissions);
                }).PipeTo(Self, failure: e => new SecureSumFailed($"unmasking failed: {e.GetBaseException().Message}", dropouts));
                break;
        }
    }

    void Fail(string reason)
    {
        Timers.CancelAll();
        Context.Parent.Tell(new SecureSumFailed($"secure aggregation: {reason}", _dropouts.ToDictionary()));
        Context.Stop(Self);
    }

    public static Props Props(Settings settings) => Akka.Actor.Props.Create(() => new SecureSum(settings));
}

/// <summary>Published on the arbiter's event stream as each secure-aggregation step begins (observability, fault specs).</summary>
public sealed record SecureAggregationStepStarted(string JobId, int Round, int Attempt, string Step, string[] Parties);
