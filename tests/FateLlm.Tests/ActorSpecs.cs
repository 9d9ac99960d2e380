using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Nodes;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Tests;

/// <summary>Configuration and helpers shared by the TestKit specs of single actors (probes stand in for regions and peers).</summary>
internal static class ActorSpecs
{
    /// <summary>A local system with the product's reference settings, an in-memory journal and, when asked, virtual time.</summary>
    public static Config Config(bool virtualTime = false, string extra = "") => ConfigurationFactory.ParseString($$"""
        akka.actor.provider = local
        akka.loglevel = WARNING
        akka.persistence.journal.plugin = "akka.persistence.journal.inmem"
        akka.persistence.snapshot-store.plugin = "akka.persistence.snapshot-store.local"
        akka.persistence.snapshot-store.local.dir = "{{TestSupport.TempDir().Replace("\\", "/")}}"
        {{(virtualTime ? "akka.scheduler.implementation = \"Akka.TestKit.TestScheduler, Akka.TestKit\"" : "")}}
        {{extra}}
        """).WithFallback(FederationNode.Reference());

    /// <summary>The product's plug-ins and the specs' own (echo, response statistics), handed to every node and actor a spec starts.</summary>
    public static readonly AlgorithmCatalog Algorithms = AlgorithmCatalog.BuiltIn.With(new EchoAlgorithm()).With(new ResponseStatistics());

    public static readonly string[] Orgs = ["animal", "artifact", "food"];

    /// <summary>An echo job over three parties that needs no model, no data and no torch.</summary>
    public static JobSpec EchoJob(string id, int rounds = 2, int exchanges = 1, int quorum = 3, double deadlineSeconds = 10, int attempts = 2)
    {
        var spec = JobFile.Default(id, "-", Orgs.Select(o => new PartySpec(o, "train", "dev")).ToArray(), Path.Combine(TestSupport.TempDir(), "out"));
        return spec with
        {
            Algorithm = new AlgorithmSpec(EchoAlgorithm.AlgorithmName, new Dictionary<string, string> { ["exchanges"] = exchanges.ToString() }),
            Rounds = rounds,
            Round = spec.Round with { Quorum = quorum, DeadlineSeconds = deadlineSeconds, MaxAttempts = attempts },
        };
    }

    /// <summary>Membership a spec scripts: parties are present unless removed.</summary>
    public sealed class ScriptedPresence : IPartyPresence
    {
        public readonly HashSet<string> Absent = new();
        readonly List<Akka.Actor.IActorRef> _subscribers = new();
        public bool Present(string org) => !Absent.Contains(org);

        public Akka.Actor.Props? Watcher(Akka.Actor.IActorRef subscriber)
        {
            lock (_subscribers) _subscribers.Add(subscriber);
            return Akka.Actor.Props.Create(() => new Idle());
        }

        /// <summary>The organization's last node leaves: absent from now on, and every watcher's subscriber told.</summary>
        public void Leave(string org)
        {
            Absent.Add(org);
            lock (_subscribers) foreach (var s in _subscribers) s.Tell(new PartyNodeLeft(org), Akka.Actor.ActorRefs.NoSender);
        }

        sealed class Idle : Akka.Actor.ReceiveActor;
    }
}
