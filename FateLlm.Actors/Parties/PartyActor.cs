using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;

namespace FateLlm.Actors.Parties;

/// <summary>What a party node knows locally: its organization, its private datasets by name, its store and server.</summary>
public sealed record PartyNodeSettings(string Org, IReadOnlyDictionary<string, string> Datasets, BlobStore Store, IActorRef BlobServer,
    TransferSettings Transfer, string TrainingDispatcher, string? ModelsRoot, string WorkspaceRoot)
{
    public FaultInjection Faults { get; init; } = FaultInjection.None;
    /// <summary>Fault injection: this node trains as if its hardware were this many times slower (1: as it is).</summary>
    public double Slowdown { get; init; } = 1.0;
    /// <summary>Where jobs' evaluation tasks are found; null: this node runs none.</summary>
    public Training.Evaluation.Harness.TaskSources? Tasks { get; init; }
    /// <summary>The plug-ins this node runs.</summary>
    public AlgorithmCatalog Algorithms { get; init; } = AlgorithmCatalog.BuiltIn;
    public TimeSpan TrainerBackoffMin { get; init; } = TimeSpan.FromMilliseconds(200);
    public TimeSpan TrainerBackoffMax { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Whether a sender's node is an arbiter: only arbiters may drive secure aggregation.</summary>
    public Func<Address, bool> IsArbiter { get; init; } = _ => true;
    /// <summary>Throws when this entity is not on its organization's node (private data never leaves its owner).</summary>
    public Action<string> VerifyPlacement { get; init; } = _ => { };

    /// <summary>The party's private keys folder (FedIPR), beside its workspaces: <c>&lt;data-dir&gt;/ipr</c>.</summary>
    public string KeysRoot { get; init; } = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(WorkspaceRoot))!, "ipr");

    /// <summary>A folder of the party's for one job, kept across rounds (algorithms' local state between exchanges).</summary>
    public string Workspace(string jobId) => Path.Combine(WorkspaceRoot, Uri.EscapeDataString(jobId));

    /// <summary>What the algorithm's party side sees of this node for one piece of work: its model copy, data and workspace.</summary>
    public ClientContext ContextFor(JobSpec spec, PartySpec party, int round, int attempt, int phase) =>
        new(spec, Org, round, attempt, phase, ModelLocation.Resolve(spec.ModelPath, ModelsRoot), Datasets[party.Dataset],
            party.EvalDataset is null ? null : Datasets[party.EvalDataset], Workspace(spec.JobId)) { KeysDir = KeysRoot, Tasks = Tasks };
}

/// <summary>
/// The sharded entity of one organization, pinned to that organization's node. It routes each exchange's work to a
/// <see cref="FitWork"/> child by work id and each final evaluation to an <see cref="EvaluationWork"/> child by job,
/// supervises them and the shared <see cref="Trainer"/> (restart with backoff), and stops work a later request of the
/// same job supersedes. Secure-aggregation steps are accepted only from arbiter members.
/// </summary>
public sealed class PartyActor : ReceiveActor
{
    /// <summary>Finished work of this many earlier rounds of a job is kept to answer re-sent requests.</summary>
    const int KeptRounds = 2;
    readonly PartyNodeSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly IActorRef _trainer;
    readonly Dictionary<WorkId, IActorRef> _works = new();
    readonly Dictionary<string, IActorRef> _evaluations = new();
    /// <summary>The latest work seen per job: a later exchange is only issued once earlier ones are over.</summary>
    readonly Dictionary<string, WorkId> _latest = new();
    /// <summary>Work the job cancelled, remembered (the last few) because a re-ask sent before the cancel may arrive after it.</summary>
    readonly Queue<WorkId> _cancelled = new();
    const int RememberedCancels = 64;

    public PartyActor(string org, PartyNodeSettings settings)
    {
        _s = settings;
        if (org != settings.Org)
            throw new InvalidOperationException($"party entity '{org}' started on the node of organization '{settings.Org}'");
        _trainer = Context.ActorOf(Trainer.Props(new RestartBackoff(settings.TrainerBackoffMin, settings.TrainerBackoffMax), settings.TrainingDispatcher, settings.Algorithms), "trainer");

        Receive<WorkRequest>(OnWork);
        Receive<CancelWork>(OnCancel);
        Receive<ISecAggRequest>(OnSecAgg);
        Receive<EvaluateRequest>(OnEvaluate);
        Receive<Terminated>(t =>
        {
            foreach (var k in _works.Where(kv => kv.Value.Equals(t.ActorRef)).Select(kv => kv.Key).ToList()) _works.Remove(k);
            foreach (var k in _evaluations.Where(kv => kv.Value.Equals(t.ActorRef)).Select(kv => kv.Key).ToList()) _evaluations.Remove(k);
        });
    }

