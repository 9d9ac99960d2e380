using System.Net.Sockets;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Transfer;
using Xunit;

namespace FateLlm.Tests;

/// <summary>What an attacker can send to a node's remoting port or through the cluster does not take the node down.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class HardeningSpec
{
    static async Task AssertAnswers(ActorSystem from, Address node)
    {
        var identity = await from.ActorSelection(new RootActorPath(node) / "system").Ask<ActorIdentity>(new Identify("ping"), TimeSpan.FromSeconds(10));
        Assert.Equal("ping", identity.MessageId);
    }

    [Fact]
    public async Task Random_bytes_and_a_giant_frame_header_on_the_remoting_port_do_not_crash_the_node()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g with { Datasets = [] });
        var seed = Cluster.Get(fed.Seed.System).SelfAddress;
        var rng = new Random(7);
        for (int i = 0; i < 5; i++)
        {
            using var tcp = new TcpClient();
            await tcp.ConnectAsync(seed.Host!, seed.Port!.Value);
            var stream = tcp.GetStream();
            var garbage = new byte[64 * 1024];
            rng.NextBytes(garbage);
            if (i == 0) garbage[0] = garbage[1] = garbage[2] = garbage[3] = 0x7F; // a frame claiming ~2 GiB
            try { await stream.WriteAsync(garbage); await stream.FlushAsync(); }
            catch (IOException) { } // the node may hang up first: that is the point
            await Task.Delay(200);
        }
        Assert.False(fed.Seed.System.WhenTerminated.IsCompleted);
        await AssertAnswers(fed.Arbiter.System, seed);
        Assert.All(Cluster.Get(fed.Seed.System).State.Members, m => Assert.Equal(MemberStatus.Up, m.Status));
    }

    [Fact]
    public async Task An_oversized_message_is_dropped_and_the_link_keeps_working()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g with { Datasets = [] });
        var arbiter = Cluster.Get(fed.Arbiter.System).SelfAddress;
        var blobs = fed.Client.System.ActorSelection(new RootActorPath(arbiter) / "user" / BlobServer.Name);
        // 3 MiB in one message, over the 2 MiB frame limit: the sender's remoting discards it and says so.
        var discarded = FederationFixture.Logged<Akka.Event.LogEvent>(fed.Client.System, "oversized payload");
        blobs.Tell(new ChunkData(new string('0', 64), 0, 3 << 20, new byte[3 << 20]));
        await discarded.WaitAsync(TimeSpan.FromSeconds(30));
        await AssertAnswers(fed.Client.System, arbiter);
        Assert.False(fed.Arbiter.System.WhenTerminated.IsCompleted);
        Assert.Equal(MemberStatus.Up, Cluster.Get(fed.Arbiter.System).SelfMember.Status);
    }

    [Fact]
    public void Hyperion_refuses_to_materialise_types_that_can_run_code()
    {
        using var system = ActorSystem.Create("unsafe", ConfigurationFactory.ParseString("akka.actor.provider = local").WithFallback(FederationNode.Reference()));
        var hyperion = system.Serialization.FindSerializerForType(typeof(Actors.Jobs.JobStatus));
        // A permissive Hyperion writes a payload an attacker could send; ours must refuse to read it back.
        var permissive = new Akka.Serialization.HyperionSerializer((ExtendedActorSystem)system,
            ConfigurationFactory.ParseString("disallow-unsafe-type = false"));
        var payload = permissive.ToBinary(new System.Diagnostics.ProcessStartInfo("sh", "-c true"));
        var e = Assert.ThrowsAny<Exception>(() => hyperion.FromBinary(payload, typeof(object)));
        Assert.Contains("unsafe", e.ToString(), StringComparison.OrdinalIgnoreCase);
    }
}
