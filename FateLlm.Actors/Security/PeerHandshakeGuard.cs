using System.Reflection;
using System.Runtime.CompilerServices;
using Akka;
using Akka.Actor;
using Akka.Event;

namespace FateLlm.Actors.Security;

/// <summary>
/// Keeps a node running when one of its outbound TLS handshakes fails. Akka.Remote (1.5.51 and later) runs
/// CoordinatedShutdown on any client-side handshake failure, meant for a node whose own certificate is broken; but a
/// peer that closes the connection mid-handshake, because it is shutting down itself or was killed, fails the
/// handshake too. In a TLS federation a party refused at join (or one leaving) then stopped the seed, the arbiter and
/// the job clients that were reconnecting to it. Here such a shutdown is aborted in its first phase
/// (<c>akka.coordinated-shutdown.phases.fate-llm-peer-handshake</c>, recover off) and re-armed for the next one. The
/// failed association is retried like any other; a node that truly cannot reach its peers is unreachable to them and
/// downed by the split-brain resolver, which shuts it down as usual.
/// </summary>
public static class PeerHandshakeGuard
{
    public const string Phase = "fate-llm-peer-handshake";
    const string AkkaReason = "Akka.Remote.Transport.DotNetty.TlsHandshakeFailureReason";

    static readonly ConditionalWeakTable<ActorSystem, object> Installed = new();
    static readonly FieldInfo? RunStarted = typeof(CoordinatedShutdown).GetField("_runStarted", BindingFlags.Instance | BindingFlags.NonPublic);
    static readonly FieldInfo? RunPromise = typeof(CoordinatedShutdown).GetField("_runPromise", BindingFlags.Instance | BindingFlags.NonPublic);

    /// <summary>Published on the system's event stream each time a shutdown for a failed handshake was aborted.</summary>
    public sealed record ShutdownAborted(string Reason);

    /// <summary>Installs the guard once per system; without the phase in the configuration it does nothing.</summary>
    public static void Install(ActorSystem system)
    {
        if (!system.Settings.Config.HasPath($"akka.coordinated-shutdown.phases.{Phase}") || RunStarted is null || RunPromise is null) return;
        lock (Installed)
        {
            if (Installed.TryGetValue(system, out _)) return;
            Installed.Add(system, new object());
        }
        var shutdown = CoordinatedShutdown.Get(system);
        var log = Akka.Event.Logging.GetLogger(system, typeof(PeerHandshakeGuard));
        shutdown.AddTask(Phase, "keep-running-after-a-peer-handshake-failure", () =>
        {
            var reason = shutdown.ShutdownReason;
            if (reason?.GetType().FullName != AkkaReason) return Task.FromResult(Done.Instance);
            var text = reason.ToString() ?? AkkaReason;
            log.Warning("not shutting down for a failed TLS handshake with a peer ({0}): the association is retried; a node its peers cannot reach is downed by the split-brain resolver", text);
            // The aborted run faults its promise; a fresh promise and no reason let the next shutdown (a leave, a downing) run.
            var promise = (TaskCompletionSource<Done>)RunPromise.GetValue(shutdown)!;
            promise.Task.ContinueWith(_ =>
            {
                RunPromise.SetValue(shutdown, new TaskCompletionSource<Done>());
                ((Akka.Util.AtomicReference<CoordinatedShutdown.Reason>)RunStarted.GetValue(shutdown)!).Value = null!;
                system.EventStream.Publish(new ShutdownAborted(text));
            }, TaskContinuationOptions.ExecuteSynchronously);
            return Task.FromException<Done>(new OperationCanceledException($"shutdown for a failed TLS handshake aborted ({text})"));
        });
    }
}
