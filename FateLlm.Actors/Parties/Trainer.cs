using Akka.Actor;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Parties;

public sealed record WorkKey(string JobId, int Round, int Attempt)
{
    public override string ToString() => $"{JobId}/{Round}/{Attempt}";
}

internal sealed record RunLocalRound(WorkKey Key, FederatedTask Task, string GlobalPath, string TrainData, string? EvalData, CancellationToken Cancel);
internal sealed record RunEvaluation(string JobId, FederatedTask Task, string AdapterPath, string Data, int Limit, int MaxNewTokens);
internal sealed record LocalRoundDone(WorkKey Key, LocalRoundResult Result);
internal sealed record LocalRoundFailed(WorkKey Key, string Reason);
internal sealed record EvaluationDone(string JobId, EvaluationResult Result);
internal sealed record EvaluationFailed(string JobId, string Reason);

/// <summary>Consecutive trainer failures → the delay before the restarted trainer takes the next message.</summary>
public sealed class RestartBackoff(TimeSpan min, TimeSpan max)
{
    int _failures;
    public TimeSpan Next() => TimeSpan.FromMilliseconds(Math.Min(max.TotalMilliseconds, min.TotalMilliseconds * Math.Pow(2, _failures++)));
    public void Reset() => _failures = 0;
}

/// <summary>
/// Wraps one TorchSharp run at a time on a pinned thread. A failure is reported to the party, then rethrown so the
/// party's supervisor restarts the trainer with fresh state. A plain restart keeps the mailbox (the next request is
/// not lost, unlike with a stopped-and-recreated child); the backoff is served by the new instance on its own thread.
/// </summary>
public sealed class Trainer : ReceiveActor
{
    readonly RestartBackoff _backoff;

    protected override void PostRestart(Exception reason)
    {
        Thread.Sleep(_backoff.Next());
        base.PostRestart(reason);
    }

    public Trainer(string org, RestartBackoff backoff)
    {
        _backoff = backoff;
        Receive<RunLocalRound>(r =>
        {
            try
            {
                r.Cancel.ThrowIfCancellationRequested();
                FederatedComputation.VerifyModel(r.Task, $"party '{org}'");
                var result = FederatedComputation.LocalRound(r.Task, File.ReadAllBytes(r.GlobalPath), r.TrainData, r.EvalData, r.Key.Round, r.Cancel);
                _backoff.Reset();
                Sender.Tell(new LocalRoundDone(r.Key, result));
            }
            catch (OperationCanceledException)
            {
                Sender.Tell(new LocalRoundFailed(r.Key, "superseded or cancelled"));
            }
            catch (Exception e)
            {
                Sender.Tell(new LocalRoundFailed(r.Key, $"trainer failed: {e.Message}"));
                throw;
            }
        });
        Receive<RunEvaluation>(r =>
        {
            try
            {
                var result = FederatedComputation.Evaluate(r.Task, File.ReadAllBytes(r.AdapterPath), r.Data, r.Limit,
                    new SamplingOptions { MaxNewTokens = r.MaxNewTokens });
                Sender.Tell(new EvaluationDone(r.JobId, result));
            }
            catch (Exception e)
            {
                Sender.Tell(new EvaluationFailed(r.JobId, e.Message));
            }
        });
    }
}
