using Akka.Actor;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Parties;

/// <summary>
/// A job's final evaluation at one party (a child of <see cref="PartyActor"/>, one per job). Phases: fetching (spec and
/// the state to evaluate), evaluating on the trainer, answered. A repeated request only changes who gets the answer.
/// </summary>
internal sealed class EvaluationWork : ReceiveActor
{
    readonly EvaluateRequest _request;
    readonly PartyNodeSettings _s;
    readonly IActorRef _trainer;
    WorkFiles _files = null!;
    readonly CancellationTokenSource _cancel = new();
    IActorRef _replyTo;

    string Org => _s.Org;

    public EvaluationWork(EvaluateRequest request, IActorRef replyTo, PartyNodeSettings settings, IActorRef trainer)
    {
        _request = request;
        _replyTo = replyTo;
        _s = settings;
        _trainer = trainer;
        Receive<EvaluateRequest>(_ => _replyTo = Sender);
        Receive<StopWork>(_ => Context.Stop(Self));
        Receive<FetchCompleted>(f => { if (_files.Arrived(f, _s)) Evaluate(); });
        Receive<RefetchInFull>(r => _files.Refetch(r));
        Receive<FetchFailed>(f => Reply(null, $"download of '{f.Correlation}' failed: {f.Reason}"));
        Receive<EvaluationDone>(d => Reply(new PartyEvaluation(Org, d.Result.Loss, d.Result.Perplexity, d.Result.Rouge1, d.Result.Rouge2,
            d.Result.RougeL, d.Result.Bleu4, d.Result.Samples) { Tasks = [.. d.Result.Tasks] }, null));
        Receive<EvaluationFailed>(f => Reply(null, f.Reason));
    }

    protected override void PreStart() => _files = new WorkFiles(Context, _s, _request.Spec, _request.Downloads, _request.Parameters);

    protected override void PostStop() => _cancel.Cancel();

    void Evaluate()
    {
        JobSpec spec;
        try { spec = _files.Spec(_request.JobId); }
        catch (JobSpecException e) { Reply(null, e.Message); return; }
        var party = spec.Parties.FirstOrDefault(p => p.Org == Org);
        if (party is null || !_s.Datasets.ContainsKey(party.EvalDataset ?? party.Dataset))
        {
            Reply(null, $"party '{Org}' has no evaluation data for job {_request.JobId}");
            return;
        }
        if (_s.Faults.Trip(FaultPoints.PartyEvaluate, Context, Org, job: _request.JobId)) return;
        var instruction = new PartyInstruction(_request.Downloads.ToDictionary(kv => kv.Key, kv => kv.Value.Digest), _request.Parameters);
        _trainer.Tell(new RunEvaluation(_request.JobId, _s.ContextFor(spec, party, 0, 0, 0), instruction, _files.Downloads, _cancel.Token));
    }

    void Reply(PartyEvaluation? result, string? error)
    {
        _replyTo.Tell(new EvaluateReply(Org, _request.JobId, result, error));
        Context.Stop(Self);
    }

    public static Props Props(EvaluateRequest request, IActorRef replyTo, PartyNodeSettings settings, IActorRef trainer) =>
        Akka.Actor.Props.Create(() => new EvaluationWork(request, replyTo, settings, trainer));
}
