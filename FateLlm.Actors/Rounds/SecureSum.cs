using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Rounds;

/// <summary>Result of <see cref="SecureSum"/> to its parent round (local only, never sent over the wire).</summary>
public sealed record SecureSumReady(SecAggSession Session, SecAggResult Result, string Summary, IReadOnlyDictionary<string, string> Dropouts,
    IReadOnlyDictionary<string, long> UploadBytes, IReadOnlyDictionary<string, int> Retransmissions);

public sealed record SecureSumFailed(string Reason, IReadOnlyDictionary<string, string> Dropouts);

/// <summary>Published on the arbiter's event stream as each secure-aggregation step begins (observability, fault specs).</summary>
public sealed record SecureAggregationStepStarted(WorkId Work, SecAggStep Step, string[] Parties) : IControlMessage;

/// <summary>Published as a party drops out of secure aggregation at a step (recovered while the threshold holds).</summary>
public sealed record SecureAggregationDropout(WorkId Work, SecAggStep Step, string Org, string Reason) : IControlMessage;

/// <summary>Published as a party's answer to a secure-aggregation step is recorded (for a masked input: once it is pulled).</summary>
public sealed record SecureAggregationStepAnswered(WorkId Work, SecAggStep Step, string Org) : IControlMessage;

/// <summary>
/// Runs SecAgg+ steps 2–4 of one exchange among the parties that advertised keys (U1), as explicit phases: sharing
/// (relay sealed shares), masking (pull masked inputs), unmasking (collect unmasking shares), then the unmask itself
/// off the actor thread. Each step waits for everyone still in or for the phase timeout, whichever comes first; a party
/// that misses a step, or whose node leaves, is a dropout, recovered while the threshold holds.
/// </summary>
public sealed class SecureSum : ReceiveActor, IWithTimers
{
    public sealed record Settings(SecAggSession Session, WorkId Work, IReadOnlyDictionary<string, SecAggKeys> Keys, IActorRef PartyRegion,
        BlobStore Store, TransferSettings Transfer, TimeSpan ResendInterval, TimeSpan PhaseTimeout, double ClipNorm, IPartyPresence Presence);

    readonly Settings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Dictionary<string, ShareBundle> _bundles = new();
    readonly HashSet<string> _fetching = new();
    readonly Dictionary<string, uint[]> _masked = new();
    readonly Dictionary<string, UnmaskShares> _revealed = new();
    readonly Dictionary<string, string> _dropouts = new();
    readonly Dictionary<string, (long Bytes, int Retransmissions)> _uploads = new();
    Dictionary<string, List<EncryptedShare>> _inbox = new();
    SecAggStep _step = SecAggStep.Share;
    Func<string, object> _request = _ => throw new InvalidOperationException("no step");
    Func<IEnumerable<string>> _waiting = () => [];

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Resend;
    sealed record PhaseTimeout(SecAggStep Step);
    sealed record MaskedRead(string Org, uint[] Words, long Bytes, int Retransmissions);
    sealed record MaskedReadFailed(string Org, string Reason);

    public SecureSum(Settings settings) => _s = settings;

    protected override void PreStart()
    {
        if (_s.Keys.Count < _s.Session.Threshold)
        {
            Fail($"only {_s.Keys.Count} parties advertised keys, secure-aggregation threshold {_s.Session.Threshold}");
            return;
        }
        if (_s.Presence.Watcher(Self) is { } watcher) Context.ActorOf(watcher, "presence");
        Timers.StartPeriodicTimer("resend", new Resend(), _s.ResendInterval);
        Sharing();
    }

