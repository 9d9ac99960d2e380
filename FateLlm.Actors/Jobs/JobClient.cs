using System.Collections.Immutable;
using Akka.Actor;
using Akka.Cluster.Tools.Client;
using Akka.Configuration;
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
    public static async Task<object> AskResendingAsync(Akka.Actor.IActorRef jobRegion, object command, TimeSpan every, TimeSpan total)
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

/// <summary>
/// A command-line client's link to the jobs without joining the cluster: an actor system of its own (remoting only, under
/// the same TLS) whose cluster client reaches the <see cref="JobGateway"/> of a seed or arbiter through the seeds'
/// receptionists. <see cref="Jobs"/> takes job commands and <see cref="ListJobs"/>; answers come back to the asker.
/// No membership change, no gossip: a monitoring script polling <c>job status</c> leaves the federation's logs alone.
/// </summary>
public sealed class JobConnection : IAsyncDisposable
{
    const string SystemName = "fate-llm-client";
    public ActorSystem System { get; }
    public IActorRef Jobs { get; }

    JobConnection(ActorSystem system, IActorRef jobs) => (System, Jobs) = (system, jobs);

    /// <param name="host">This machine's address as the seeds reach it (answers come back over it).</param>
    public static JobConnection Open(string[] seeds, string host, Security.NodeTls? tls, Config? overrides = null)
    {
        var config = ConfigurationFactory.ParseString($$"""
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp.hostname = "{{host}}"
            akka.remote.dot-netty.tcp.port = 0
            """);
        if (tls is not null) config = Security.NodeTls.EnableSsl.WithFallback(config);
        if (overrides is not null) config = overrides.WithFallback(config);
        config = config.WithFallback(Nodes.FederationNode.Reference());
        var system = Nodes.FederationNode.CreateSystem(SystemName, config, tls);
        var contacts = seeds.Select(s => ActorPath.Parse(s.TrimEnd('/') + "/system/receptionist")).ToImmutableHashSet();
        var client = system.ActorOf(ClusterClient.Props(
            ClusterClientSettings.Create(system).WithInitialContacts(contacts)), "cluster-client");
        return new JobConnection(system, system.ActorOf(Props.Create(() => new ToGateway(client)), "jobs"));
    }

    /// <summary>
    /// Asks through the gateway, re-sending every <c>fate-llm.client.resend-interval</c> until answered or
    /// <paramref name="total"/> has passed: the answer travels on a connection the gateway's node opens back to this
    /// client, and one lost while it opens (a busy machine) costs a resend. Every command here is safe to repeat.
    /// </summary>
    /// <param name="every">Overrides the resend interval, for a command whose answer takes longer (a listing waits for every arbiter).</param>
    public async Task<T> AskAsync<T>(object command, TimeSpan total, TimeSpan? every = null) =>
        (T)await JobClient.AskResendingAsync(Jobs, command, every ?? ResendInterval, total);

    public TimeSpan ResendInterval => System.Settings.Config.GetTimeSpan("fate-llm.client.resend-interval");

    /// <summary>Wraps each command for the gateway; the asker stays the sender, so the answer comes back to it.</summary>
    sealed class ToGateway : ReceiveActor
    {
        public ToGateway(IActorRef client) =>
            ReceiveAny(m => client.Forward(new ClusterClient.Send(JobGateway.Path, m, localAffinity: true)));
    }

    public async ValueTask DisposeAsync() => await System.Terminate();
}
