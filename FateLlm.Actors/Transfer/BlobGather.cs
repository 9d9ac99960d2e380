using Akka.Actor;
using Akka.Cluster;
using FateLlm.Training.IO;

namespace FateLlm.Actors.Transfer;

/// <summary>The gather's report to its parent (local only): every blob is now in the store, or which were found nowhere.</summary>
public sealed record BlobsGathered(string Correlation, IReadOnlyList<string> Pulled);

public sealed record BlobsMissing(string Correlation, IReadOnlyList<string> Missing, string Reason);

/// <summary>
/// Brings blobs this node lacks into its store from wherever in the cluster they still are: asks every member's blob
/// server (<see cref="LocateBlob"/>) again every retry interval, pulls each from the first holder with a
/// <see cref="BlobFetcher"/> (checked against its digest), tries the next holder if a pull fails, and reports once all are here or
/// the deadline passes. How an arbiter taking over a job, or running another arbiter's round, gets the state's artifacts
/// (the global adapter from the parties that downloaded it, or from the other arbiter).
/// </summary>
public sealed class BlobGather : ReceiveActor, IWithTimers
{
    readonly BlobStore _store;
    readonly TransferSettings _transfer;
    readonly string _correlation;
    readonly TimeSpan _retry, _deadline;
    readonly HashSet<string> _missing;
    readonly Dictionary<string, IActorRef> _pulling = new();
    readonly Dictionary<string, HashSet<IActorRef>> _failedFrom = new();
    readonly List<string> _pulled = new();
    readonly List<string> _failures = new();

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Ask;
    sealed record GiveUp;

    public BlobGather(BlobStore store, IEnumerable<string> digests, TransferSettings transfer, string correlation)
    {
        (_store, _transfer, _correlation, _retry, _deadline) = (store, transfer, correlation, transfer.GatherRetry, transfer.GatherDeadline);
        _missing = store.Lacking(digests).ToHashSet();
        Receive<Ask>(_ => Broadcast());
        Receive<BlobHeld>(h =>
        {
            if (!_missing.Contains(h.Digest) || _pulling.ContainsKey(h.Digest) || _failedFrom.GetValueOrDefault(h.Digest)?.Contains(Sender) == true) return;
            _pulling[h.Digest] = Sender;
            Context.ActorOf(BlobFetcher.Props(_store, new BlobLocation(h.Digest, h.Size, Sender), _transfer, correlation: h.Digest));
        });
        Receive<FetchCompleted>(f =>
        {
            _pulling.Remove(f.Digest);
            _missing.Remove(f.Digest);
            _pulled.Add(f.Digest);
            ReportIfDone();
        });
        Receive<FetchFailed>(f =>
        {
            if (_pulling.Remove(f.Digest, out var from)) (_failedFrom.TryGetValue(f.Digest, out var s) ? s : _failedFrom[f.Digest] = new()).Add(from);
            _failures.Add($"{f.Digest[..12]}… from {from?.Path.Address}: {f.Reason}");
        });
        Receive<GiveUp>(_ =>
        {
            Context.Parent.Tell(new BlobsMissing(_correlation, _missing.ToList(),
                $"no reachable member of the cluster holds {string.Join(", ", _missing.Select(d => d[..12] + "…"))} (asked every {_retry.TotalSeconds:G3} s for {_deadline.TotalSeconds:G3} s)" +
                (_failures.Count > 0 ? "; failed pulls: " + string.Join("; ", _failures) : "")));
            Context.Stop(Self);
        });
    }

    protected override void PreStart()
    {
        if (ReportIfDone()) return;
        Timers.StartPeriodicTimer("ask", new Ask(), _retry);
        Timers.StartSingleTimer("give-up", new GiveUp(), _deadline);
        Broadcast();
    }

    void Broadcast()
    {
        var cluster = Cluster.Get(Context.System);
        foreach (var m in cluster.State.Members.Where(m => m.Status == MemberStatus.Up && m.Address != cluster.SelfAddress && !cluster.State.Unreachable.Contains(m)))
            foreach (var d in _missing.Where(d => !_pulling.ContainsKey(d)))
                Context.ActorSelection(new RootActorPath(m.Address) / "user" / BlobServer.Name).Tell(new LocateBlob(d));
    }

    bool ReportIfDone()
    {
        if (_missing.Count > 0) return false;
        Context.Parent.Tell(new BlobsGathered(_correlation, _pulled));
        Context.Stop(Self);
        return true;
    }

    public static Props Props(BlobStore store, IEnumerable<string> digests, TransferSettings transfer, string correlation) =>
        Akka.Actor.Props.Create(() => new BlobGather(store, digests.ToList(), transfer, correlation));
}
