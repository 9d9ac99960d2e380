using System.Net.Sockets;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Akka.Serialization;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Serialization;
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

    static Config Remote(string extra = "") => ConfigurationFactory.ParseString($"""
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp.port = 0
        {extra}
        """).WithFallback(FederationNode.Reference());

    /// <summary>A payload forged under the wire serializer's identifier and a real manifest: what a hostile peer can send.</summary>
    sealed record Forged(string Manifest, byte[] Payload);

    sealed class Forger(ExtendedActorSystem system) : SerializerWithStringManifest(system)
    {
        public override int Identifier => WireSerializer.SerializerId;
        public override string Manifest(object o) => ((Forged)o).Manifest;
        public override byte[] ToBinary(object o) => ((Forged)o).Payload;
        public override object FromBinary(byte[] bytes, string manifest) => throw new NotSupportedException();
    }

    [Fact]
    public async Task A_hyperion_encoded_or_forged_message_from_a_peer_is_refused_and_logged_and_the_node_stays_up()
    {
        using var node = ActorSystem.Create("node", Remote());
        // The peer runs a build that still puts control messages on the wire as Hyperion, and a forger.
        using var peer = ActorSystem.Create("peer", Remote($$"""
            akka.actor.serializers.hyperion = "Akka.Serialization.HyperionSerializer, Akka.Serialization.Hyperion"
            akka.actor.serializers.forger = "{{typeof(Forger).AssemblyQualifiedName}}"
            akka.actor.serialization-bindings { "FateLlm.Actors.IControlMessage, FateLlm.Actors" = hyperion, "{{typeof(Forged).AssemblyQualifiedName}}" = forger }
            """));
        var received = new List<object>();
        var inbox = node.ActorOf(Props.Create(() => new Recorder(received)), "inbox");
        var address = ((ExtendedActorSystem)node).Provider.DefaultAddress;
        var target = peer.ActorSelection(new RootActorPath(address) / "user" / "inbox");

        var hyperion = FederationFixture.Logged<Akka.Event.LogEvent>(node, "serializer with id [-5]");
        target.Tell(new LocateBlob(new string('d', 64)));
        await hyperion.WaitAsync(TimeSpan.FromSeconds(30));
        var forged = FederationFixture.Logged<Akka.Event.LogEvent>(node, "wire message 'WorkAccepted.v1' refused");
        target.Tell(new Forged("WorkAccepted.v1", """{"Org":"o","Id":[[[[1]]]]}"""u8.ToArray()));
        await forged.WaitAsync(TimeSpan.FromSeconds(30));

        // The association is live: an Akka message still round-trips, and nothing forged was delivered.
        await AssertAnswers(peer, address);
        Assert.Empty(received);
        Assert.False(node.WhenTerminated.IsCompleted);
    }

    sealed class Recorder : ReceiveActor
    {
        public Recorder(List<object> received) => ReceiveAny(received.Add);
    }
}
