using Akka.Actor;
using FateLlm.Actors.Faults;
using Akka.Event;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Compression;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Parties;

/// <summary>The party entity asks a work child to stop (superseded by later work of the same job, or cancelled).</summary>
internal sealed record StopWork(string Reason);

/// <summary>Later work of the same job arrived: work that has no answer yet stops, an answered one stays for re-asks.</summary>
internal sealed record Superseded(WorkId By);

/// <summary>
/// One party's work in one exchange (a child of <see cref="PartyActor"/>, one per <see cref="WorkId"/>). Phases:
/// fetching (the job's spec and the exchange's downloads, digest-checked, cached in the store), fitting (the
/// algorithm's party side on the trainer), offered (the update waits to be pulled, or — under secure aggregation — the
/// secure-aggregation steps are answered, each once), failed. Re-sent requests get the current phase's answer.
/// </summary>
internal sealed class FitWork : ReceiveActor
{
    readonly PartyNodeSettings _s;
    readonly IActorRef _trainer;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly WorkRequest _request;
    readonly CancellationTokenSource _cancel = new();
    WorkFiles _files = null!;
    IActorRef _replyTo;
    JobSpec? _spec;
    ClientContext? _context;
    object? _answer;
    // Secure aggregation: the update stays here, only masked words leave. Lost with the node, correctly: a party that
    // restarts mid-exchange has lost its secrets and is a dropout of that exchange.
    SecAggClient? _secAgg;
    byte[]? _update;
    long _samples;
    readonly Dictionary<SecAggStep, object> _stepAnswers = new();
    readonly List<IActorRef> _maskWaiters = new();

    sealed record Masked(string Digest, long Size);
    sealed record MaskFailed(string Reason);
    /// <summary>The update stored for pulling as it leaves (plain, compressed if the job says so), or the secure-aggregation session's vector length (secure).</summary>
    sealed record OfferPrepared(FitDone Fit, string? Digest, long Size, int VectorLength);
    sealed record OfferFailed(string Reason);
    /// <summary>A step of the local round, told from the trainer's thread.</summary>
    sealed record LocalStep(Training.Trainer.TrainProgress Progress);

    /// <summary>
    /// Forwards the trainer thread's step reports to this actor (Tell is safe from any thread). With a slowdown (fault
    /// injection, <c>fate-llm.party.slowdown</c>) the trainer thread then pauses (factor − 1) times the step's own time:
    /// the party trains as if on hardware that many times slower.
    /// </summary>
    sealed class StepReports(IActorRef work, double slowdown) : IProgress<Training.Trainer.TrainProgress>
    {
        TimeSpan _trained, _paused;

        public void Report(Training.Trainer.TrainProgress value)
        {
            work.Tell(new LocalStep(value));
            if (slowdown <= 1) return;
            var trained = value.Elapsed - _paused; // training time so far, earlier pauses left out
            var pause = (trained - _trained) * (slowdown - 1);
            _trained = trained;
            if (pause <= TimeSpan.Zero) return;
            Thread.Sleep(pause);
            _paused += pause;
        }
    }

    WorkProgress _progress = new("fetching", 0, 0, 0);

    WorkId Id => _request.Id;
    string Org => _s.Org;

    public FitWork(WorkRequest request, IActorRef replyTo, PartyNodeSettings settings, IActorRef trainer)
    {
        _request = request;
        _replyTo = replyTo;
        _s = settings;
        _trainer = trainer;
        Fetching();
    }

    protected override void PreStart()
    {
        _replyTo.Tell(new WorkAccepted(Org, Id));
        _files = new WorkFiles(Context, _s, _request.Spec, _request.Downloads, _request.Parameters);
    }

    protected override void PostStop()
    {
        _cancel.Cancel();
        _secAgg?.Dispose();
    }

    void Common()
    {
        // Step reports come from the trainer's thread and may trail the answer.
        Receive<LocalStep>(s => _progress = new WorkProgress("training", s.Progress.Step, s.Progress.TotalSteps, s.Progress.TokensPerSecond));
        // Until the spec is read the work is downloading; a report trailing the last fetch changes nothing after that.
        Receive<FetchProgress>(p => { if (_spec is null) _progress = _files.Progressed(p); });
        Receive<StopWork>(w =>
        {
            _log.Info("party {0}: {1} stopped ({2})", Org, Id, w.Reason);
            Context.Stop(Self);
        });
    }

    void Unanswered()
    {
        Common();
        Receive<Superseded>(w =>
        {
            _log.Info("party {0}: {1} superseded by {2}", Org, Id, w.By);
            Context.Stop(Self);
        });
        Receive<WorkRequest>(r => { _replyTo = Sender; Sender.Tell(new WorkAccepted(Org, Id) { Progress = _progress }); });
        Receive<ISecAggRequest>(r => Sender.Tell(new SecAggStepFailed(Org, Id, r.Step, "this party has not offered its update yet")));
    }

