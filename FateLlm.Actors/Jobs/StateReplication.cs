using Akka.Actor;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Transfer;
using FateLlm.Training.IO;

namespace FateLlm.Actors.Jobs;

/// <summary>
/// Offers the blobs a job's next step starts from to every other arbiter, which pulls what it lacks: the journal may be
/// shared (a PostgreSQL fail-over), and the arbiter taking the job over then finds even what only an arbiter holds (the
/// server state). An arbiter that joins mid-round gets them when the next round starts. A child of the job; outside a
/// cluster (specs) it offers to nobody.
/// </summary>
public sealed class StateReplication : ReceiveActor
{
    /// <summary>The digests to offer; those this arbiter does not hold are skipped.</summary>
    public sealed record Offer(IReadOnlyCollection<string> Digests);

    public StateReplication(BlobStore store, IActorRef blobServer)
    {
        Receive<Offer>(o =>
        {
            if (((ExtendedActorSystem)Context.System).Provider is not Akka.Cluster.ClusterActorRefProvider) return;
            var cluster = Akka.Cluster.Cluster.Get(Context.System);
            var others = cluster.State.Members
                .Where(m => m.HasRole(ClusterRoles.Arbiter) && m.Status == Akka.Cluster.MemberStatus.Up && m.Address != cluster.SelfAddress).ToList();
            if (others.Count == 0) return;
            foreach (var digest in o.Digests.Distinct().Where(store.Has))
            {
                var offer = new ReplicateBlob(new BlobLocation(digest, store.Size(digest), blobServer));
                foreach (var m in others) Context.ActorSelection(new RootActorPath(m.Address) / "user" / BlobServer.Name).Tell(offer);
            }
        });
    }

    public static Props Props(BlobStore store, IActorRef blobServer) => Akka.Actor.Props.Create(() => new StateReplication(store, blobServer));
}
