using Akka.Actor;
using Akka.Cluster.Sharding;

namespace FateLlm.Actors;

/// <summary>How an entity that is done goes away: through its shard when sharded (so no message is lost meanwhile), else by stopping.</summary>
internal static class Entity
{
    public static void Passivate(IActorContext context, bool sharded)
    {
        if (sharded) context.Parent.Tell(new Passivate(PoisonPill.Instance));
        else context.Stop(context.Self);
    }
}
