using System.Diagnostics;
using Akka.Actor;
using FateLlm.Training.Runtime;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Parties;

internal sealed record RunFit(WorkId Id, ClientContext Context, string Exchange, PartyInstruction Instruction, IReadOnlyDictionary<string, string> Files,
    CancellationToken Cancel);
internal sealed record RunEvaluation(string JobId, ClientContext Context, PartyInstruction Instruction, IReadOnlyDictionary<string, string> Files,
    CancellationToken Cancel);
internal sealed record FitDone(WorkId Id, ClientUpdate Update, double Seconds);
internal sealed record FitFailed(WorkId Id, string Reason);
internal sealed record EvaluationDone(string JobId, EvaluationResult Result);
internal sealed record EvaluationFailed(string JobId, string Reason);

/// <summary>Consecutive trainer failures → the delay before the restarted trainer takes the next request.</summary>
public sealed class RestartBackoff(TimeSpan min, TimeSpan max)
{
    int _failures;
    public TimeSpan Next() => TimeSpan.FromMilliseconds(Math.Min(max.TotalMilliseconds, min.TotalMilliseconds * Math.Pow(2, _failures++)));
    public void Reset() => _failures = 0;
}

/// <summary>
/// Runs one algorithm call at a time (a party's local fit or evaluation) on its own pinned thread. A failure is
/// reported to the requester, then rethrown so the party's supervisor restarts the trainer with fresh state; the
/// restarted trainer backs off (stashing requests, none lost) before it takes the next one. Phases: ready, backing off.
/// </summary>
public sealed class Trainer : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    readonly RestartBackoff _backoff;

    public IStash Stash { get; set; } = null!;
    public ITimerScheduler Timers { get; set; } = null!;

    readonly AlgorithmCatalog _algorithms;

    sealed record BackoffElapsed;

    public Trainer(RestartBackoff backoff, AlgorithmCatalog algorithms)
    {
        _backoff = backoff;
        _algorithms = algorithms;
        Ready();
    }

    protected override void PostRestart(Exception reason)
    {
        base.PostRestart(reason);
        Become(BackingOff);
        Timers.StartSingleTimer("backoff", new BackoffElapsed(), _backoff.Next());
    }

    void BackingOff()
    {
        Receive<BackoffElapsed>(_ =>
        {
            Stash.UnstashAll();
            Become(Ready);
        });
        ReceiveAny(_ => Stash.Stash());
    }

    void Ready()
    {
        Receive<RunFit>(r =>
        {
            try
            {
                r.Cancel.ThrowIfCancellationRequested();
                var sw = Stopwatch.StartNew();
                var update = _algorithms.For(r.Context.Spec).Client.Fit(r.Context, r.Exchange, r.Instruction, r.Files, r.Cancel);
                _backoff.Reset();
                Sender.Tell(new FitDone(r.Id, update, sw.Elapsed.TotalSeconds));
            }
            catch (OperationCanceledException)
            {
                Sender.Tell(new FitFailed(r.Id, "superseded or cancelled"));
            }
            catch (Exception e)
            {
                Sender.Tell(new FitFailed(r.Id, $"trainer failed: {TorchErrors.OneLine(e)}"));
                throw;
            }
        });
        Receive<RunEvaluation>(r =>
        {
            try
            {
                var result = _algorithms.For(r.Context.Spec).Client.Evaluate(r.Context, r.Instruction, r.Files, r.Cancel);
                Sender.Tell(new EvaluationDone(r.JobId, result));
            }
            catch (Exception e)
            {
                Sender.Tell(new EvaluationFailed(r.JobId, TorchErrors.OneLine(e)));
            }
        });
    }

    public static Props Props(RestartBackoff backoff, string dispatcher, AlgorithmCatalog algorithms) =>
        Akka.Actor.Props.Create(() => new Trainer(backoff, algorithms)).WithDispatcher(dispatcher);
}
