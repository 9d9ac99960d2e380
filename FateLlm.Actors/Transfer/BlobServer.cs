using Akka.Actor;
using Akka.Event;
using FateLlm.Training.IO;

namespace FateLlm.Actors.Transfer;

/// <summary>
/// Serves chunks of the node's content-addressed blobs. Stateless per request, so a lost chunk is simply asked for
/// again; each chunk is read off the actor thread and piped to the requester. <paramref name="dropRate"/> &gt; 0 drops
/// that fraction of replies (fault injection in tests and demos).
/// </summary>
public sealed class BlobServer : ReceiveActor
{
    public const string Name = "blobs";

    public BlobServer(BlobStore store, double dropRate = 0, int seed = 0, TransferSettings? transfer = null, BlobStreamServer? stream = null)
    {
        Receive<OpenStream>(o =>
        {
            if (stream is null) Sender.Tell(new StreamRefused(o.Digest, "this node streams no blobs"));
            else if (!store.Has(o.Digest)) Sender.Tell(new BlobNotFound(o.Digest));
            else Sender.Tell(stream.Offer(o.Digest));
        });
        var random = new Random(seed);
        var log = Context.GetLogger();
        var pulling = new HashSet<string>();
        Receive<ReplicateBlob>(r =>
        {
            // Only an arbiter keeps copies, and only of what another arbiter offers (else any member could fill its disk).
            var cluster = Akka.Cluster.Cluster.Get(Context.System);
            var fromArbiter = cluster.State.Members.Any(m => m.Address == Sender.Path.Address && m.HasRole(Nodes.ClusterRoles.Arbiter));
            if (!cluster.SelfMember.HasRole(Nodes.ClusterRoles.Arbiter) || !fromArbiter)
            {
                log.Warning("refused to replicate blob {0}… for {1}: only arbiters replicate job state among themselves", r.Source.Digest[..12], Sender.Path.Address);
                return;
            }
            if (store.Has(r.Source.Digest) || !pulling.Add(r.Source.Digest)) return;
            Context.ActorOf(BlobFetcher.Props(store, r.Source, transfer ?? TransferSettings.Default, correlation: r.Source.Digest));
        });
        Receive<FetchCompleted>(f => pulling.Remove(f.Digest));
        Receive<FetchFailed>(f =>
        {
            pulling.Remove(f.Digest);
            log.Warning("could not replicate blob {0}…: {1}", f.Digest[..12], f.Reason);
        });
        Receive<LocateBlob>(l =>
        {
            if (store.Has(l.Digest)) Sender.Tell(new BlobHeld(l.Digest, store.Size(l.Digest)));
        });
        Receive<FetchChunk>(req =>
        {
            if (!store.Has(req.Digest))
            {
                Sender.Tell(new BlobNotFound(req.Digest));
                return;
            }
            if (dropRate > 0 && random.NextDouble() < dropRate) return; // injected loss
            if (req.Index < 0 || req.ChunkSize <= 0)
            {
                log.Warning("chunk {0} of {1} requested with size {2}: out of range", req.Index, req.Digest, req.ChunkSize);
                return;
            }
            Task.Run(() => Read(store, req)).PipeTo(Sender, failure: e => new BlobNotFound(req.Digest));
        });
    }

    /// <summary>The chunk, or <see cref="BlobNotFound"/> for an offset past the end (the fetcher then fails clearly).</summary>
    static object Read(BlobStore store, FetchChunk req)
    {
        using var s = File.OpenRead(store.PathOf(req.Digest));
        var offset = (long)req.Index * req.ChunkSize;
        if (offset >= s.Length && s.Length > 0) return new BlobNotFound(req.Digest);
        var data = new byte[Math.Min(req.ChunkSize, s.Length - offset)];
        s.Seek(offset, SeekOrigin.Begin);
        s.ReadExactly(data);
        return new ChunkData(req.Digest, req.Index, s.Length, data);
    }

    public static Props Props(BlobStore store, double dropRate = 0, int seed = 0, TransferSettings? transfer = null, BlobStreamServer? stream = null) =>
        Akka.Actor.Props.Create(() => new BlobServer(store, dropRate, seed, transfer, stream));
}
