using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Sharding;
using Akka.Configuration;
using Akka.Persistence.Sql;
using FateLlm.Training.Trainer;
using FateLlm.Training.Algorithms;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Membership;
using FateLlm.Actors.Serialization;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Security;
using FateLlm.Actors.Services;
using FateLlm.Actors.Transfer;
using System.Runtime.CompilerServices;
using FateLlm.Training.IO;

namespace FateLlm.Actors.Nodes;

public enum NodeRole { Seed, Arbiter, Party, Client }

/// <summary>The cluster roles a node carries (besides <c>org-&lt;id&gt;</c> and service roles): one name per <see cref="NodeRole"/>.</summary>
public static class ClusterRoles
{
    public const string Seed = "seed", Arbiter = "arbiter", Party = "party", Client = "client";
    /// <summary>Seeds and arbiters: where command-line clients reach the jobs (the cluster-client receptionist's role).</summary>
    public const string Gateway = "gateway";

    public static string Of(NodeRole role) => role switch
    {
        NodeRole.Seed => Seed,
        NodeRole.Arbiter => Arbiter,
        NodeRole.Party => Party,
        NodeRole.Client => Client,
        _ => throw new ArgumentOutOfRangeException(nameof(role), role, null),
    };
}

/// <summary>How to start one node of the federation.</summary>
public sealed record NodeOptions
{
    public required NodeRole Role { get; init; }
    public string SystemName { get; init; } = "fate-llm";
    /// <summary>The address other nodes reach this node at (remoting and the blob stream advertise it).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>
    /// The address listened on, when it differs from <see cref="Host"/>: behind NAT or in a container, listen on
    /// 0.0.0.0 and advertise the public address (<c>--bind-host</c>). Null listens on <see cref="Host"/>.
    /// </summary>
    public string? BindHost { get; init; }
    public int Port { get; init; }
    public string[] Seeds { get; init; } = [];
    public string DataDir { get; init; } = "fate-llm-data";
    /// <summary>Organization id (party nodes): the node gets cluster role <c>org-&lt;id&gt;</c>.</summary>
    public string? Org { get; init; }
    public IReadOnlyDictionary<string, string> Datasets { get; init; } = new Dictionary<string, string>();
    /// <summary>Folders of evaluation task YAMLs a party's node resolves a job's <c>evaluation.tasks</c> in (<c>--task-path</c>).</summary>
    public IReadOnlyList<string> TaskFolders { get; init; } = [];
    /// <summary>Extra HOCON with the highest precedence (node config file, test timings).</summary>
    public Config? Overrides { get; init; }
    /// <summary>Mutual TLS with the federation CA (<c>--tls DIR</c>); null runs plain TCP.</summary>
    public NodeTls? Tls { get; init; }
    /// <summary>Models this node serves to other organizations (<c>--serve NAME=DIR</c>).</summary>
    public IReadOnlyList<ServedModelOptions> Services { get; init; } = [];

    /// <summary>
    /// A shared journal and snapshot store (<c>--journal postgres://USER:PASSWORD@HOST:PORT/DATABASE</c>) instead of the
    /// SQLite file in the data dir: arbiters sharing one take over each other's jobs.
    /// </summary>
    public string? Journal { get; init; }

    /// <summary>An arbiter node with a feed runs the live board (<see cref="Board.FederationBoard"/>) into it.</summary>
    public Board.BoardFeed? Board { get; init; }

    /// <summary>The plug-ins this node runs (every node of a federation must run the same).</summary>
    public AlgorithmCatalog Algorithms { get; init; } = AlgorithmCatalog.BuiltIn;

    /// <summary>The organization a node's services belong to: a party's own, else its certificate's, else <c>operator</c>.</summary>
    public string ServiceOrg => Org ?? Tls?.Organization ?? "operator";
}

