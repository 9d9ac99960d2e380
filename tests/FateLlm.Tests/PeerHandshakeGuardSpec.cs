using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Security;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// A node under TLS whose outbound handshake fails because the peer closed the connection (a node shutting down, a
/// process killed) keeps running, and still shuts down when asked afterwards. Akka.Remote alone shut it down: a refused
/// node leaving stopped the seed, the arbiter and the job client of a process spec.
/// </summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public sealed class PeerHandshakeGuardSpec : Akka.TestKit.Xunit2.TestKit
{
    [Fact]
    public async Task A_peer_closing_mid_handshake_does_not_shut_the_node_down_and_a_later_shutdown_still_runs()
    {
        // A peer that accepts every connection and closes it before answering the handshake, as a node does while it stops.
        using var peer = new TcpListener(IPAddress.Loopback, 0);
        peer.Start();
        using var stop = new CancellationTokenSource();
        var closing = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
                try { (await peer.AcceptTcpClientAsync(stop.Token)).Dispose(); }
                catch (OperationCanceledException) { return; }
        });
        var (node, _, _) = TestSupport.Certificates();
        // A job client: it dials the "seed" at once (and again every few seconds) for its receptionist.
        var connection = JobConnection.Open([$"akka.ssl.tcp://fate-llm@127.0.0.1:{((IPEndPoint)peer.LocalEndpoint).Port}"], "127.0.0.1", node);
        try
        {
            var system = connection.System;
            var events = CreateTestProbe(system);
            system.EventStream.Subscribe(events.Ref, typeof(PeerHandshakeGuard.ShutdownAborted));
            // Twice: the guard is re-armed after each aborted shutdown.
            for (var i = 0; i < 2; i++)
                Assert.Contains("TLS handshake failed on outbound connection", events.ExpectMsg<PeerHandshakeGuard.ShutdownAborted>(TimeSpan.FromSeconds(30)).Reason);
            Assert.False(system.WhenTerminated.IsCompleted, "the node shut down for its peer's closed handshake");
            Assert.Null(CoordinatedShutdown.Get(system).ShutdownReason);

            stop.Cancel();
            await CoordinatedShutdown.Get(system).Run(CoordinatedShutdown.ClusterLeavingReason.Instance);
            await system.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(20)); // throws if the shutdown asked after the aborted ones did not run
            Assert.Equal(CoordinatedShutdown.ClusterLeavingReason.Instance, CoordinatedShutdown.Get(system).ShutdownReason);
        }
        finally
        {
            stop.Cancel();
            await connection.DisposeAsync();
            await closing;
        }
    }
}
