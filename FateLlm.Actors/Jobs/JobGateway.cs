using Akka.Actor;
using Akka.Cluster;

namespace FateLlm.Actors.Jobs;

/// <summary>Asks a job gateway for the cluster's members as it sees them (versions and wire protocols included).</summary>
public sealed record ListMembers : IControlMessage;

public sealed record MemberList(Board.MemberView[] Members) : IControlMessage;

/// <summary>
/// Where command-line clients reach the jobs without joining the cluster: registered with the cluster-client
/// receptionist on seed and arbiter nodes, it forwards job commands to the job region (the job's answer goes straight
/// back through the receptionist), answers <see cref="ListJobs"/> with the union of every arbiter's journal and
/// <see cref="ListMembers"/> with the members it sees.
/// </summary>
public sealed class JobGateway : ReceiveActor
{
    public const string Name = "job-gateway";
    public static readonly string Path = "/user/" + Name;

    public JobGateway(IActorRef jobRegion, TimeSpan listTimeout)
    {
        Receive<IJobCommand>(c => jobRegion.Forward(c));
        // Off the actor: commands keep flowing while the arbiters answer.
        Receive<ListJobs>(request => List(Context.System, request, listTimeout).PipeTo(Sender));
        Receive<ListMembers>(_ =>
        {
            var state = Cluster.Get(Context.System).State;
            Sender.Tell(new MemberList([.. state.Members.Select(m => Board.FederationBoard.View(m, !state.Unreachable.Contains(m)))]));
        });
    }

    static async Task<JobList> List(ActorSystem system, ListJobs request, TimeSpan timeout)
    {
        var arbiters = Cluster.Get(system).State.Members.Where(m => m.Status == MemberStatus.Up && m.HasRole(Nodes.ClusterRoles.Arbiter)).ToList();
        if (arbiters.Count == 0) return new JobList([], "no arbiter is up in the cluster");
        // With a shared journal every arbiter answers the same; with one journal each, the union is every job.
        var answers = await Task.WhenAll(arbiters.Select(async a =>
        {
            try { return await system.ActorSelection(new RootActorPath(a.Address) / "user" / JobDirectory.Name).Ask<JobList>(request, timeout); }
            catch (AskTimeoutException) { return new JobList([], $"no answer within {timeout.TotalSeconds:F0}s"); }
        }));
        var problems = arbiters.Zip(answers).Where(x => x.Item2.Problem is not null).Select(x => $"arbiter {x.Item1.Address}: {x.Item2.Problem}").ToList();
        return new JobList([.. answers.SelectMany(l => l.JobIds).Distinct().Order(StringComparer.Ordinal)], problems.Count == 0 ? null : string.Join("; ", problems));
    }

    public static Props Props(IActorRef jobRegion, TimeSpan listTimeout) => Akka.Actor.Props.Create(() => new JobGateway(jobRegion, listTimeout));
}