/// <summary>A running node: its actor system, the regions or proxies its role needs, its blob store and server.</summary>
public sealed class FederationNode : IAsyncDisposable
{
    public ActorSystem System { get; }
    public NodeOptions Options { get; }
    public BlobStore Store { get; }
    public IActorRef BlobServer { get; }
    public IActorRef JobRegion { get; }
    public IActorRef RoundRegion { get; }
    public IActorRef PartyRegion { get; }
    public TransferSettings BlobTransfer { get; private init; } = TransferSettings.Default;
    /// <summary>Set when this node was refused: a party whose organization another node serves, or a wire the cluster cannot speak.</summary>
    public string? Refused => _refusal.Value;

    public const string JobRegionName = "job", RoundRegionName = "round", PartyRegionName = "party";

    readonly StrongBox<string?> _refusal;

    FederationNode(ActorSystem system, NodeOptions options, BlobStore store, IActorRef blobServer, IActorRef job, IActorRef round, IActorRef party,
        StrongBox<string?> refusal)
    {
        _refusal = refusal;
        System = system;
        Options = options;
        Store = store;
        BlobServer = blobServer;
        JobRegion = job;
        RoundRegion = round;
        PartyRegion = party;
    }

    public static Config Reference()
    {
        using var s = typeof(FederationNode).Assembly.GetManifestResourceStream("FateLlm.Actors.reference.conf")
            ?? throw new InvalidOperationException("embedded reference.conf missing");
        using var r = new StreamReader(s);
        // The cluster client's serializer bindings must be there when a system starts (job clients and the receptionists
        // of seeds and arbiters); an unbound type would otherwise meet the refusing fallback.
        return ConfigurationFactory.ParseString(r.ReadToEnd()).WithFallback(Akka.Cluster.Tools.Client.ClusterClientReceptionist.DefaultConfig())
            .WithFallback(Akka.Cluster.Tools.PublishSubscribe.DistributedPubSub.DefaultConfig());
    }

    public static Config BuildConfig(NodeOptions o)
    {
        var roles = new List<string> { ClusterRoles.Of(o.Role) };
        if (o.Role is NodeRole.Seed or NodeRole.Arbiter) roles.Add(ClusterRoles.Gateway);
        if (o.Role == NodeRole.Party)
        {
            if (string.IsNullOrWhiteSpace(o.Org)) throw new ArgumentException("a party node needs --org");
            roles.Add(PartyPlacement.RoleOf(o.Org));
        }
        var dataDir = Path.GetFullPath(o.DataDir);
        var (provider, journal) = o.Journal is { } url ? ("PostgreSQL.15", JournalLocation.PostgresConnectionString(url))
            : ("SQLite.MS", "Data Source=" + Path.Combine(dataDir, "journal.db").Replace("\\", "/"));
        roles.AddRange(o.Services.Select(sv => ModelService.RoleOf(o.ServiceOrg, sv.Name)));
        roles.Add(WireCompatibility.RoleOf(AnnouncedWire(o.Overrides?.WithFallback(Reference()) ?? Reference())));
        var seeds = string.Join(",", o.Seeds.Select(s => $"\"{s}\""));
        var logFile = Path.Combine(dataDir, "node.log").Replace('\\', '/');
        var node = ConfigurationFactory.ParseString($$"""
            akka.remote.dot-netty.tcp.hostname = "{{o.BindHost ?? o.Host}}"
            akka.remote.dot-netty.tcp.public-hostname = "{{o.Host}}"
            akka.remote.dot-netty.tcp.port = {{o.Port}}
            akka.cluster.roles = [{{string.Join(",", roles.Select(r => $"\"{r}\""))}}]
            akka.cluster.seed-nodes = [{{seeds}}]
            akka.cluster.app-version = "{{ProductVersion}}"
            fate-llm.data-dir = "{{dataDir.Replace("\\", "/")}}"
            akka.persistence.journal.sql.connection-string = "{{journal}}"
            akka.persistence.snapshot-store.sql.connection-string = "{{journal}}"
            akka.persistence.journal.sql.provider-name = "{{provider}}"
            akka.persistence.snapshot-store.sql.provider-name = "{{provider}}"
            akka.persistence.query.journal.sql.write-plugin = "akka.persistence.journal.sql"
            akka.persistence.query.journal.sql.connection-string = "{{journal}}"
            akka.persistence.query.journal.sql.provider-name = "{{provider}}"
            akka.loggers = ["FateLlm.Actors.Logging.NodeLog, FateLlm.Actors"]
            akka.stdout-loglevel = OFF
            fate-llm.logging.file = "{{logFile}}"
            """);
        var config = node;
        if (o.Tls != null) config = NodeTls.EnableSsl.WithFallback(config);
        if (o.Overrides != null) config = o.Overrides.WithFallback(config);
        return config.WithFallback(Reference()).WithFallback(SqlPersistence.DefaultConfiguration);
    }

