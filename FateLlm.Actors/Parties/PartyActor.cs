using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy.SecureAggregation;

namespace FateLlm.Actors.Parties;

/// <summary>What a party node knows locally: its organization, its private datasets by name, its blob store.</summary>
public sealed record PartyNodeSettings(string Org, IReadOnlyDictionary<string, string> Datasets, BlobStore Store, IActorRef BlobServer,
    TransferSettings Transfer, string TrainingDispatcher, string? ModelsRoot)
{
    /// <summary>Fault injection (specs, demo): this node crashes when asked for this secure-aggregation step in this round.</summary>
    public (int Round, string Step)? CrashAt { get; init; }
}

/// <summary>
/// The sharded entity of one organization, pinned to that organization's node. Per (job, round, attempt) it pulls
/// the global adapter, has its trainer produce a delta, and publishes the delta for the round to pull. Requests are
/// idempotent: a repeat is re-acknowledged, or answered with the cached result.
/// </summary>
public sealed class PartyActor : ReceiveActor
{
    readonly PartyNodeSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly IActorRef _trainer;
    readonly Dictionary<WorkKey, object> _results = new();
    (WorkKey Key, IActorRef ReplyTo, TrainRequest Request, CancellationTokenSource Cancel, long DownloadBytes)? _current;
    readonly Dictionary<string, (EvaluateRequest Request, IActorRef ReplyTo)> _evaluations = new();
    // Fetchers are named for what they fetch: a training round's global and an evaluation's adapter may share a digest.
    const string GlobalFetch = "global-", EvalFetch = "eval-";
    int _evalFetches;
    // Secure-aggregation state per round attempt. It lives only in memory: a party that restarts mid-round has lost its
    // secrets and is, correctly, a dropout of that attempt.
    readonly Dictionary<WorkKey, SecureWork> _secure = new();

    sealed class SecureWork(SecAggClient client, JobSpec spec, byte[] delta, long samples)
    {
        public SecAggClient Client { get; } = client;
        public JobSpec Spec { get; } = spec;
        public byte[] Delta { get; } = delta;
        public long Samples { get; } = samples;
        public readonly Dictionary<Type, object> Answers = new();
    }

    /// <summary>The job id in an evaluation fetcher's name <c>eval-&lt;n&gt;-&lt;escaped job id&gt;</c>.</summary>
    static string? EvalJob(string actorName) =>
        actorName.StartsWith(EvalFetch) ? Uri.UnescapeDataString(actorName[(actorName.IndexOf('-', EvalFetch.Length) + 1)..]) : null;

    public PartyActor(string org, PartyNodeSettings settings)
    {
        _s = settings;
        if (org != settings.Org)
            throw new InvalidOperationException($"party entity '{org}' started on the node of organization '{settings.Org}'");
        var backoff = new RestartBackoff(TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(10));
        _trainer = Context.ActorOf(Akka.Actor.Props.Create(() => new Trainer(org, backoff)).WithDispatcher(settings.TrainingDispatcher), "trainer");

        Receive<TrainRequest>(OnTrain);
        Receive<FetchCompleted>(OnFetched);
        Receive<FetchFailed>(OnFetchFailed);
        Receive<LocalRoundDone>(OnDone);
        Receive<LocalRoundFailed>(f => Finish(f.Key, new UpdateFailed(_s.Org, f.Key.JobId, f.Key.Round, f.Key.Attempt, f.Reason)));
        Receive<EvaluateRequest>(OnEvaluate);
        Receive<SecAggShareRequest>(r => SecureStep(r.JobId, r.Round, r.Attempt, "share", typeof(SecAggSharesReady), w =>
            new SecAggSharesReady(_s.Org, r.JobId, r.Round, r.Attempt, w.Client.ShareKeys(r.Advertised))));
        Receive<SecAggMaskRequest>(r => SecureStep(r.JobId, r.Round, r.Attempt, "mask", typeof(SecAggMaskedReady), w =>
        {
            var n = w.Spec.Parties.Length;
            var masked = FederatedComputation.MaskedInput(w.Client, w.Delta, w.Samples, w.Spec.SecureAggregation.SampleCap, w.Spec.Dp, r.ClipNorm, n, r.Inbox);
            return new SecAggMaskedReady(_s.Org, r.JobId, r.Round, r.Attempt, new BlobLocation(_s.Store.Put(masked), masked.Length, _s.BlobServer));
        }));
        Receive<SecAggUnmaskRequest>(r => SecureStep(r.JobId, r.Round, r.Attempt, "unmask", typeof(SecAggUnmaskReady), w =>
            new SecAggUnmaskReady(_s.Org, r.JobId, r.Round, r.Attempt, w.Client.Unmask(r.Survivors))));
        Receive<EvaluationDone>(d => ReplyEvaluation(d.JobId, new EvaluateReply(_s.Org, d.JobId, new PartyEvaluation(_s.Org, d.Result.Loss,
            d.Result.Perplexity, d.Result.Rouge1, d.Result.Rouge2, d.Result.RougeL, d.Result.Bleu4, d.Result.Samples), null)));
        Receive<EvaluationFailed>(f => ReplyEvaluation(f.JobId, new EvaluateReply(_s.Org, f.JobId, null, f.Reason)));
    }

