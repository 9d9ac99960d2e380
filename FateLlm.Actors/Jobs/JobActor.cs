using System.Text.Json;
using Akka.Actor;
using Akka.Event;
using Akka.Persistence;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy;

namespace FateLlm.Actors.Jobs;

public sealed record JobSettings(BlobStore Store, IActorRef BlobServer, IActorRef RoundRegion, IActorRef PartyRegion, string? ModelsRoot);

/// <summary>
/// One federated job, event-sourced (JobSubmitted, RoundStarted, RoundCompleted, …) and remembered by sharding, so
/// after an arbiter restart it resumes at the round after the last completed one: completed rounds are never
/// recomputed; an attempt that was in flight is simply retried.
/// </summary>
public sealed class JobActor : ReceivePersistentActor, IWithTimers
{
    readonly JobSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly string _jobId;
    JobSpec? _spec;
    JobState _state = JobState.Unknown;
    string? _globalDigest, _serverStateDigest, _reason, _outputDir, _stoppedEarly;
    int _round, _attempt;
    readonly List<RoundSummary> _rounds = new();
    PartyEvaluation[] _evaluation = [];
    readonly List<IActorRef> _submitters = new();
    readonly HashSet<string> _awaitingEvaluation = new();
    readonly List<PartyEvaluation> _evaluations = new();
    readonly List<IJobEvent> _history = new();

    public override string PersistenceId => "job-" + _jobId;
    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Prepared(JobSpec Spec, string InitialDigest);
    sealed record PreparationFailed(string Reason);
    sealed record RoundWatchdog(int Round, int Attempt);
    sealed record EvaluationTimeout;
    sealed record Exported(string OutputDir);
    sealed record ExportFailed(string Reason);

    public JobActor(string jobId, JobSettings settings)
    {
        _jobId = jobId;
        _s = settings;
        Recover<IJobEvent>(Apply);
        Recover<RecoveryCompleted>(_ => Resume());

        Command<SubmitJob>(OnSubmit);
        Command<Prepared>(p => Persist(new JobSubmitted(p.Spec, p.InitialDigest, DateTime.UtcNow), e =>
        {
            Apply(e);
            foreach (var s in _submitters) s.Tell(new JobAccepted(_jobId));
            _submitters.Clear();
            StartAttempt(1, 1);
        }));
        Command<PreparationFailed>(f =>
        {
            _state = JobState.Unknown;
            foreach (var s in _submitters) s.Tell(new JobRejected(_jobId, f.Reason));
            _submitters.Clear();
        });
        Command<GetJobStatus>(_ => Sender.Tell(Status()));
        Command<CancelJob>(_ =>
        {
            if (_state is JobState.Running or JobState.Preparing)
                Persist(new JobCancelled(DateTime.UtcNow), Apply);
            Sender.Tell(Status());
        });
        Command<RoundFinished>(OnRoundFinished);
        Command<RoundWatchdog>(w =>
        {
            if (_state == JobState.Running && w.Round == _round && w.Attempt == _attempt)
                OnRoundFinished(new RoundFinished(_jobId, w.Round, w.Attempt, false, "the round did not report back (arbiter-side loss)", null, null, null));
        });
        Command<EvaluateReply>(OnEvaluateReply);
        Command<EvaluationTimeout>(_ => RecordEvaluation());
        Command<Exported>(e => Persist(new JobCompleted(e.OutputDir, DateTime.UtcNow), ev => { Apply(ev); WriteEventLog(); }));
        Command<ExportFailed>(f => Persist(new JobFailed($"export failed: {f.Reason}", DateTime.UtcNow), ev => { Apply(ev); WriteEventLog(); }));
    }

    void Apply(IJobEvent e)
    {
        _history.Add(e);
        switch (e)
        {
            case JobSubmitted s:
                _spec = s.Spec;
                _globalDigest = s.InitialDigest;
                _state = JobState.Running;
                break;
            case RoundStarted r:
                (_round, _attempt) = (r.Round, r.Attempt);
                break;
            case RoundCompleted c:
                _rounds.Add(c.Summary);
                _globalDigest = c.Summary.GlobalDigest;
                _serverStateDigest = c.ServerStateDigest;
                break;
            case RoundAttemptFailed f:
                _reason = f.Reason;
                break;
            case FinalEvaluationRecorded f:
                _evaluation = f.Results;
                break;
            case JobCompleted c:
                _state = JobState.Completed;
                _outputDir = c.OutputDir;
                _reason = null;
                break;
            case JobFailed f:
                _state = JobState.Failed;
                _reason = f.Reason;
                break;
            case JobCancelled:
                _state = JobState.Cancelled;
                break;
        }
    }