    protected override SupervisorStrategy SupervisorStrategy() => new OneForOneStrategy(e =>
    {
        // The trainer keeps its mailbox across a restart; a crashed work child is gone and is recreated by the next re-ask.
        if (Sender.Equals(_trainer))
        {
            _log.Warning("party {0}: trainer crashed ({1}); restarting it", _s.Org, e.Message);
            return Directive.Restart;
        }
        // Forget the crashed work now, not when its Terminated arrives: a re-ask in between would go to the dying child.
        foreach (var k in _works.Where(kv => kv.Value.Equals(Sender)).Select(kv => kv.Key).ToList()) _works.Remove(k);
        _log.Warning("party {0}: work crashed ({1}); it restarts when asked again", _s.Org, e.Message);
        return Directive.Stop;
    });

    protected override void PreStart()
    {
        _s.VerifyPlacement(_s.Org);
        _log.Info("party {0} ready with datasets [{1}]", _s.Org, string.Join(", ", _s.Datasets.Keys));
    }

    void OnCancel(CancelWork c)
    {
        if (!_cancelled.Contains(c.Id))
        {
            _cancelled.Enqueue(c.Id);
            if (_cancelled.Count > RememberedCancels) _cancelled.Dequeue();
        }
        if (_works.TryGetValue(c.Id, out var w)) w.Tell(new StopWork("cancelled by the job"));
    }

    void OnWork(WorkRequest r)
    {
        if (_cancelled.Contains(r.Id))
        {
            _log.Info("party {0}: {1} refused (cancelled by the job)", _s.Org, r.Id);
            Sender.Tell(new UpdateFailed(_s.Org, r.Id, "the job cancelled this work"));
            return;
        }
        if (_works.TryGetValue(r.Id, out var existing))
        {
            existing.Forward(r);
            return;
        }
        if (_latest.TryGetValue(r.Id.JobId, out var latest) && latest.After(r.Id))
        {
            // A request delayed in transit (e.g. buffered while this node restarted) for an exchange that is already over.
            _log.Info("party {0}: {1} refused, this party already works on {2}", _s.Org, r.Id, latest);
            Sender.Tell(new UpdateFailed(_s.Org, r.Id, $"stale request: the party already works on the later {latest}"));
            return;
        }
        _latest[r.Id.JobId] = r.Id;
        foreach (var (id, work) in _works.Where(kv => r.Id.After(kv.Key)).ToList())
        {
            // Earlier work still fetching or fitting could no longer be used; finished work stays a while for re-asks.
            if (id.Round < r.Id.Round - KeptRounds) work.Tell(new StopWork("no longer needed"));
            else work.Tell(new Superseded(r.Id));
        }
        var child = Context.ActorOf(FitWork.Props(r, Sender, _s, _trainer));
        Context.Watch(child);
        _works[r.Id] = child;
    }

    void OnSecAgg(ISecAggRequest r)
    {
        if (!Sender.Path.Address.HasLocalScope && !_s.IsArbiter(Sender.Path.Address))
        {
            _log.Warning("party {0}: secure aggregation step {1} of {2} requested by {3}, which is not an arbiter; refused", _s.Org, r.Step.Name(), r.Id, Sender.Path.Address);
            return;
        }
        if (_works.TryGetValue(r.Id, out var work)) work.Forward(r);
        else Sender.Tell(new SecAggStepFailed(_s.Org, r.Id, r.Step, "no secure-aggregation state for this exchange here (the party restarted or never trained it)"));
    }

    void OnEvaluate(EvaluateRequest r)
    {
        if (_evaluations.TryGetValue(r.JobId, out var running))
        {
            running.Forward(r);
            return;
        }
        // The job is evaluating: its round work is no longer needed.
        foreach (var (id, work) in _works.Where(kv => kv.Key.JobId == r.JobId).ToList()) work.Tell(new StopWork("the job is evaluating"));
        var child = Context.ActorOf(EvaluationWork.Props(r, Sender, _s, _trainer));
        Context.Watch(child);
        _evaluations[r.JobId] = child;
    }

    public static Props Props(string org, PartyNodeSettings settings) => Akka.Actor.Props.Create(() => new PartyActor(org, settings));
}