    protected override SupervisorStrategy SupervisorStrategy() => new OneForOneStrategy(e =>
    {
        _log.Warning("party {0}: trainer crashed ({1}); restarting it", _s.Org, e.Message);
        return Directive.Restart;
    });

    protected override void PreStart()
    {
        // Private data never leaves its owner: refuse to run on a node without this organization's role.
        var self = Cluster.Get(Context.System).SelfMember;
        if (!self.HasRole(PartyPlacement.RoleOf(_s.Org)))
            throw new InvalidOperationException($"party '{_s.Org}' refused to start on {self.Address}: the node lacks role {PartyPlacement.RoleOf(_s.Org)}");
        _log.Info("party {0} ready with datasets [{1}]", _s.Org, string.Join(", ", _s.Datasets.Keys));
    }

    /// <summary>On shutdown (SIGTERM → CoordinatedShutdown) the local step is abandoned: the trainer stops at its next batch.</summary>
    protected override void PostStop()
    {
        _current?.Cancel.Cancel();
        foreach (var w in _secure.Values) w.Client.Dispose();
        base.PostStop();
    }

    void OnTrain(TrainRequest r)
    {
        var key = new WorkKey(r.JobId, r.Round, r.Attempt);
        if (_results.TryGetValue(key, out var cached))
        {
            Sender.Tell(cached);
            return;
        }
        if (_current is { } cur && cur.Key == key)
        {
            _current = cur with { ReplyTo = Sender };
            Sender.Tell(new TrainAccepted(_s.Org, r.JobId, r.Round, r.Attempt));
            return;
        }
        var party = r.Spec.Parties.FirstOrDefault(p => p.Org == _s.Org);
        string? problem = party is null ? $"party '{_s.Org}' is not in job {r.JobId}"
            : !_s.Datasets.ContainsKey(party.Dataset) ? $"party '{_s.Org}' has no dataset '{party.Dataset}' (known: {string.Join(", ", _s.Datasets.Keys)})"
            : party.EvalDataset != null && !_s.Datasets.ContainsKey(party.EvalDataset) ? $"party '{_s.Org}' has no dataset '{party.EvalDataset}' (known: {string.Join(", ", _s.Datasets.Keys)})"
            : null;
        if (problem != null)
        {
            _log.Warning(problem);
            Sender.Tell(new UpdateFailed(_s.Org, r.JobId, r.Round, r.Attempt, problem));
            return;
        }
        if (_current is { } old)
        {
            // A newer request supersedes whatever is running: its result could no longer be used.
            old.Cancel.Cancel();
            _log.Info("party {0}: {1} superseded by {2}", _s.Org, old.Key, key);
        }
        _current = (key, Sender, r, new CancellationTokenSource(), 0);
        Sender.Tell(new TrainAccepted(_s.Org, r.JobId, r.Round, r.Attempt));
        Context.ActorOf(BlobFetcher.Props(_s.Store, r.Global, _s.Transfer), GlobalFetch + FetcherId(key));
    }