    void Answered()
    {
        Common();
        Receive<Superseded>(_ => { });
        Receive<WorkRequest>(r => { _replyTo = Sender; Sender.Tell(_answer); });
    }

    void Fetching()
    {
        Unanswered();
        Receive<FetchCompleted>(f => { if (_files.Arrived(f, _s)) StartFit(); });
        Receive<RefetchInFull>(r => _files.Refetch(r));
        Receive<FetchFailed>(f => Fail($"download of '{f.Correlation}' failed: {f.Reason}"));
    }

    void StartFit()
    {
        JobSpec spec;
        try { spec = _files.Spec(Id.JobId); }
        catch (JobSpecException e) { Fail(e.Message); return; }
        _spec = spec;
        var party = spec.Parties.FirstOrDefault(p => p.Org == Org);
        var problem = party is null ? $"party '{Org}' is not in job {Id.JobId}"
            : !_s.Datasets.ContainsKey(party.Dataset) ? $"party '{Org}' has no dataset '{party.Dataset}' (known: {string.Join(", ", _s.Datasets.Keys)})"
            : party.EvalDataset != null && !_s.Datasets.ContainsKey(party.EvalDataset) ? $"party '{Org}' has no dataset '{party.EvalDataset}' (known: {string.Join(", ", _s.Datasets.Keys)})"
            : null;
        if (problem is not null)
        {
            Fail(problem);
            return;
        }
        if (_s.Faults.Trip(FaultPoints.PartyFit, Context, Org, Id.Round, Id.Phase, Id.JobId)) return;
        var instruction = new PartyInstruction(_request.Downloads.ToDictionary(kv => kv.Key, kv => kv.Value.Digest), _request.Parameters);
        Become(Fitting);
        _progress = new WorkProgress("loading", 0, 0, 0); // until the first step: verifying, loading the base, the dev pass
        _context = _s.ContextFor(spec, party!, Id.Round, Id.Attempt, Id.Phase) with { Progress = new StepReports(Self, _s.Slowdown) };
        _trainer.Tell(new RunFit(Id, _context, _request.Exchange, instruction, _files.Downloads, _cancel.Token));
    }

    void Fitting()
    {
        Unanswered();
        Receive<FitDone>(d => d.Id == Id, Prepare);
        Receive<FitFailed>(f => f.Id == Id, f => Fail(f.Reason));
    }

    bool Secure => _spec!.SecureAggregation.Enabled && _request.VectorLayout is not null;

    /// <summary>Storing the update (hashing, writing) or reading its vector layout happens off the actor thread.</summary>
    void Prepare(FitDone d)
    {
        var u = d.Update;
        _log.Info("party {0}: {1} fitted {2} samples in {3:F1} s{4}", Org, Id, u.Samples, d.Seconds,
            u.Metrics.TryGetValue(ClientUpdate.FirstLoss, out var first) && u.Metrics.TryGetValue(ClientUpdate.LastLoss, out var last) ? $", loss {first:F4} → {last:F4}" : "");
        var (store, layout, spec, context) = (_s.Store, _request.VectorLayout is { } v ? _files.PathOf(v) : null, _spec!, _context!);
        Become(() =>
        {
            Unanswered();
            Receive<OfferPrepared>(Offer);
            Receive<OfferFailed>(f => Fail(f.Reason));
        });
        var (secure, exchange, round) = (Secure, _request.Exchange, Id.Round);
        Task.Run(() =>
            {
                if (secure) return new OfferPrepared(d, null, 0, RoundStep.VectorLength(File.ReadAllBytes(layout!)));
                var payload = UpdateCompression.ForUpload(spec.Compression, layout, u.Update, context.Workspace, exchange, round);
                return new OfferPrepared(d, store.Put(payload), payload.Length, 0);
            })
            .PipeTo(Self, failure: e => new OfferFailed($"could not offer the update: {e.GetBaseException().Message}"));
    }

