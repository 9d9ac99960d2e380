using FateLlm.Training.Federation;

namespace FateLlm.Actors.Jobs;

/// <summary>How a client reaches a job: a command re-sent until answered, so a message lost on the way (a shard still
/// starting, an arbiter that just left) costs a resend, not the job.</summary>
public static class JobClient
{
    /// <summary>Submits <paramref name="spec"/> under one submission id, re-sent every <paramref name="every"/> until answered
    /// (<see cref="JobAccepted"/> or <see cref="JobRejected"/>) or until <paramref name="total"/> has passed.</summary>
    public static Task<object> SubmitAsync(Akka.Actor.IActorRef jobRegion, JobSpec spec, TimeSpan every, TimeSpan total) =>
        AskResendingAsync(jobRegion, new SubmitJob(spec.JobId, spec) { Submission = Guid.NewGuid().ToString("N") }, every, total);

    /// <summary>Asks again every <paramref name="every"/> until an answer comes or <paramref name="total"/> has passed
    /// (then the last ask's <see cref="Akka.Actor.AskTimeoutException"/>).</summary>
    public static async Task<object> AskResendingAsync(Akka.Actor.IActorRef jobRegion, IJobCommand command, TimeSpan every, TimeSpan total)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var left = total - clock.Elapsed;
            try { return await Akka.Actor.Futures.Ask<object>(jobRegion, command, left < every ? left > TimeSpan.Zero ? left : TimeSpan.FromMilliseconds(1) : every); }
            catch (Akka.Actor.AskTimeoutException) when (clock.Elapsed < total) { }
        }
    }
}