    // Actor names allow only URI characters; job ids are free text.
    static string FetcherId(WorkKey k) => Uri.EscapeDataString($"{k.JobId}.{k.Round}.{k.Attempt}");

    void OnFetched(FetchCompleted f)
    {
        var name = Sender.Path.Name;
        if (EvalJob(name) is { } evalJob && _evaluations.TryGetValue(evalJob, out var eval))
        {
            var evalParty = eval.Request.Spec.Parties.First(p => p.Org == _s.Org);
            var data = _s.Datasets[evalParty.EvalDataset ?? evalParty.Dataset];
            _trainer.Tell(new RunEvaluation(eval.Request.JobId, Task(eval.Request.Spec), _s.Store.PathOf(f.Digest), data,
                eval.Request.Spec.EvalLimit, eval.Request.Spec.EvalMaxNewTokens));
            return;
        }
        if (_current is not { } cur || name != GlobalFetch + FetcherId(cur.Key)) return;
        _current = cur with { DownloadBytes = f.Chunks > 0 ? f.Bytes : 0 };
        var party = cur.Request.Spec.Parties.First(p => p.Org == _s.Org);
        _trainer.Tell(new RunLocalRound(cur.Key, Task(cur.Request.Spec), _s.Store.PathOf(f.Digest), _s.Datasets[party.Dataset],
            party.EvalDataset is null ? null : _s.Datasets[party.EvalDataset], cur.Cancel.Token));
    }

    void OnFetchFailed(FetchFailed f)
    {
        var name = Sender.Path.Name;
        if (EvalJob(name) is { } evalJob)
        {
            ReplyEvaluation(evalJob, new EvaluateReply(_s.Org, evalJob, null, f.Reason));
            return;
        }
        if (_current is { } cur && name == GlobalFetch + FetcherId(cur.Key))
            Finish(cur.Key, new UpdateFailed(_s.Org, cur.Key.JobId, cur.Key.Round, cur.Key.Attempt, $"download of the global adapter failed: {f.Reason}"));
    }

    void OnDone(LocalRoundDone d)
    {
        if (_current is not { } cur || cur.Key != d.Key) return;
        _log.Info("party {0}: {1} trained {2} steps on {3} samples, loss {4:F4} → {5:F4}", _s.Org, d.Key, d.Result.Steps, d.Result.Samples,
            d.Result.FirstLoss, d.Result.LastLoss);
        var r = d.Result;
        var spec = cur.Request.Spec;
        if (spec.SecureAggregation.Enabled)
        {
            // The delta stays here; only masked words ever leave, so it is not put in the (pullable) blob store.
            var session = SecureRoundSession.For(spec, d.Key.Round, d.Key.Attempt, FederatedComputation.AdapterLength(r.Delta));
            var client = new SecAggClient(session, _s.Org);
            foreach (var old in _secure.Keys.Where(k => k.JobId == d.Key.JobId && k != d.Key).ToList())
                if (_secure.Remove(old, out var stale)) stale.Client.Dispose();
            _secure[d.Key] = new SecureWork(client, spec, r.Delta, r.Samples);
            Finish(d.Key, new UpdateReady(_s.Org, d.Key.JobId, d.Key.Round, d.Key.Attempt, null, r.Samples, r.FirstLoss, r.LastLoss, r.EvalLoss,
                r.Seconds, cur.DownloadBytes) { Keys = client.Advertise() });
            return;
        }
        var digest = _s.Store.Put(r.Delta);
        Finish(d.Key, new UpdateReady(_s.Org, d.Key.JobId, d.Key.Round, d.Key.Attempt, new BlobLocation(digest, r.Delta.Length, _s.BlobServer),
            r.Samples, r.FirstLoss, r.LastLoss, r.EvalLoss, r.Seconds, cur.DownloadBytes));
    }