    void Offer(OfferPrepared p)
    {
        if (_s.Faults.Trip(FaultPoints.PartyOffer, Context, Org, Id.Round, Id.Phase, Id.JobId)) return;
        var d = p.Fit;
        var u = d.Update with { Metrics = new Dictionary<string, double>(d.Update.Metrics) { [ClientUpdate.SecondsPrefix + "download"] = _files.DownloadSeconds } };
        if (p.Digest is null)
        {
            var session = RoundStep.Session(_spec!, Id.ToString(), _request.Cohort, Id.Round, Id.Attempt, Id.Phase, p.VectorLength);
            _secAgg = new SecAggClient(session, Org);
            _update = u.Update;
            _samples = u.Samples;
            _answer = new UpdateReady(Org, Id, null, u.Samples, u.Metrics, d.Seconds, _files.DownloadBytes) { Keys = _secAgg.Advertise() };
            Become(OfferedSecurely);
        }
        else
        {
            _answer = new UpdateReady(Org, Id, new BlobLocation(p.Digest, p.Size, _s.BlobServer), u.Samples, u.Metrics, d.Seconds, _files.DownloadBytes);
            Become(Offered);
        }
        _replyTo.Tell(_answer);
    }

    void Offered()
    {
        Answered();
        Receive<ISecAggRequest>(r => Sender.Tell(new SecAggStepFailed(Org, Id, r.Step, "this exchange is not summed securely here")));
    }

    void OfferedSecurely()
    {
        Answered();
        Receive<SecAggShareRequest>(r => Step(r, () => new SecAggSharesReady(Org, Id, _secAgg!.ShareKeys(r.Advertised))));
        Receive<SecAggMaskRequest>(r =>
        {
            if (_stepAnswers.TryGetValue(r.Step, out var done)) { Sender.Tell(done); return; }
            _maskWaiters.Add(Sender);
            if (_maskWaiters.Count > 1) return; // masking already under way: answer everyone when it ends
            if (_s.Faults.Trip(FaultPoints.PartyMask, Context, Org, Id.Round, Id.Phase, Id.JobId)) return;
            var (client, update, layout, samples, spec, store) = (_secAgg!, _update!, _files.PathOf(_request.VectorLayout!), _samples, _spec!, _s.Store);
            var expected = _request.Cohort.Length;
            // Masking touches every value of the update: off the actor thread.
            Task.Run(() =>
            {
                var words = RoundStep.MaskedInput(client, update, File.ReadAllBytes(layout), samples, spec, r.ClipNorm, expected, r.Inbox);
                return (object)new Masked(store.Put(words), words.Length);
            }).PipeTo(Self, failure: e => new MaskFailed(e.GetBaseException().Message));
        });
        Receive<Masked>(m => AnswerMask(new SecAggMaskedReady(Org, Id, new BlobLocation(m.Digest, m.Size, _s.BlobServer))));
        Receive<MaskFailed>(f => AnswerMask(new SecAggStepFailed(Org, Id, SecAggStep.Mask, f.Reason)));
        Receive<SecAggUnmaskRequest>(r => Step(r, () => new SecAggUnmaskReady(Org, Id, _secAgg!.Unmask(r.Survivors))));
    }

    void AnswerMask(object answer)
    {
        _stepAnswers[SecAggStep.Mask] = answer;
        foreach (var w in _maskWaiters) w.Tell(answer);
        _maskWaiters.Clear();
    }

    /// <summary>Runs one secure-aggregation step once; repeats get the first answer, a protocol violation a clear refusal.</summary>
    void Step(ISecAggRequest r, Func<object> run)
    {
        if (!_stepAnswers.TryGetValue(r.Step, out var answer))
        {
            if (_s.Faults.Trip(FaultPoints.OfSecAggStep(r.Step), Context, Org, Id.Round, Id.Phase, Id.JobId)) return;
            try { answer = run(); }
            catch (SecAggException e)
            {
                _log.Warning("party {0}: secure aggregation step {1} of {2} refused: {3}", Org, r.Step.Name(), Id, e.Message);
                answer = new SecAggStepFailed(Org, Id, r.Step, e.Message);
            }
            _stepAnswers[r.Step] = answer;
        }
        Sender.Tell(answer);
    }

    void Fail(string reason)
    {
        _log.Warning("party {0}: {1} failed: {2}", Org, Id, reason);
        _answer = new UpdateFailed(Org, Id, reason);
        _replyTo.Tell(_answer);
        Become(Failed);
    }

    void Failed()
    {
        Answered();
        Receive<ISecAggRequest>(r => Sender.Tell(new SecAggStepFailed(Org, Id, r.Step, ((UpdateFailed)_answer!).Reason)));
        Receive<FetchCompleted>(_ => { });
        Receive<FetchFailed>(_ => { });
        Receive<RefetchInFull>(_ => { });
        Receive<FitDone>(_ => { });
        Receive<FitFailed>(_ => { });
    }

    public static Props Props(WorkRequest request, IActorRef replyTo, PartyNodeSettings settings, IActorRef trainer) =>
        Akka.Actor.Props.Create(() => new FitWork(request, replyTo, settings, trainer));
}