    /// <summary>FateLlm's version (members show each other's as Akka's app-version).</summary>
    public static string ProductVersion { get; } =
        (typeof(FederationNode).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion ?? "0.0.0").Split('+')[0];

    /// <summary>The wire version this node announces: <c>fate-llm.wire.announce</c>, or the one it speaks.</summary>
    public static WireVersion AnnouncedWire(Config config) => config.GetString("fate-llm.wire.announce", "") is { Length: > 0 } text
        ? WireVersion.Parse(text) ?? throw new ArgumentException($"fate-llm.wire.announce = '{text}' is not a version like 1.0")
        : WireSchema.Version;

    /// <summary>A node refuses to start under an identity its own certificate does not back.</summary>
    public static void CheckOwnIdentity(NodeOptions o, Config config)
    {
        if (o.Tls is not { } tls) return;
        if (o.Role == NodeRole.Party && tls.Organization != o.Org)
            throw new TlsConfigurationException($"this node's certificate is for organization '{tls.Organization}'; it cannot run as party '{o.Org}'");
        if (o.Role is NodeRole.Arbiter or NodeRole.Seed && !Operators(config).Contains(tls.Organization))
            throw new TlsConfigurationException($"a {o.Role.ToString().ToLowerInvariant()} needs an operator certificate ({string.Join(", ", Operators(config))}); this one is for '{tls.Organization}'");
    }

    public static IReadOnlySet<string> Operators(Config config) => config.GetStringList("fate-llm.security.operator-organizations").ToHashSet();

    public static ActorSystem CreateSystem(NodeOptions o, Config config) => CreateSystem(o.SystemName, config, o.Tls);

    /// <summary>An actor system under <paramref name="tls"/>'s certificates when given (nodes and job clients alike).</summary>
    public static ActorSystem CreateSystem(string name, Config config, NodeTls? tls)
    {
        if (tls is null) return ActorSystem.Create(name, config);
        var system = ActorSystem.Create(name, BootstrapSetup.Create().WithConfig(config).And(tls.Setup()));
        PeerHandshakeGuard.Install(system);
        return system;
    }

    public static FederationNode Start(NodeOptions o)
    {
        var config = BuildConfig(o);
        CheckOwnIdentity(o, config);
        Directory.CreateDirectory(config.GetString("fate-llm.data-dir"));
        var system = CreateSystem(o, config);
        try
        {
            return Attach(system, o);
        }
        catch
        {
            system.Terminate().Wait(TimeSpan.FromSeconds(10));
            throw;
        }
    }

