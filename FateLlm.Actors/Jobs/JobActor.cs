using Akka.Actor;
using Akka.Event;
using Akka.Persistence;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Jobs;

public sealed record JobSettings(BlobStore Store, IActorRef BlobServer, IActorRef RoundRegion, IActorRef PartyRegion, string? ModelsRoot)
{
    public IPartyPresence Presence { get; init; } = AlwaysPresent.Instance;
    /// <summary>Added to a round's own time budget before the watchdog counts the attempt lost (pulling, aggregating).</summary>
    public TimeSpan WatchdogSlack { get; init; } = TimeSpan.FromSeconds(60);
    public FaultInjection Faults { get; init; } = FaultInjection.None;
    /// <summary>The plug-ins this node runs.</summary>
    public AlgorithmCatalog Algorithms { get; init; } = AlgorithmCatalog.BuiltIn;
    /// <summary>A finished job idle this long passivates (its status is recovered from the journal when asked again).</summary>
    public TimeSpan PassivateAfter { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>How long an attempt whose quorum needs organizations with no node waits for them before the job fails.</summary>
    public TimeSpan WaitForParties { get; init; } = TimeSpan.FromMinutes(2);
    public TimeSpan PresencePoll { get; init; } = TimeSpan.FromSeconds(1);
    public bool Sharded { get; init; }
    /// <summary>How blobs this arbiter lacks are pulled from the cluster (a job taken over, a round run elsewhere).</summary>
    public TransferSettings Transfer { get; init; } = TransferSettings.Default;
    /// <summary>StartRound is sent again this often until the round answers (null: once; the watchdog covers a loss).</summary>
    public TimeSpan? StartResend { get; init; }
    /// <summary>How long the arbiter running an attempt's round may stay unreachable before the job starts the attempt again.</summary>
    public TimeSpan RoundHostGrace { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>How a buffered schedule's dispatches ask and pull (the round region's settings); null: built from these.</summary>
    public RoundSettings? Collection { get; init; }
    /// <summary>Under a buffered schedule, a party whose work failed is asked again after this long.</summary>
    public TimeSpan BufferRetry { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// One federated job of any algorithm, event-sourced and remembered by sharding, as explicit phases: fresh, preparing
/// (the algorithm's initial state, off the actor thread), running a round, evaluating, exporting, finished. After an
/// arbiter restart it resumes at the round after the last completed one — at the exchange after the last completed
/// one, for multi-phase rounds: completed rounds are never recomputed; an attempt in flight is simply retried.
/// What it writes to disk goes through its <see cref="JobOutputs"/> child and what other arbiters must hold through its
/// <see cref="StateReplication"/> child; the privacy spent is a <see cref="PrivacyLedger"/> folded with its events.
/// </summary>
public sealed class JobActor : ReceivePersistentActor, IWithTimers
{
    readonly JobSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly string _jobId;
    readonly IActorRef _outputs, _replication;
    JobSpec? _spec;
    string _specDigest = "", _submission = "";
    AlgorithmState? _state;
    JobState _status = JobState.Unknown;
    string? _reason, _outputDir, _stoppedEarly, _evaluationProblem;
    int _round, _attempt;
    string[] _participants = [];
    RoundResume? _resume;
    readonly List<RoundSummary> _rounds = new();
    PrivacyLedger _privacy = PrivacyLedger.Empty;
    PartyEvaluation[] _evaluation = [];
    readonly List<IActorRef> _submitters = new();
    readonly HashSet<string> _awaitingEvaluation = new();
    readonly List<PartyEvaluation> _evaluations = new();
    readonly Dictionary<string, string> _evaluationMissing = new();
    IReadOnlyDictionary<string, string> _evaluationLeftOut = new Dictionary<string, string>();
    readonly List<IJobEvent> _history = new();
    string[] _waitingFor = [];
    RoundInFlight? _current;
    /// <summary>The stage in flight and when it began, for the stage-duration metric.</summary>
    (RoundStage Stage, DateTime Since)? _stage;
    AttemptFailure? _lastFailure;
    /// <summary>What the board last saw of this job (only changes are published).</summary>
    object? _published;
    /// <summary>The actor running the attempt in flight, watched from its first answer: if it stops or its arbiter is
    /// lost, the attempt is started again at once instead of when the watchdog's budget runs out.</summary>
    IActorRef? _roundActor;
    /// <summary>A buffered schedule's versions, work in flight and buffered updates, folded from the journal.</summary>
    BufferLedger _buffer = BufferLedger.Empty;
    /// <summary>The buffered schedule running (a child), and where each party's work stands.</summary>
    IActorRef? _bufferActor;
    readonly Dictionary<string, string> _bufferProgress = new();

    public override string PersistenceId => "job-" + _jobId;
    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Prepared(JobSpec Spec, AlgorithmState Initial, string SpecDigest);
    sealed record PreparationFailed(string Reason);
    sealed record RoundWatchdog(int Round, int Attempt, RoundStage Stage, TimeSpan Budget);
    sealed record EvaluationPlanned(PartyInstruction? Instruction);
    sealed record EvaluationPlanFailed(string Reason);
    sealed record PresenceCheck;
    sealed record WaitedTooLong;
    sealed record EvaluationTimeout;
    sealed record ResendStart(StartRound Start);
    sealed record RoundHostLost(int Round, int Attempt, Address Host);

    public JobActor(string jobId, JobSettings settings)
    {
        _jobId = jobId;
        _s = settings;
        _outputs = Context.ActorOf(JobOutputs.Props(jobId), "outputs");
        _replication = Context.ActorOf(StateReplication.Props(settings.Store, settings.BlobServer), "replication");
        Recover<IJobEvent>(Apply);
        Recover<RecoveryCompleted>(_ => Resume());
        Fresh();
    }

    static bool InCluster(IActorContext context) => ((ExtendedActorSystem)context.System).Provider is Akka.Cluster.ClusterActorRefProvider;

    protected override void PreStart()
    {
        base.PreStart();
        if (InCluster(Context))
            Akka.Cluster.Cluster.Get(Context.System).Subscribe(Self, Akka.Cluster.ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
                typeof(Akka.Cluster.ClusterEvent.IReachabilityEvent));
    }

    protected override void PostStop()
    {
        if (InCluster(Context)) Akka.Cluster.Cluster.Get(Context.System).Unsubscribe(Self);
        base.PostStop();
    }

    /// <summary>A change a command or a persisted event made is published for the live board (never during recovery).</summary>
    protected override bool AroundReceive(Receive receive, object message)
    {
        var handled = base.AroundReceive(receive, message);
        if (IsRecovering || _status == JobState.Unknown) return handled;
        object seen = (_history.Count, _status, _current, _waitingFor, _stoppedEarly, string.Join(";", _bufferProgress.Values));
        if (!seen.Equals(_published))
        {
            _published = seen;
            Context.System.EventStream.Publish(new Board.JobObserved(Status()));
        }
        return handled;
    }

    // ---- phases ----

    /// <summary>Every phase answers status queries; a submit for an existing job is refused unless it repeats the submission that made it.</summary>
    void Always()
    {
        Command<GetJobStatus>(_ => Sender.Tell(Status()));
        Command<SubmitJob>(s => Sender.Tell(s.Submission.Length > 0 && s.Submission == _submission ? Accepted()
            : new JobRejected(_jobId, $"job '{_jobId}' already exists ({_status})")));
    }

    JobAccepted Accepted() => new(_jobId) { WaitingFor = _waitingFor, WaitUpTo = _waitingFor.Length > 0 ? _s.WaitForParties : TimeSpan.Zero };

    /// <summary>Round messages of an attempt this phase no longer waits for (late, duplicated, from before a restart).</summary>
    void IgnoreStaleRounds()
    {
        Command<RoundFinished>(r => _log.Debug("job {0}: ignoring stale result of round {1} attempt {2}", _jobId, r.Round, r.Attempt));
        Command<RoundProgress>(_ => { });
        Command<RoundPhaseDone>(_ => { });
        Command<RoundWatchdog>(_ => { });
        Command<EvaluateReply>(_ => { });
        Command<EvaluationTimeout>(_ => { });
        Command<PartyNodeLeft>(_ => { });
        Command<ResendStart>(_ => { });
        Command<RoundHostLost>(_ => { });
        Command<Terminated>(_ => { });
        Command<Akka.Cluster.ClusterEvent.IReachabilityEvent>(_ => { });
    }

    /// <summary>No job by this id: a query is answered and the entity passivates, so asking for unknown ids leaves nothing behind.</summary>
    void Fresh()
    {
        Command<SubmitJob>(OnSubmit);
        Command<GetJobStatus>(_ => { Sender.Tell(Status()); PassivateUnknown(); });
        Command<CancelJob>(_ => { Sender.Tell(Status()); PassivateUnknown(); });
    }

    void PassivateUnknown()
    {
        if (_status == JobState.Unknown && _history.Count == 0) Entity.Passivate(Context, _s.Sharded);
    }

    void Preparing()
    {
        Command<SubmitJob>(s =>
        {
            if (s.Submission == _submission) _submitters.Add(Sender);
            else Sender.Tell(new JobRejected(_jobId, $"job '{_jobId}' is being submitted by another request"));
        });
        Command<GetJobStatus>(_ => Sender.Tell(Status()));
        Command<CancelJob>(_ => Sender.Tell(Status()));
        Command<Prepared>(p => Persist(new JobSubmitted(p.Spec, p.Initial, p.SpecDigest, DateTime.UtcNow) { Submission = _submission }, e =>
        {
            Apply(e);
            var buffered = _spec!.Schedule.Buffered;
            _waitingFor = buffered ? [] : Absent(_s.Algorithms.For(_spec!).Server.SelectParticipants(_spec!, 1, 1), _spec!.Round.Quorum);
            foreach (var s in _submitters) s.Tell(Accepted());
            _submitters.Clear();
            _s.Faults.Trip(FaultPoints.JobPrepared, Context, job: _jobId);
            if (buffered) StartBuffer();
            else StartAttempt(1, 1, resume: null);
        }));
        Command<PreparationFailed>(f =>
        {
            _status = JobState.Unknown;
            foreach (var s in _submitters) s.Tell(new JobRejected(_jobId, f.Reason));
            _submitters.Clear();
            Become(Fresh);
            PassivateUnknown();
        });
    }

    void Running()
    {
        Always();
        Command<CancelJob>(Cancel);
        Command<ResendStart>(r => r.Start.Round == _round && r.Start.Attempt == _attempt, r => _s.RoundRegion.Tell(r.Start));
        Command<Terminated>(t => t.ActorRef.Equals(_roundActor), t => OnRoundFinished(new RoundFinished(_jobId, _round, _attempt, false,
            $"the round's actor on {Host(t.ActorRef)} stopped before it reported back (its arbiter left the cluster or the round moved); the attempt is started again", null, null)));
        Command<Akka.Cluster.ClusterEvent.UnreachableMember>(u => _roundActor is not null && u.Member.Address == _roundActor.Path.Address, u =>
            Timers.StartSingleTimer("round-host", new RoundHostLost(_round, _attempt, u.Member.Address), _s.RoundHostGrace));
        Command<Akka.Cluster.ClusterEvent.ReachableMember>(r => _roundActor is not null && r.Member.Address == _roundActor.Path.Address, _ =>
            Timers.Cancel("round-host"));
        Command<RoundHostLost>(l => l.Round == _round && l.Attempt == _attempt, l => OnRoundFinished(new RoundFinished(_jobId, _round, _attempt, false,
            $"the arbiter running the round ({l.Host}) has been unreachable for {_s.RoundHostGrace.TotalSeconds:G4} s; the attempt is started again", null, null)));
        Command<RoundProgress>(p => p.Round == _round && p.Attempt == _attempt, p =>
        {
            Answered();
            Watch(p.Stage, p.Budget);
            EndStage();
            _stage = (p.Stage, DateTime.UtcNow);
            _current = new RoundInFlight(p.Round, p.Attempt, p.Phase, p.Stage, p.Stage == RoundStage.Collect ? p.Asked : _current?.Asked ?? [],
                p.Stage == RoundStage.Collect ? new Dictionary<string, string>() : _current?.Answers ?? new Dictionary<string, string>());
        });
        Command<RoundPartyProgress>(p => p.Round == _round && p.Attempt == _attempt && _current is not null && p.Phase == _current.Exchange, p =>
            _current = _current! with { Progress = new Dictionary<string, string>(_current.Progress) { [p.Org] = p.Progress.ToString() } });
        Command<RoundPartyAnswered>(a => a.Round == _round && a.Attempt == _attempt && _current is not null, a =>
            _current = _current! with { Answers = new Dictionary<string, string>(_current.Answers) { [a.Org] = a.Succeeded ? "ok" : a.Reason ?? "failed" } });
        Command<RoundPhaseDone>(p => p.Round == _round && p.Attempt == _attempt, p =>
        {
            Answered();
            Persist(new RoundPhaseCompleted(p.Round, p.Attempt, p.Phase, p.State, p.Next, DateTime.UtcNow), Apply);
        });
        Command<RoundFinished>(r => r.Round == _round && r.Attempt == _attempt, OnRoundFinished);
        Command<RoundWatchdog>(w => w.Round == _round && w.Attempt == _attempt, w => OnRoundFinished(new RoundFinished(_jobId, w.Round, w.Attempt, false,
            $"the round did not report back within its budget for stage '{w.Stage.Name()}' ({w.Budget.TotalSeconds:G4} s); the arbiter lost it", null, null)));
        IgnoreStaleRounds();
    }

    /// <summary>The round of the attempt in flight answered: no more resends, and its actor is watched from now on.</summary>
    void Answered()
    {
        Timers.Cancel("start");
        if (Sender.Equals(_roundActor) || Sender.IsNobody()) return;
        if (_roundActor is not null) Context.Unwatch(_roundActor);
        _roundActor = Sender;
        Context.Watch(_roundActor);
    }

    void Forget()
    {
        Timers.Cancel("start");
        Timers.Cancel("round-host");
        if (_roundActor is not null) Context.Unwatch(_roundActor);
        _roundActor = null;
    }

    static string Host(IActorRef actor) => actor.Path.Address.HasGlobalScope ? actor.Path.Address.ToString() : "this arbiter";

    void Evaluating()
    {
        Always();
        Command<CancelJob>(Cancel);
        Command<EvaluationPlanned>(OnEvaluationPlanned);
        Command<EvaluationPlanFailed>(f =>
        {
            _log.Warning("job {0}: the final evaluation could not be planned: {1}", _jobId, f.Reason);
            RecordEvaluation(problem: $"the final evaluation could not be planned: {f.Reason}");
        });
        Command<EvaluateReply>(OnEvaluateReply);
        Command<EvaluationTimeout>(_ => RecordEvaluation());
        Command<PartyNodeLeft>(l =>
        {
            // A party whose node is gone will not answer: stop waiting for it rather than for the deadline.
            if (!_awaitingEvaluation.Remove(l.Org)) return;
            _log.Warning("job {0}: party {1}'s node left the cluster during the final evaluation; it is left out", _jobId, l.Org);
            _evaluationMissing[l.Org] = "its node left the cluster during the evaluation";
            if (_awaitingEvaluation.Count == 0) RecordEvaluation();
        });
        IgnoreStaleRounds();
    }

    void Exporting()
    {
        Always();
        Command<CancelJob>(_ => Sender.Tell(Status())); // the outputs are being written: too late to cancel
        Command<JobOutputs.Exported>(e => Persist(new JobCompleted(e.OutputDir, DateTime.UtcNow), ev => { Apply(ev); Finished(); }));
        Command<JobOutputs.ExportFailed>(f => Persist(new JobFailed($"export failed: {f.Reason}", DateTime.UtcNow), ev => { Apply(ev); Finished(); }));
        IgnoreStaleRounds();
    }

    /// <summary>
    /// The job is over. A job that ended now writes its record (status.json, events.jsonl) before it answers anyone again,
    /// so whoever sees it finished finds its files; a recovered one writes it only if it is missing.
    /// </summary>
    void Finished(bool recovered = false)
    {
        Timers.CancelAll();
        SetReceiveTimeout(_s.PassivateAfter);
        if (_spec is null || recovered && File.Exists(Path.Combine(_spec.OutputDir, JobOutputs.StatusFile)))
        {
            Become(Over);
            return;
        }
        _outputs.Tell(new JobOutputs.WriteRecord(_spec.OutputDir, Status(), _history.ToArray()));
        Become(() =>
        {
            Command<JobOutputs.RecordWritten>(_ =>
            {
                Become(Over);
                Stash.UnstashAll();
            });
            CommandAny(_ => Stash.Stash());
        });
    }

    void Over()
    {
        Always();
        Command<ReceiveTimeout>(_ => Entity.Passivate(Context, _s.Sharded));
        Command<CancelJob>(_ => Sender.Tell(Status()));
        IgnoreStaleRounds();
        Command<EvaluationPlanned>(_ => { });
        Command<EvaluationPlanFailed>(_ => { });
        Command<JobOutputs.Exported>(_ => { });
        Command<JobOutputs.ExportFailed>(_ => { });
        Command<JobOutputs.RecordWritten>(_ => { });
    }

    // ---- events ----

    void Apply(IJobEvent e)
    {
        _history.Add(e);
        _buffer = _buffer.Apply(e);
        switch (e)
        {
            case JobSubmitted s:
                // A journal older than a plug-in setting: its default is filled in, and the spec blob parties fetch is rebuilt.
                _spec = JobFile.WithAlgorithmDefaults(s.Spec);
                _state = s.Initial;
                _specDigest = ReferenceEquals(_spec, s.Spec) ? s.SpecDigest : "";
                _submission = s.Submission;
                _status = JobState.Running;
                break;
            case RoundStarted r:
                (_round, _attempt) = (r.Round, r.Attempt);
                // v1 journals recorded no participants: every party took part.
                _participants = r.Participants.Length > 0 ? r.Participants : _spec!.Parties.Select(p => p.Org).Order(StringComparer.Ordinal).ToArray();
                break;
            case RoundPhaseCompleted p:
                _resume = new RoundResume(p.Phase + 1, p.Next, p.State);
                break;
            case RoundCompleted c:
                _rounds.Add(c.Summary);
                if (c.Summary.Privacy is { } privacy) _privacy = _privacy.Compose(privacy.SamplingRate, privacy.NoiseMultiplier);
                _state = c.State;
                _resume = null;
                break;
            case RoundAttemptFailed f:
                _reason = f.Reason;
                _lastFailure = new AttemptFailure(f.Round, f.Attempt, f.Reason);
                _resume = null;
                break;
            case FinalEvaluationRecorded f:
                _evaluation = f.Results;
                _evaluationProblem = f.Problem;
                _evaluationLeftOut = f.Missing;
                break;
            case JobCompleted c:
                _status = JobState.Completed;
                _outputDir = c.OutputDir;
                _reason = null;
                break;
            case JobFailed f:
                _status = JobState.Failed;
                _reason = f.Reason;
                break;
            case JobCancelled c:
                _status = JobState.Cancelled;
                _reason = c.Reason;
                break;
        }
    }

    void Resume()
    {
        if (_status is JobState.Completed or JobState.Failed or JobState.Cancelled)
        {
            Finished(recovered: true);
            return;
        }
        if (_status != JobState.Running || _spec is null) return;
        if (_specDigest.Length == 0) _specDigest = _s.Store.Put(_spec.ToJson()); // a v1 journal kept no spec blob, or it was upcast
        WithStateHere(() =>
        {
            if (_rounds.Count >= _spec.Rounds || BudgetExhausted())
            {
                _log.Info("job {0}: recovered after its last round; finishing evaluation and export", _jobId);
                StartEvaluation();
                return;
            }
            if (_spec.Schedule.Buffered)
            {
                _log.Info("job {0}: recovered at version {1} with {2} buffered update(s) and {3} in flight; the buffered schedule goes on", _jobId,
                    _buffer.Version, _buffer.Pending.Count, _buffer.InFlight.Count);
                StartBuffer();
                return;
            }
            var round = _rounds.Count + 1;
            // The attempt in flight when we stopped is lost; the next one resumes after its last recorded exchange.
            var resume = _round == round ? _resume : null;
            _log.Info("job {0}: recovered with {1} completed rounds; resuming round {2}{3}", _jobId, _rounds.Count, round,
                resume is null ? "" : $" at exchange {resume.Phase}");
            StartAttempt(round, _round == round ? _attempt + 1 : 1, resume);
        });
    }

    /// <summary>Offers the spec and the state an attempt (or the evaluation) starts from to the other arbiters.</summary>
    void Replicate() => _replication.Tell(new StateReplication.Offer(_state!.Artifacts.Values.Append(_specDigest).ToArray()));

    /// <summary>
    /// Runs <paramref name="next"/> once the spec blob and every artifact of the job's state are in this arbiter's store.
    /// After a fail-over (the journal is shared, the blobs were on the lost arbiter) or a round run on another arbiter,
    /// they are pulled, digest-checked, from whichever members still hold them; the spec is rebuilt from the journal.
    /// </summary>
    void WithStateHere(Action next)
    {
        if (!_s.Store.Has(_specDigest)) _specDigest = _s.Store.Put(_spec!.ToJson());
        var lacking = _s.Store.Lacking(_state!.Artifacts.Values);
        if (lacking.Count == 0)
        {
            next();
            return;
        }
        _log.Info("job {0}: pulling {1} state blob(s) this arbiter lacks from the cluster", _jobId, lacking.Count);
        Context.ActorOf(BlobGather.Props(_s.Store, lacking, _s.Transfer, _jobId));
        Become(() =>
        {
            Always();
            Command<CancelJob>(Cancel);
            Command<BlobsGathered>(g =>
            {
                _log.Info("job {0}: pulled {1} state blob(s); going on", _jobId, g.Pulled.Count);
                next();
            });
            Command<BlobsMissing>(m => Persist(new JobFailed($"the job's state after round {_rounds.Count} is not on this arbiter and {m.Reason}", DateTime.UtcNow),
                f => { Apply(f); Finished(); }));
            IgnoreStaleRounds();
        });
    }

    // ---- preparation ----

    void OnSubmit(SubmitJob cmd)
    {
        _status = JobState.Preparing;
        _submission = cmd.Submission;
        _submitters.Add(Sender);
        Become(Preparing);
        var spec = cmd.Spec with { JobId = _jobId };
        var (store, modelsRoot, log, algorithms) = (_s.Store, _s.ModelsRoot, _log, _s.Algorithms);
        Task.Run(() =>
        {
            JobSpecValidation.Validate(spec, $"job {spec.JobId}", algorithms);
            var algorithm = algorithms.For(spec);
            var ctx = new ServerContext(spec, store, ModelLocation.Resolve(spec.ModelPath, modelsRoot), m => log.Info("job {0}: {1}", spec.JobId, m));
            var prepared = algorithm.Server.Prepare(ctx);
            return (object)new Prepared(prepared.Spec, prepared.Initial, store.Put(prepared.Spec.ToJson()));
        }).PipeTo(Self, failure: e => new PreparationFailed(e.GetBaseException().Message));
    }

    ServerContext ServerContextFor(JobSpec spec) =>
        new(spec, _s.Store, ModelLocation.Resolve(spec.ModelPath, _s.ModelsRoot), m => _log.Info("job {0}: {1}", _jobId, m));

    BlobLocation Blob(string digest) => new(digest, _s.Store.Size(digest), _s.BlobServer);

    // ---- rounds ----

    /// <summary>Participants with no node in the cluster, when without them the quorum cannot be met (else none).</summary>
    string[] Absent(IReadOnlyList<string> participants, int quorum)
    {
        var absent = participants.Where(p => !_s.Presence.Present(p)).ToArray();
        return participants.Count - absent.Length < Math.Min(quorum, participants.Count) ? absent : [];
    }

    void StartAttempt(int round, int attempt, RoundResume? resume)
    {
        var spec = _spec!;
        // A resumed attempt asks the parties its exchanges were addressed to; a fresh one draws its sample.
        var participants = resume is not null && _round == round ? _participants
            : _s.Algorithms.For(spec).Server.SelectParticipants(spec, round, attempt).ToArray();
        // An attempt that cannot reach its quorum because organizations have no node would only be spent in vain: wait for them.
        var absent = Absent(participants, spec.Round.Quorum);
        if (absent.Length > 0)
        {
            WaitForParties(round, attempt, resume, absent);
            return;
        }
        if (_waitingFor.Length > 0) _log.Info("job {0}: {1} joined; round {2} goes on", _jobId, string.Join(", ", _waitingFor), round);
        Timers.Cancel("presence");
        Timers.Cancel("wait-for-parties");
        _waitingFor = [];
        _current = null;
        Become(Running);
        Persist(new RoundStarted(round, attempt, participants, DateTime.UtcNow), e =>
        {
            Apply(e);
            _resume = resume;
            if (_s.Faults.Trip(FaultPoints.JobRoundStarted, Context, round: round, job: _jobId)) return;
            Replicate();
            var first = _rounds.FirstOrDefault(r => r.Round == 1)?.Seconds;
            var deadline = spec.Round.DeadlineAfter(first);
            Watch(RoundStage.Configure, deadline + SecureSteps(spec));
            var start = new StartRound(_jobId, round, attempt, spec, Blob(_specDigest), _state!, participants, resume) { Deadline = deadline };
            // A start sent to a region whose shard sat on a lost arbiter is gone until the shard moves: sent again until answered.
            // The timer is set before the start leaves, so whoever sees the start sees the timer running.
            if (_s.StartResend is { } every) Timers.StartPeriodicTimer("start", new ResendStart(start), every);
            _s.RoundRegion.Tell(start);
            _log.Info("job {0}: round {1}/{2} attempt {3} started with {4} parties{5}", _jobId, round, spec.Rounds, attempt, participants.Length,
                (resume is null ? "" : $", resuming at exchange {resume.Phase}") + (deadline == spec.Round.Deadline ? "" : $"; each exchange waits {deadline.TotalSeconds:F0} s ({spec.Round.DeadlineFactor:G3} × round 1's {first:F1} s, within [{spec.Round.DeadlineFloorSeconds:G4}, {spec.Round.DeadlineSeconds:G4}] s)"));
        });
    }

    /// <summary>
    /// Holds an attempt back until the organizations its quorum needs have nodes (checked every presence poll), or fails the
    /// job once <see cref="JobSettings.WaitForParties"/> has passed. No attempt is spent meanwhile.
    /// </summary>
    void WaitForParties(int round, int attempt, RoundResume? resume, string[] absent)
    {
        _waitingFor = absent;
        if (!Timers.IsTimerActive("wait-for-parties"))
        {
            _log.Warning("job {0}: round {1} waits up to {2} s for a node of {3}: without them its quorum of {4} cannot be met",
                _jobId, round, _s.WaitForParties.TotalSeconds, string.Join(", ", absent), _spec!.Round.Quorum);
            Timers.StartSingleTimer("wait-for-parties", new WaitedTooLong(), _s.WaitForParties);
            Timers.StartPeriodicTimer("presence", new PresenceCheck(), _s.PresencePoll);
        }
        Become(() =>
        {
            Always();
            Command<CancelJob>(Cancel);
            Command<PresenceCheck>(_ => StartAttempt(round, attempt, resume));
            Command<WaitedTooLong>(_ =>
            {
                Timers.Cancel("presence");
                Persist(new JobFailed($"round {round} cannot meet its quorum of {_spec!.Round.Quorum}: no node of {string.Join(", ", _waitingFor)} joined within {_s.WaitForParties.TotalSeconds:G4} s",
                    DateTime.UtcNow), f => { Apply(f); Finished(); });
            });
            IgnoreStaleRounds();
        });
    }

    static TimeSpan SecureSteps(JobSpec spec) =>
        spec.SecureAggregation.Enabled ? spec.SecureAggregation.PhaseTimeout * SecureAggregationOptions.TimedSteps : TimeSpan.Zero;

    /// <summary>The watchdog gives the round's current stage its own budget plus slack, so a slow but alive round is never cut off.</summary>
    void Watch(RoundStage stage, TimeSpan budget) =>
        Timers.StartSingleTimer("watchdog", new RoundWatchdog(_round, _attempt, stage, budget + _s.WatchdogSlack), budget + _s.WatchdogSlack);

    void EndStage()
    {
        if (_stage is { } st) Telemetry.FederationMetrics.StageEnded(_jobId, st.Stage.Name(), (DateTime.UtcNow - st.Since).TotalSeconds);
        _stage = null;
    }

    void OnRoundFinished(RoundFinished r)
    {
        Timers.Cancel("watchdog");
        Forget();
        EndStage();
        _current = null;
        var spec = _spec!;
        if (r.Succeeded)
        {
            Complete(new RoundCompleted(r.Summary!, r.State!, DateTime.UtcNow), () => WithStateHere(() =>
            {
                if (_rounds.Count < spec.Rounds && !BudgetExhausted()) StartAttempt(_rounds.Count + 1, 1, resume: null);
                else StartEvaluation();
            }));
            return;
        }
        Persist(new RoundAttemptFailed(r.Round, r.Attempt, r.Reason ?? "unknown", DateTime.UtcNow), e =>
        {
            Apply(e);
            Telemetry.FederationMetrics.AttemptFailed(_jobId);
            if (r.Attempt < spec.Round.MaxAttempts) StartAttempt(r.Round, r.Attempt + 1, resume: null);
            else Persist(new JobFailed($"round {r.Round} failed after {r.Attempt} attempts: {r.Reason}", DateTime.UtcNow), f => { Apply(f); Finished(); });
        });
    }

    /// <summary>
    /// Journals a completed round (a buffered flush, too) with the privacy spent so far, writes its lines and metrics, then
    /// goes on with <paramref name="next"/> unless a fault point stops it there.
    /// </summary>
    void Complete(RoundCompleted completed, Action next)
    {
        var summary = completed.Summary;
        if (summary.Privacy is { } p)
            summary = summary with
            {
                Privacy = p with
                {
                    Epsilon = _privacy.Compose(p.SamplingRate, p.NoiseMultiplier).Epsilon(p.Delta),
                    RoundEpsilon = PrivacyLedger.Empty.Compose(p.SamplingRate, p.NoiseMultiplier).Epsilon(p.Delta),
                },
            };
        Persist(completed with { Summary = summary }, e =>
        {
            Apply(e);
            _outputs.Tell(new JobOutputs.AppendRound(_spec!.OutputDir, summary));
            Telemetry.FederationMetrics.RoundCompleted(_jobId, summary);
            if (summary.Privacy is { } priv) _log.Info(
                $"job {_jobId}: after {(summary.Buffer is null ? "round" : "version")} {summary.Round} privacy spent is ε = {priv.Epsilon:F3} at δ = {priv.Delta:G3} (this {(summary.Buffer is null ? "round" : "flush")} alone {priv.RoundEpsilon:F3}; q = {priv.SamplingRate:G3}, z = {priv.NoiseMultiplier:G3}, C = {priv.ClipNorm:G4})");
            if (_s.Faults.Trip(FaultPoints.JobRoundCompleted, Context, round: summary.Round, job: _jobId)) return;
            next();
        });
    }

    // ---- the buffered schedule ----

    /// <summary>Starts (or, after a restart, resumes from the ledger) the buffered schedule as a child; the job journals for it.</summary>
    void StartBuffer()
    {
        var spec = _spec!;
        Replicate();
        _current = null;
        _bufferProgress.Clear();
        var collection = _s.Collection ?? new RoundSettings(_s.Store, _s.PartyRegion, _s.BlobServer, _s.Transfer, TimeSpan.FromSeconds(3)) { Presence = _s.Presence };
        // Named per incarnation: a crashed one's name may not be free yet.
        _bufferActor = Context.ActorOf(UpdateBuffer.Props(new BufferSettings(_jobId, spec, Blob(_specDigest), _state!, _buffer, _s.Algorithms.For(spec),
            ServerContextFor(spec), collection with { Faults = _s.Faults, Algorithms = _s.Algorithms }) { RetryAfter = _s.BufferRetry }), $"buffer-{_history.Count}");
        Context.Watch(_bufferActor);
        Become(Buffering);
    }

    /// <summary>A buffered schedule that crashed is started again from the ledger, never restarted with the state it was made with.</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new OneForOneStrategy(e =>
    {
        if (!Sender.Equals(_bufferActor)) return Directive.Restart;
        _log.Warning("job {0}: the buffered schedule crashed ({1}); it starts again from the journal", _jobId, e.Message);
        return Directive.Stop;
    });

    void Buffering()
    {
        Always();
        Command<Terminated>(t => t.ActorRef.Equals(_bufferActor), _ => StartBuffer());
        Command<CancelJob>(Cancel);
        Command<UpdateBuffer.Record>(r => Sender.Equals(_bufferActor), r =>
        {
            var buffer = Sender;
            if (r.Event is RoundCompleted flush)
            {
                Complete(flush, () =>
                {
                    if (_rounds.Count < _spec!.Rounds && !BudgetExhausted()) buffer.Tell(new UpdateBuffer.Recorded(_history[^1]));
                    else
                    {
                        StopBuffer($"the job has its {_rounds.Count} versions");
                        WithStateHere(StartEvaluation);
                    }
                });
                return;
            }
            Persist(r.Event, e =>
            {
                Apply(e);
                // A settled party's progress line goes; its next work reports its own.
                if (e switch { UpdateBuffered b => b.Org, UpdateDropped x => x.Org, _ => null } is { } settled) _bufferProgress.Remove(settled);
                buffer.Tell(new UpdateBuffer.Recorded(e));
            });
        });
        Command<Rounds.PartyProgressed>(p => _bufferProgress[p.Org] = p.Progress.ToString());
        Command<UpdateBuffer.Stalled>(s =>
        {
            StopBuffer(s.Reason);
            Persist(new JobFailed(s.Reason, DateTime.UtcNow), f => { Apply(f); Finished(); });
        });
        IgnoreStaleRounds();
    }

    void StopBuffer(string reason)
    {
        if (_bufferActor is null) return;
        Context.Unwatch(_bufferActor);
        _bufferActor.Tell(new UpdateBuffer.Stop(reason));
        _bufferActor = null;
        _bufferProgress.Clear();
    }

    BufferStatus? BufferView() => _spec?.Schedule.Buffered != true || _status != JobState.Running ? null
        : new BufferStatus(_buffer.Version, _buffer.Pending.Count, _spec.Schedule.Buffer, _buffer.InFlight.Values
            .Select(d => new BufferedWork(d.UpdateId, d.Org, d.BaseVersion, _bufferProgress.GetValueOrDefault(d.Org))).ToArray());

    void Cancel(CancelJob cancel)
    {
        var replyTo = Sender;
        Persist(new JobCancelled(DateTime.UtcNow) { Reason = cancel.Reason }, e =>
        {
            Apply(e);
            Forget();
            if (_bufferActor is not null) StopBuffer("the job was cancelled");
            else _s.RoundRegion.Tell(new AbortRound(_jobId, _round, _attempt, "the job was cancelled"));
            replyTo.Tell(Status());
            Finished();
        });
    }

    /// <summary>True when one more round like the last would take ε past the job's budget: the job then stops early.</summary>
    bool BudgetExhausted()
    {
        if (_spec?.Dp.EpsilonBudget is not { } budget || _rounds.LastOrDefault()?.Privacy is not { } last) return false;
        var next = _privacy.Compose(last.SamplingRate, last.NoiseMultiplier).Epsilon(last.Delta);
        if (next <= budget) return false;
        _stoppedEarly = $"stopped early after {_rounds.Count} rounds: another round would take ε from {last.Epsilon:F3} to {next:F3}, past the budget {budget:G4}";
        _log.Warning("job {0}: {1}", _jobId, _stoppedEarly);
        return true;
    }

    // ---- evaluation and export ----

    void StartEvaluation()
    {
        Replicate();
        Become(Evaluating);
        _s.Faults.Trip(FaultPoints.JobEvaluating, Context, job: _jobId);
        var (server, ctx, state) = (_s.Algorithms.For(_spec!).Server, ServerContextFor(_spec!), _state!);
        Task.Run(() => (object)new EvaluationPlanned(server.Evaluation(ctx, state)))
            .PipeTo(Self, failure: e => new EvaluationPlanFailed(e.GetBaseException().Message));
    }

    void OnEvaluationPlanned(EvaluationPlanned plan)
    {
        var spec = _spec!;
        _awaitingEvaluation.Clear();
        _evaluations.Clear();
        _evaluationMissing.Clear();
        if (plan.Instruction is { } instruction)
        {
            var downloads = instruction.Downloads.ToDictionary(kv => kv.Key, kv => Blob(kv.Value));
            foreach (var p in spec.Parties.Where(p => p.EvalDataset != null))
            {
                // Only parties with a node in the cluster can evaluate; one that crashed is not waited for.
                if (!_s.Presence.Present(p.Org))
                {
                    _log.Warning("job {0}: party {1} has no node in the cluster; it is left out of the final evaluation", _jobId, p.Org);
                    _evaluationMissing[p.Org] = "no node in the cluster";
                    continue;
                }
                _awaitingEvaluation.Add(p.Org);
                _s.PartyRegion.Tell(new EvaluateRequest(p.Org, _jobId, Blob(_specDigest), downloads, instruction.Parameters));
            }
        }
        if (_awaitingEvaluation.Count == 0) RecordEvaluation();
        else
        {
            if (Context.Child(PresenceWatcher).IsNobody() && _s.Presence.Watcher(Self) is { } watcher) Context.ActorOf(watcher, PresenceWatcher);
            // Parties that are gone are not waited for longer than an exchange would wait for them.
            Timers.StartSingleTimer("evaluation", new EvaluationTimeout(), spec.Round.Deadline);
        }
    }

    const string PresenceWatcher = "evaluation-presence";

    void OnEvaluateReply(EvaluateReply r)
    {
        if (!_awaitingEvaluation.Remove(r.Org)) return;
        if (r.Result is null)
        {
            _log.Warning("job {0}: party {1} could not evaluate: {2}", _jobId, r.Org, r.Error);
            _evaluationMissing[r.Org] = r.Error ?? "failed";
        }
        else _evaluations.Add(r.Result);
        if (_awaitingEvaluation.Count == 0) RecordEvaluation();
    }

    /// <param name="problem">Why there is no final evaluation at all, when it could not even be planned.</param>
    void RecordEvaluation(string? problem = null)
    {
        Timers.Cancel("evaluation");
        // Parties that did not answer in time are left out of the final table, not waited for.
        var results = _evaluations.OrderBy(v => v.Org).ToArray();
        foreach (var org in _awaitingEvaluation) _evaluationMissing[org] = "no answer before the round deadline";
        _awaitingEvaluation.Clear();
        if (!Context.Child(PresenceWatcher).IsNobody()) Context.Stop(Context.Child(PresenceWatcher));
        Become(Exporting);
        var missing = new SortedDictionary<string, string>(_evaluationMissing, StringComparer.Ordinal);
        Persist(new FinalEvaluationRecorded(results, DateTime.UtcNow) { Problem = problem, Missing = missing }, e =>
        {
            Apply(e);
            if (_s.Faults.Trip(FaultPoints.JobExporting, Context, job: _jobId)) return;
            var spec = _spec!;
            _outputs.Tell(new JobOutputs.Export(_s.Algorithms.For(spec).Server, ServerContextFor(spec), _state!, _rounds.ToArray(), results));
        });
    }

    JobStatus Status() => new(_jobId, _status, _rounds.Count, _spec?.Rounds ?? 0, _attempt, _state?.Find(AlgorithmState.Global),
        _reason ?? _stoppedEarly, _rounds.ToArray(), _evaluation, _outputDir ?? _spec?.OutputDir)
    {
        Epsilon = _rounds.LastOrDefault(r => r.Privacy != null)?.Privacy?.Epsilon,
        Delta = _rounds.LastOrDefault(r => r.Privacy != null)?.Privacy?.Delta,
        Algorithm = _spec?.Algorithm.Name,
        Artifacts = _state?.Artifacts ?? new Dictionary<string, string>(),
        WaitingFor = _waitingFor,
        LastFailure = _lastFailure,
        Current = _status == JobState.Running ? _current : null,
        EvaluationProblem = _evaluationProblem,
        EvaluationMissing = _evaluationLeftOut,
        Buffer = BufferView(),
    };

    public static Props Props(string jobId, JobSettings settings) => Akka.Actor.Props.Create(() => new JobActor(jobId, settings));
}