    void Resume()
    {
        if (_state != JobState.Running || _spec is null) return;
        if (_rounds.Count >= _spec.Rounds || BudgetExhausted())
        {
            _log.Info("job {0}: recovered after its last round; finishing evaluation and export", _jobId);
            StartEvaluation();
            return;
        }
        // The attempt that was in flight when we stopped is lost; start the next one of the same round.
        _log.Info("job {0}: recovered with {1} completed rounds; resuming round {2}", _jobId, _rounds.Count, _rounds.Count + 1);
        StartAttempt(_rounds.Count + 1, _round == _rounds.Count + 1 ? _attempt + 1 : 1);
    }

    void OnSubmit(SubmitJob cmd)
    {
        if (_state != JobState.Unknown)
        {
            if (_state == JobState.Preparing) _submitters.Add(Sender);
            else Sender.Tell(new JobRejected(_jobId, $"job '{_jobId}' already exists ({_state})"));
            return;
        }
        _state = JobState.Preparing;
        _submitters.Add(Sender);
        var spec = cmd.Spec with { JobId = _jobId };
        var store = _s.Store;
        var modelsRoot = _s.ModelsRoot;
        Task.Run(() =>
        {
            spec.Validate($"job {spec.JobId}");
            var local = PartyActor.LocalModelPath(spec.ModelPath, modelsRoot);
            var digest = Training.Models.HfCheckpoint.WeightsDigest(local);
            if (spec.ModelDigest.Length > 0 && spec.ModelDigest != digest)
                throw new JobSpecException($"job {spec.JobId}: the arbiter's copy of '{spec.ModelPath}' has digest {digest[..12]}…, the job names {spec.ModelDigest[..12]}…");
            spec = spec with { ModelDigest = digest };
            var initial = store.Put(FederatedComputation.InitialAdapter(spec.ToTask(local)));
            return (object)new Prepared(spec, initial);
        }).PipeTo(Self, failure: e => new PreparationFailed(e.GetBaseException().Message));
    }

    void StartAttempt(int round, int attempt)
    {
        Persist(new RoundStarted(round, attempt, DateTime.UtcNow), e =>
        {
            Apply(e);
            var spec = _spec!;
            var global = new BlobLocation(_globalDigest!, _s.Store.Size(_globalDigest!), _s.BlobServer);
            _s.RoundRegion.Tell(new StartRound(_jobId, round, attempt, spec, global, _serverStateDigest));
            Timers.StartSingleTimer("watchdog", new RoundWatchdog(round, attempt), spec.RoundDeadline + TimeSpan.FromSeconds(60));
            _log.Info("job {0}: round {1}/{2} attempt {3} started", _jobId, round, spec.Rounds, attempt);
        });
    }

    void OnRoundFinished(RoundFinished r)
    {
        if (_state != JobState.Running || r.Round != _round || r.Attempt != _attempt) return; // stale attempt
        Timers.Cancel("watchdog");
        var spec = _spec!;
        if (r.Succeeded)
        {
            var summary = r.Summary!;
            if (summary.Privacy is { } p)
                summary = summary with
                {
                    Privacy = p with
                    {
                        Epsilon = Accountant(_rounds.Select(x => x.Privacy).Append(p)).Epsilon(p.Delta).Epsilon,
                        RoundEpsilon = Accountant([p]).Epsilon(p.Delta).Epsilon,
                    },
                };
            Persist(new RoundCompleted(summary, r.ServerStateDigest, DateTime.UtcNow), e =>
            {
                Apply(e);
                AppendRoundMetrics(summary);
                if (summary.Privacy is { } priv) _log.Info(
                    $"job {_jobId}: after round {summary.Round} privacy spent is ε = {priv.Epsilon:F3} at δ = {priv.Delta:G3} (this round alone {priv.RoundEpsilon:F3}; q = {priv.SamplingRate:G3}, z = {priv.NoiseMultiplier:G3}, C = {priv.ClipNorm:G4})");
                if (_rounds.Count < spec.Rounds && !BudgetExhausted()) StartAttempt(_rounds.Count + 1, 1);
                else StartEvaluation();
            });
            return;
        }
        Persist(new RoundAttemptFailed(r.Round, r.Attempt, r.Reason ?? "unknown", DateTime.UtcNow), e =>
        {
            Apply(e);
            if (r.Attempt < spec.MaxRoundAttempts) StartAttempt(r.Round, r.Attempt + 1);
            else Persist(new JobFailed($"round {r.Round} failed after {r.Attempt} attempts: {r.Reason}", DateTime.UtcNow), f => { Apply(f); WriteEventLog(); });
        });
    }