    /// <summary>What every step handles the same way: re-asking, its timeout, failures, and parties whose node left.</summary>
    void StepBehaviour(SecAggStep step, Func<IEnumerable<string>> waiting, Func<string, object> request, Action next)
    {
        _step = step;
        _waiting = waiting;
        _request = request;
        Receive<Resend>(_ => Ask());
        Receive<PhaseTimeout>(t => t.Step == step, _ =>
        {
            foreach (var org in Waiting()) Drop(org, $"no answer to step '{step.Name()}' within {_s.PhaseTimeout.TotalSeconds:G4} s");
            foreach (var org in _fetching.ToList()) Drop(org, "masked upload not finished in time");
            _fetching.Clear();
            next();
        });
        Receive<SecAggStepFailed>(f => f.Id == _s.Work && Waiting().Contains(f.Org), f => { Drop(f.Org, $"{f.Step.Name()}: {f.Reason}"); AdvanceIfComplete(next); });
        Receive<PartyNodeLeft>(l =>
        {
            if (!Waiting().Contains(l.Org)) return;
            _fetching.Remove(l.Org);
            Drop(l.Org, $"its node left the cluster during step '{step.Name()}'");
            AdvanceIfComplete(next);
        });
        ReceiveAny(_ => { }); // answers to a step that is over: too late to count
        _log.Info("exchange {0}: secure aggregation step {1} with {2} parties", _s.Work, step.Name(), Waiting().Count);
        Context.System.EventStream.Publish(new SecureAggregationStepStarted(_s.Work, step, Waiting().Order().ToArray()));
        Timers.StartSingleTimer("phase", new PhaseTimeout(step), _s.PhaseTimeout);
        Ask();
    }

    HashSet<string> Waiting() => _waiting().Where(p => !_dropouts.ContainsKey(p)).ToHashSet();

    void Ask()
    {
        foreach (var org in Waiting().Where(p => !_fetching.Contains(p))) _s.PartyRegion.Tell(_request(org));
    }

    void Sharing() => Become(() =>
    {
        Receive<SecAggSharesReady>(r => r.Id == _s.Work && Waiting().Contains(r.Org), r =>
        {
            if (r.Bundle.Party != r.Org || r.Bundle.Shares.Any(s => s.From != r.Org)) Drop(r.Org, "sent shares under another party's name");
            else Answered(r.Org, () => _bundles[r.Org] = r.Bundle);
            AdvanceIfComplete(AfterSharing);
        });
        StepBehaviour(SecAggStep.Share, () => _s.Keys.Keys.Where(p => !_bundles.ContainsKey(p)),
            org => new SecAggShareRequest(org, _s.Work, _s.Keys.Values.Where(k => k.Party != org).OrderBy(k => k.Party, StringComparer.Ordinal).ToArray()),
            AfterSharing);
    });

    void AfterSharing()
    {
        if (_bundles.Count < _s.Session.Threshold) { Fail($"only {_bundles.Count} parties shared keys, threshold {_s.Session.Threshold}"); return; }
        try { _inbox = SecAggServer.Route(_bundles.Values); }
        catch (SecAggException e) { Fail(e.Message); return; }
        Masking();
    }

    void Masking() => Become(() =>
    {
        Receive<SecAggMaskedReady>(r => r.Id == _s.Work && Waiting().Contains(r.Org) && !_fetching.Contains(r.Org), r =>
        {
            if (r.Masked.Size != _s.Session.MaskedBytes)
            {
                Drop(r.Org, $"masked input of {r.Masked.Size} bytes, expected {_s.Session.MaskedBytes}");
                AdvanceIfComplete(AfterMasking);
                return;
            }
            _fetching.Add(r.Org);
            Context.ActorOf(BlobFetcher.Props(_s.Store, r.Masked, _s.Transfer, correlation: r.Org));
        });
        Receive<FetchCompleted>(f => _fetching.Contains(f.Correlation), f =>
        {
            // Reading the masked words (4 bytes per value) happens off the actor thread; the party is still "fetching" meanwhile.
            var (store, session, org) = (_s.Store, _s.Session, f.Correlation);
            Task.Run(() => new MaskedRead(org, RoundStep.MaskedWords(store.Read(f.Digest), session, org), f.Chunks > 0 ? f.Bytes : 0, f.Retransmissions))
                .PipeTo(Self, failure: e => new MaskedReadFailed(org, e.GetBaseException().Message));
        });
        Receive<MaskedRead>(m => _fetching.Contains(m.Org), m =>
        {
            _fetching.Remove(m.Org);
            Answered(m.Org, () =>
            {
                _masked[m.Org] = m.Words;
                _uploads[m.Org] = (m.Bytes, m.Retransmissions);
            });
            AdvanceIfComplete(AfterMasking);
        });
        Receive<MaskedReadFailed>(f => _fetching.Contains(f.Org), f => { _fetching.Remove(f.Org); Drop(f.Org, f.Reason); AdvanceIfComplete(AfterMasking); });
        Receive<FetchFailed>(f => _fetching.Contains(f.Correlation), f => { _fetching.Remove(f.Correlation); Drop(f.Correlation, $"masked upload failed: {f.Reason}"); AdvanceIfComplete(AfterMasking); });
        StepBehaviour(SecAggStep.Mask, () => _bundles.Keys.Where(p => !_masked.ContainsKey(p)),
            org => new SecAggMaskRequest(org, _s.Work, _inbox.GetValueOrDefault(org)?.ToArray() ?? [], _s.ClipNorm), AfterMasking);
    });