    /// <summary>Starts the node's actors in a system created elsewhere (Akka.Hosting) from <see cref="BuildConfig"/>.</summary>
    public static FederationNode Attach(ActorSystem system, NodeOptions o)
    {
        var config = system.Settings.Config;
        if (o.Tls is not null) PeerHandshakeGuard.Install(system);
        Directory.CreateDirectory(config.GetString("fate-llm.data-dir"));
        var store = new BlobStore(Path.Combine(config.GetString("fate-llm.data-dir"), "blobs"));
        var faults = FaultInjection.FromConfig(config);
        var transfer = new TransferSettings(
            (int)config.GetByteSize("fate-llm.transfer.chunk-size")!.Value,
            config.GetInt("fate-llm.transfer.window"),
            config.GetTimeSpan("fate-llm.transfer.chunk-timeout"),
            config.GetInt("fate-llm.transfer.max-attempts-per-chunk"))
        {
            ProgressMinBytes = config.GetByteSize("fate-llm.transfer.progress-min-size")!.Value,
            ProgressInterval = config.GetTimeSpan("fate-llm.transfer.progress-interval"),
            GatherRetry = config.GetTimeSpan("fate-llm.transfer.gather-retry"),
            GatherDeadline = config.GetTimeSpan("fate-llm.transfer.gather-deadline"),
            Stream = config.GetBoolean("fate-llm.transfer.stream"), StreamTls = o.Tls, Faults = faults,
        };
        // The data plane: bulk bytes on their own TCP stream (control stays on Akka.Remote); dropped chunks are a fault
        // injected into the chunk path, so a node injecting them streams nothing.
        var dropRate = config.GetDouble("fate-llm.transfer.drop-rate");
        BlobStreamServer? stream = null;
        if (transfer.Stream && dropRate == 0)
        {
            stream = new BlobStreamServer(store, o.Host, o.Tls, o.BindHost, config.GetInt("fate-llm.transfer.stream-port"));
            system.RegisterOnTermination(stream.Dispose);
        }
        if (o.Role != NodeRole.Client) system.ActorOf(MembershipAnnouncer.Props(), MembershipAnnouncer.Name);
        // Dropped chunks differ from node to node: seeded with the port this node is bound to (--port is 0 on most nodes).
        var boundPort = ((ExtendedActorSystem)system).Provider.DefaultAddress.Port ?? 0;
        var blobServer = system.ActorOf(Transfer.BlobServer.Props(store, dropRate, boundPort, transfer, stream), Transfer.BlobServer.Name);
        Func<Address, string?>? proven = null;
        if (o.Tls is { } tls)
        {
            system.ActorOf(OrganizationGuard.Props(tls, Operators(config)), OrganizationGuard.Name);
            proven = tls.Identities.OrganizationOf;
        }
        if (o.Role == NodeRole.Arbiter) system.ActorOf(Board.BoardRelay.Props(), Board.BoardRelay.Name);
        if (o.Board is { } feed && o.Role == NodeRole.Arbiter) system.ActorOf(Board.FederationBoard.Props(feed, config), Board.FederationBoard.Name);
        foreach (var sv in o.Services)
            system.ActorOf(ModelService.Props(ModelServiceSettings.FromConfig(config, sv, store, blobServer, o.Tls)), ModelService.ActorName(sv.Name));
        var sharding = ClusterSharding.Get(system);
        var modelsRoot = config.GetString("fate-llm.models-root");
        var presence = new ClusterPresence(system);
        var cluster = Akka.Cluster.Cluster.Get(system);
        var refused = new StrongBox<string?>();
        system.ActorOf(WireCompatibility.Props(new WireCompatibility.Settings(AnnouncedWire(config), config.GetTimeSpan("fate-llm.wire.settle"),
            config.GetTimeSpan("fate-llm.wire.refusal-grace")), reason => refused.Value = reason), WireCompatibility.Name);
        if (o.Role == NodeRole.Party)
            system.ActorOf(OrganizationUniqueness.Props(o.Org!, config.GetTimeSpan("fate-llm.party.duplicate-grace"), reason => refused.Value = reason),
                OrganizationUniqueness.Name);
        if (o.Role == NodeRole.Party)
        {
            ResidentModels.Shared.IdleRelease = config.GetTimeSpan("fate-llm.party.model-idle-release");
            // Nothing outlives the node: a test host starting many federations in one process frees each one's models.
            system.RegisterOnTermination(ResidentModels.Shared.ReleaseIdle);
        }
        var party = o.Role == NodeRole.Party
            ? sharding.Start(PartyRegionName,
                entityId => PartyActor.Props(entityId, new PartyNodeSettings(o.Org!, o.Datasets, store, blobServer, transfer,
                    config.GetString("fate-llm.training.dispatcher"), modelsRoot, Path.Combine(config.GetString("fate-llm.data-dir"), "work"))
                {
                    Faults = faults, Algorithms = o.Algorithms,
                    // A dataset that maps to a task YAML names that task; the built-in tasks are written once per node.
                    Tasks = new Training.Evaluation.Harness.TaskSources(o.Datasets, o.TaskFolders,
                        Path.Combine(config.GetString("fate-llm.data-dir"), "tasks"), config.GetString("fate-llm.harness.wordnet-dictionary")),
                    Slowdown = PartySlowdown(config),
                    TrainerBackoffMin = config.GetTimeSpan("fate-llm.party.trainer-backoff-min"),
                    TrainerBackoffMax = config.GetTimeSpan("fate-llm.party.trainer-backoff-max"),
                    IsArbiter = address => cluster.State.Members.Any(m => m.Address == address && m.HasRole(ClusterRoles.Arbiter)),
                    VerifyPlacement = org =>
                    {
                        // Private data never leaves its owner: refuse to run on a node without this organization's role.
                        if (!cluster.SelfMember.HasRole(PartyPlacement.RoleOf(org)))
                            throw new InvalidOperationException($"party '{org}' refused to start on {cluster.SelfAddress}: the node lacks role {PartyPlacement.RoleOf(org)}");
                    },
                }),
                ClusterShardingSettings.Create(system).WithRole(ClusterRoles.Party), new PartyMessageExtractor(), new PartyPlacement(system, proven),
                PoisonPill.Instance)
            : sharding.StartProxy(PartyRegionName, ClusterRoles.Party, new PartyMessageExtractor());
        // The party entity starts once its node is up rather than when a round first asks it: its shard's allocation and
        // start then stay out of round 1 (the ack is only awaited so that it does not end in dead letters).
        if (o.Role == NodeRole.Party)
            cluster.RegisterOnMemberUp(() => party.Ask<object>(new ShardRegion.StartEntity(o.Org!), TimeSpan.FromMinutes(1))
                .ContinueWith(_ => { }, TaskContinuationOptions.ExecuteSynchronously));
        var jobShards = config.GetInt("fate-llm.sharding.job-shards");
        var roundShards = config.GetInt("fate-llm.sharding.round-shards");
        IActorRef round, job;
        if (o.Role == NodeRole.Arbiter)
        {
            var roundSettings = new RoundSettings(store, party, blobServer, transfer, config.GetTimeSpan("fate-llm.round.resend-interval"))
            {
                Presence = presence, AbsentGrace = config.GetTimeSpan("fate-llm.round.absent-grace"), Linger = config.GetTimeSpan("fate-llm.round.linger"),
                ModelsRoot = modelsRoot, Faults = faults, Sharded = true, Algorithms = o.Algorithms,
            };
            round = sharding.Start(RoundRegionName, _ => AggregationRound.Props(roundSettings),
                ClusterShardingSettings.Create(system).WithRole(ClusterRoles.Arbiter), new RoundMessageExtractor(roundShards));
            var jobSettings = new JobSettings(store, blobServer, round, party, modelsRoot)
            {
                Presence = presence, WatchdogSlack = config.GetTimeSpan("fate-llm.job.watchdog-slack"), Faults = faults, Sharded = true, Transfer = transfer,
                Algorithms = o.Algorithms,
                PassivateAfter = config.GetTimeSpan("fate-llm.job.passivate-after"),
                WaitForParties = config.GetTimeSpan("fate-llm.job.wait-for-parties"), PresencePoll = config.GetTimeSpan("fate-llm.job.presence-poll"),
                StartResend = config.GetTimeSpan("fate-llm.job.start-resend"), RoundHostGrace = config.GetTimeSpan("fate-llm.job.round-host-grace"),
                Collection = roundSettings with { Sharded = false }, BufferRetry = config.GetTimeSpan("fate-llm.job.buffered-retry"),
            };
            job = sharding.Start(JobRegionName, id => JobActor.Props(id, jobSettings),
                JobRegionSettings(system).WithRole(ClusterRoles.Arbiter).WithRememberEntities(true), new JobMessageExtractor(jobShards));
            system.ActorOf(JobDirectory.Props(), JobDirectory.Name);
        }
        else
        {
            round = sharding.StartProxy(RoundRegionName, ClusterRoles.Arbiter, new RoundMessageExtractor(roundShards));
            job = sharding.StartProxy(JobRegionName, ClusterRoles.Arbiter, new JobMessageExtractor(jobShards));
        }
        if (o.Role is NodeRole.Seed or NodeRole.Arbiter)
            Akka.Cluster.Tools.Client.ClusterClientReceptionist.Get(system).RegisterService(
                system.ActorOf(JobGateway.Props(job, config.GetTimeSpan("fate-llm.client.list-timeout")), JobGateway.Name));
        return new FederationNode(system, o, store, blobServer, job, round, party, refused) { BlobTransfer = transfer };
    }