    /// <summary>Runs one secure-aggregation step once per round attempt; repeats get the first answer, failures a clear refusal.</summary>
    void SecureStep(string jobId, int round, int attempt, string step, Type answerType, Func<SecureWork, object> run)
    {
        var key = new WorkKey(jobId, round, attempt);
        // Only an arbiter may drive the protocol: a peer posing as one could otherwise ask first for the wrong shares.
        var from = Sender.Path.Address;
        var cluster = Cluster.Get(Context.System);
        if (!from.HasLocalScope && !cluster.State.Members.Any(m => m.Address == from && m.HasRole("arbiter")))
        {
            _log.Warning("party {0}: secure aggregation step {1} of {2} requested by {3}, which is not an arbiter; refused", _s.Org, step, key, from);
            return;
        }
        if (_s.CrashAt is { } crash && crash.Round == round && crash.Step == step)
        {
            _log.Warning("party {0}: fault injection: crashing this node at secure-aggregation step {1} of {2}", _s.Org, step, key);
            Context.System.Terminate();
            return;
        }
        if (!_secure.TryGetValue(key, out var work))
        {
            Sender.Tell(new SecAggStepFailed(_s.Org, jobId, round, attempt, step, "no secure-aggregation state for this round here (the party restarted or never trained it)"));
            return;
        }
        if (!work.Answers.TryGetValue(answerType, out var answer))
        {
            try { answer = run(work); }
            catch (SecAggException e)
            {
                _log.Warning("party {0}: secure aggregation step {1} of {2} refused: {3}", _s.Org, step, key, e.Message);
                answer = new SecAggStepFailed(_s.Org, jobId, round, attempt, step, e.Message);
            }
            work.Answers[answerType] = answer;
        }
        Sender.Tell(answer);
    }


    void Finish(WorkKey key, object result)
    {
        if (_current is not { } cur || cur.Key != key) return;
        if (result is UpdateFailed f) _log.Warning("party {0}: {1} failed: {2}", _s.Org, key, f.Reason);
        _results[key] = result;
        // Keep the last few answers for retransmission; older rounds are never asked again.
        foreach (var stale in _results.Keys.Where(k => k.JobId == key.JobId && k.Round < key.Round - 2).ToList()) _results.Remove(stale);
        cur.ReplyTo.Tell(result);
        _current = null;
    }

    void OnEvaluate(EvaluateRequest r)
    {
        var party = r.Spec.Parties.FirstOrDefault(p => p.Org == _s.Org);
        if (party is null || !_s.Datasets.ContainsKey(party.EvalDataset ?? party.Dataset))
        {
            Sender.Tell(new EvaluateReply(_s.Org, r.JobId, null, $"party '{_s.Org}' has no evaluation data for job {r.JobId}"));
            return;
        }
        var running = _evaluations.ContainsKey(r.JobId);
        _evaluations[r.JobId] = (r, Sender); // a repeat (e.g. from a restarted job) only updates who gets the answer
        if (!running)
            Context.ActorOf(BlobFetcher.Props(_s.Store, r.Adapter, _s.Transfer), $"{EvalFetch}{++_evalFetches}-{Uri.EscapeDataString(r.JobId)}");
    }

    void ReplyEvaluation(string jobId, EvaluateReply reply)
    {
        if (_evaluations.Remove(jobId, out var e)) e.ReplyTo.Tell(reply);
    }

    Training.Federation.FederatedTask Task(JobSpec spec) => spec.ToTask(LocalModelPath(spec.ModelPath, _s.ModelsRoot));

    /// <summary>The job's model path, or a folder of the same name under this node's models root.</summary>
    public static string LocalModelPath(string path, string? modelsRoot)
    {
        if (Directory.Exists(path) || string.IsNullOrEmpty(modelsRoot)) return path;
        var alt = Path.Combine(modelsRoot, Path.GetFileName(path.TrimEnd('/', '\\')));
        return Directory.Exists(alt) ? alt : path;
    }

    public static Props Props(string org, PartyNodeSettings settings) => Akka.Actor.Props.Create(() => new PartyActor(org, settings));
}
