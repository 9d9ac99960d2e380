using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Serialization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// Wire versions at join between real cluster members in one process: a node of another major is refused (it says so
/// and leaves, the cluster says so), one of another minor stays; the job gateway forwards commands and lists members.
/// </summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public sealed class WireCompatibilitySpec() : TestKit(Member("seed", WireSchema.Version))
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);
    readonly List<string> _wronglyRefused = new();

    static Config Member(string role, WireVersion announced) => ConfigurationFactory.ParseString($$"""
        akka.actor.provider = cluster
        akka.loglevel = INFO
        akka.remote.dot-netty.tcp.hostname = 127.0.0.1
        akka.remote.dot-netty.tcp.port = 0
        akka.cluster.roles = ["{{role}}", "{{WireCompatibility.RoleOf(announced)}}"]
        akka.cluster.app-version = "{{FederationNode.ProductVersion}}"
        akka.cluster.gossip-interval = 250ms
        akka.cluster.leader-actions-interval = 250ms
        """).WithFallback(FederationNode.Reference());

    static WireCompatibility.Settings Settings(WireVersion announced) => new(announced, TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(2));

    ActorSystem Joining(string role, WireVersion announced, Action<string> refused)
    {
        var system = ActorSystem.Create(Sys.Name, Member(role, announced));
        system.ActorOf(WireCompatibility.Props(Settings(announced), refused), WireCompatibility.Name);
        Cluster.Get(system).Join(Cluster.Get(Sys).SelfAddress);
        return system;
    }

    MemberStatus? StatusOf(ActorSystem other) =>
        Cluster.Get(Sys).State.Members.FirstOrDefault(m => m.Address == Cluster.Get(other).SelfAddress)?.Status;

    [Fact]
    public async Task A_node_of_another_major_is_refused_at_join_and_one_of_another_minor_stays_and_is_listed()
    {
        var seed = Cluster.Get(Sys);
        Sys.ActorOf(WireCompatibility.Props(Settings(WireSchema.Version), _wronglyRefused.Add), WireCompatibility.Name);
        var refusedSeen = FederationFixture.Logged<Akka.Event.Warning>(Sys, $"this cluster speaks {WireSchema.Version}");
        seed.Join(seed.SelfAddress);
        AwaitAssert(() => Assert.Equal(MemberStatus.Up, seed.SelfMember.Status), Wait);

        var minor = new WireVersion(WireSchema.Version.Major, WireSchema.Version.Minor + 1);
        using var newer = Joining("party", minor, _wronglyRefused.Add);
        AwaitAssert(() => Assert.Equal(MemberStatus.Up, StatusOf(newer)), Wait);

        var refusal = new TaskCompletionSource<string>();
        var major = new WireVersion(WireSchema.Version.Major + 1, 0);
        using var incompatible = Joining("party", major, line => refusal.TrySetResult(line));
        Assert.Equal($"refused by the cluster: this node speaks wire protocol {major}, the cluster ({seed.SelfAddress}) speaks {WireSchema.Version}; this node leaves",
            await refusal.Task.WaitAsync(Wait));
        await refusedSeen.WaitAsync(Wait);
        AwaitAssert(() => Assert.Null(StatusOf(incompatible)), Wait); // it left (or was downed) and is gone
        Assert.Equal(MemberStatus.Up, StatusOf(newer));
        Assert.Empty(_wronglyRefused);

        // The gateway lists every member with the wire version it announced, and forwards job commands to the region.
        var region = CreateTestProbe();
        var gateway = Sys.ActorOf(JobGateway.Props(region.Ref, TimeSpan.FromSeconds(5)));
        gateway.Tell(new ListMembers());
        var members = ExpectMsg<MemberList>(Wait).Members;
        Assert.Contains(members, m => m.Wire == minor.ToString() && m.Roles.Contains("party"));
        Assert.Contains(members, m => m.Wire == WireSchema.Version.ToString() && m.Version == FederationNode.ProductVersion);
        gateway.Tell(new GetJobStatus("j"));
        region.ExpectMsg<GetJobStatus>(Wait);
        Assert.Equal(TestActor, region.LastSender);
        gateway.Tell(new ListJobs());
        Assert.Equal("no arbiter is up in the cluster", ExpectMsg<JobList>(Wait).Problem);
    }
}