    /// <summary><c>fate-llm.party.slowdown</c>, refused unless a number ≥ 1.</summary>
    static double PartySlowdown(Config config)
    {
        var text = config.GetString("fate-llm.party.slowdown");
        return double.TryParse(text, global::System.Globalization.NumberStyles.Float, global::System.Globalization.CultureInfo.InvariantCulture, out var f) && f >= 1 && double.IsFinite(f) ? f
            : throw new ConfigurationException($"fate-llm.party.slowdown = '{text}' must be a number ≥ 1 (how many times slower this party trains)");
    }

    /// <summary>
    /// akka.cluster.sharding with <c>fate-llm.sharding.job-region</c> over it: a job shard loads its remembered jobs from
    /// the journal within these timeouts, and the 1 s the party region's coordinator writes get is too short for that.
    /// </summary>
    static ClusterShardingSettings JobRegionSettings(ActorSystem system)
    {
        var config = system.Settings.Config;
        var sharding = config.GetConfig("fate-llm.sharding.job-region").WithFallback(config.GetConfig("akka.cluster.sharding"));
        return ClusterShardingSettings.Create(sharding, config.GetConfig(sharding.GetString("coordinator-singleton")));
    }

    /// <summary>Completes when this node is Up in the cluster.</summary>
    public Task WhenUp(TimeSpan timeout)
    {
        var tcs = new TaskCompletionSource();
        Akka.Cluster.Cluster.Get(System).RegisterOnMemberUp(() => tcs.TrySetResult());
        return tcs.Task.WaitAsync(timeout);
    }

    /// <summary>Leaves the cluster gracefully (CoordinatedShutdown) and terminates the actor system.</summary>
    public async ValueTask DisposeAsync()
    {
        if (System.WhenTerminated.IsCompleted) return;
        await CoordinatedShutdown.Get(System).Run(CoordinatedShutdown.ClrExitReason.Instance);
    }
}

public sealed class JobMessageExtractor(int shards) : HashCodeMessageExtractor(shards)
{
    public override string? EntityId(object message) => (message as IJobCommand)?.JobId;
}

public sealed class RoundMessageExtractor(int shards) : HashCodeMessageExtractor(shards)
{
    public override string? EntityId(object message) => (message as IRoundCommand)?.RoundId;
}