    static RdpAccountant Accountant(IEnumerable<RoundPrivacy?> rounds)
    {
        var accountant = new RdpAccountant();
        foreach (var p in rounds.OfType<RoundPrivacy>()) accountant.Compose(p.SamplingRate, p.NoiseMultiplier);
        return accountant;
    }

    /// <summary>True when one more round like the last would take ε past the job's budget: the job then stops early.</summary>
    bool BudgetExhausted()
    {
        if (_spec?.Dp.EpsilonBudget is not { } budget || _rounds.LastOrDefault()?.Privacy is not { } last) return false;
        var next = Accountant(_rounds.Select(r => r.Privacy).Append(last)).Epsilon(last.Delta).Epsilon;
        if (next <= budget) return false;
        _stoppedEarly = $"stopped early after {_rounds.Count} rounds: another round would take ε from {last.Epsilon:F3} to {next:F3}, past the budget {budget:G4}";
        _log.Warning("job {0}: {1}", _jobId, _stoppedEarly);
        return true;
    }

    void StartEvaluation()
    {
        var spec = _spec!;
        var adapter = new BlobLocation(_globalDigest!, _s.Store.Size(_globalDigest!), _s.BlobServer);
        _awaitingEvaluation.Clear();
        _evaluations.Clear();
        // Only parties with a node in the cluster can evaluate; one that crashed is not waited for.
        var cluster = Akka.Cluster.Cluster.Get(Context.System).State;
        foreach (var p in spec.Parties.Where(p => p.EvalDataset != null))
        {
            if (!PartyPlacement.Nodes(cluster, p.Org, includeJoining: false).Any())
            {
                _log.Warning("job {0}: party {1} has no node in the cluster; it is left out of the final evaluation", _jobId, p.Org);
                continue;
            }
            _awaitingEvaluation.Add(p.Org);
            _s.PartyRegion.Tell(new EvaluateRequest(p.Org, _jobId, spec, adapter));
        }
        if (_awaitingEvaluation.Count == 0) RecordEvaluation();
        // Parties that are gone are not waited for longer than a round would wait for them.
        else Timers.StartSingleTimer("evaluation", new EvaluationTimeout(), spec.RoundDeadline);
    }

    void OnEvaluateReply(EvaluateReply r)
    {
        if (!_awaitingEvaluation.Remove(r.Org)) return;
        if (r.Result is null) _log.Warning("job {0}: party {1} could not evaluate: {2}", _jobId, r.Org, r.Error);
        else _evaluations.Add(r.Result);
        if (_awaitingEvaluation.Count == 0) RecordEvaluation();
    }

    void RecordEvaluation()
    {
        if (_state != JobState.Running) return;
        Timers.Cancel("evaluation");
        // Parties that did not answer in time are left out of the final table, not waited for.
        var results = _evaluations.OrderBy(v => v.Org).ToArray();
        _awaitingEvaluation.Clear();
        Persist(new FinalEvaluationRecorded(results, DateTime.UtcNow), e =>
        {
            Apply(e);
            var spec = _spec!;
            var adapter = _s.Store.Read(_globalDigest!);
            var modelsRoot = _s.ModelsRoot;
            var rounds = _rounds.ToArray();
            Task.Run(() =>
            {
                var dir = spec.OutputDir;
                Directory.CreateDirectory(dir);
                FederatedComputation.ExportAdapter(spec.ToTask(PartyActor.LocalModelPath(spec.ModelPath, modelsRoot)), adapter,
                    Path.Combine(dir, "adapter"), Path.Combine(dir, "merged"));
                File.WriteAllText(Path.Combine(dir, "evaluation.json"), JsonSerializer.Serialize(results, JsonOptions));
                PlotRounds(rounds, spec, Path.Combine(dir, "loss.png"));
                return (object)new Exported(dir);
            }).PipeTo(Self, failure: ex => new ExportFailed(ex.GetBaseException().Message));
        });
    }