    void AfterMasking()
    {
        if (_masked.Count < _s.Session.Threshold) { Fail($"only {_masked.Count} masked inputs arrived, threshold {_s.Session.Threshold}"); return; }
        Unmasking();
    }

    void Unmasking() => Become(() =>
    {
        Receive<SecAggUnmaskReady>(r => r.Id == _s.Work && Waiting().Contains(r.Org), r =>
        {
            if (r.Shares.Party != r.Org) Drop(r.Org, "sent unmasking shares under another party's name");
            else Answered(r.Org, () => _revealed[r.Org] = r.Shares);
            AdvanceIfComplete(Unmask);
        });
        var survivors = _masked.Keys.Order(StringComparer.Ordinal).ToArray();
        StepBehaviour(SecAggStep.Unmask, () => _masked.Keys.Where(p => !_revealed.ContainsKey(p)), org => new SecAggUnmaskRequest(org, _s.Work, survivors), Unmask);
    });

    /// <summary>The unmask itself, off the actor thread; the actor only waits for its result.</summary>
    void Unmask()
    {
        Timers.CancelAll();
        var (s, keys, bundles, masked, revealed) = (_s.Session, _s.Keys, _bundles.ToDictionary(), _masked.ToDictionary(), _revealed.Values.ToList());
        var dropouts = _dropouts.ToDictionary();
        var bytes = _uploads.ToDictionary(kv => kv.Key, kv => kv.Value.Bytes);
        var retransmissions = _uploads.ToDictionary(kv => kv.Key, kv => kv.Value.Retransmissions);
        var counts = $"{keys.Count} keyed, {bundles.Count} shared, {masked.Count} masked, {revealed.Count} revealed (t = {s.Threshold}, k = {Math.Min(s.Degree, s.Parties.Count - 1)})";
        Become(() =>
        {
            Receive<SecureSumReady>(r => { Context.Parent.Tell(r); Context.Stop(Self); });
            Receive<SecureSumFailed>(f => { Context.Parent.Tell(f); Context.Stop(Self); });
            ReceiveAny(_ => { });
        });
        Task.Run(() =>
        {
            var result = SecAggServer.Unmask(s, keys, bundles, masked, revealed);
            var summary = counts + (result.RecoveredDropouts.Count > 0 ? $"; masks of dropped {string.Join(", ", result.RecoveredDropouts)} removed" : "")
                + (result.WrongShares.Count > 0 ? $"; {string.Join("; ", result.WrongShares)}" : "");
            return (object)new SecureSumReady(s, result, summary, dropouts, bytes, retransmissions);
        }).PipeTo(Self, failure: e => new SecureSumFailed($"unmasking failed: {e.GetBaseException().Message}", dropouts));
    }

    void Answered(string org, Action record)
    {
        record();
        Context.System.EventStream.Publish(new SecureAggregationStepAnswered(_s.Work, _step, org));
    }

    void Drop(string org, string reason)
    {
        if (_dropouts.TryAdd(org, reason)) Context.System.EventStream.Publish(new SecureAggregationDropout(_s.Work, _step, org, reason));
        _log.Warning("exchange {0}: party {1} dropped out of secure aggregation: {2}", _s.Work, org, reason);
    }

    void AdvanceIfComplete(Action next)
    {
        if (Waiting().Count == 0 && _fetching.Count == 0)
        {
            Timers.Cancel("phase");
            next();
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