    static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    void AppendRoundMetrics(RoundSummary summary)
    {
        try
        {
            Directory.CreateDirectory(_spec!.OutputDir);
            using var w = File.AppendText(Path.Combine(_spec.OutputDir, "rounds.jsonl"));
            foreach (var p in summary.Parties)
                w.WriteLine(JsonSerializer.Serialize(new
                {
                    job = _jobId, round = summary.Round, attempt = summary.Attempt, party = p.Org, ok = p.Succeeded, reason = p.Reason,
                    samples = p.Samples, first_loss = Finite(p.FirstLoss), last_loss = Finite(p.LastLoss), eval_loss = p.EvalLoss,
                    upload_bytes = p.UploadBytes, download_bytes = p.DownloadBytes, retransmissions = p.Retransmissions,
                    train_seconds = p.TrainSeconds, round_seconds = summary.Seconds, global = summary.GlobalDigest,
                    epsilon = summary.Privacy?.Epsilon, round_epsilon = summary.Privacy?.RoundEpsilon, rejections = summary.Rejections.Length, secure_aggregation = summary.SecureAggregation,
                }));
        }
        catch (IOException e)
        {
            _log.Warning("job {0}: could not append round metrics: {1}", _jobId, e.Message);
        }
    }

    static double? Finite(double x) => double.IsFinite(x) ? x : null;

    /// <summary>Per party and round: its local training loss at the end of the round, and the eval loss of the global it received.</summary>
    static void PlotRounds(RoundSummary[] rounds, JobSpec spec, string path)
    {
        var series = new List<Training.Reporting.Series>();
        foreach (var org in spec.Parties.Select(p => p.Org))
        {
            var reports = rounds.Select(r => (r.Round, Report: r.Parties.FirstOrDefault(p => p.Org == org))).Where(x => x.Report is { Succeeded: true }).ToList();
            series.Add(new(org + " train", reports.Select(x => (double)x.Round).ToArray(), reports.Select(x => x.Report!.LastLoss).ToArray()));
            var evals = reports.Where(x => x.Report!.EvalLoss.HasValue).ToList();
            if (evals.Count > 0) series.Add(new(org + " eval (global in)", evals.Select(x => (double)x.Round).ToArray(), evals.Select(x => x.Report!.EvalLoss!.Value).ToArray()));
        }
        Training.Reporting.LineChart.Save(path, $"job {spec.JobId}: loss per round per party", "round", "loss", series);
    }

    void WriteEventLog()
    {
        try
        {
            Directory.CreateDirectory(_spec!.OutputDir);
            File.WriteAllText(Path.Combine(_spec.OutputDir, "status.json"), JsonSerializer.Serialize(Status(), JsonOptions));
            File.WriteAllLines(Path.Combine(_spec.OutputDir, "events.jsonl"),
                _history.Select(e => JsonSerializer.Serialize(new { type = e.GetType().Name, @event = (object)e }, JsonOptions).ReplaceLineEndings(" ")));
        }
        catch (IOException e)
        {
            _log.Warning("job {0}: could not write status: {1}", _jobId, e.Message);
        }
    }

    JobStatus Status() => new(_jobId, _state, _rounds.Count, _spec?.Rounds ?? 0, _attempt, _globalDigest, _reason ?? _stoppedEarly, _rounds.ToArray(),
        _evaluation, _outputDir ?? _spec?.OutputDir)
    {
        Epsilon = _rounds.LastOrDefault(r => r.Privacy != null)?.Privacy?.Epsilon,
        Delta = _rounds.LastOrDefault(r => r.Privacy != null)?.Privacy?.Delta,
    };

    public static Props Props(string jobId, JobSettings settings) => Akka.Actor.Props.Create(() => new JobActor(jobId, settings));
}
