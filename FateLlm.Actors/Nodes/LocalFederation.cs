using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Configuration;
using FateLlm.Training.Algorithms;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Security;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Nodes;

/// <summary>
/// A whole federation in one process — seed, arbiter and parties as separate actor systems on 127.0.0.1 — for the
/// demo and the fault specs. Nodes can be crashed (terminated without leaving, as kill -9 looks to the others) and
/// restarted on their old data directory.
/// </summary>
public sealed class LocalFederation : IAsyncDisposable
{
    public string Root { get; }
    /// <summary>The plug-ins every node of this federation runs.</summary>
    public AlgorithmCatalog Algorithms { get; private init; } = AlgorithmCatalog.BuiltIn;
    public Config? Overrides { get; }
    public FederationNode Seed { get; }
    public FederationNode Arbiter { get; private set; }
    public FederationNode Client { get; }
    readonly Dictionary<string, FederationNode> _parties = new();
    readonly Dictionary<string, IReadOnlyDictionary<string, string>> _datasets = new();
    public IReadOnlyDictionary<string, FederationNode> Parties => _parties;
    public string SeedAddress { get; }
    /// <summary>Under TLS: the federation CA folder; every node gets its own certificate issued from it.</summary>
    public string? CaDir { get; }

    LocalFederation(string root, Config? overrides, string? caDir, FederationNode seed, string seedAddress, FederationNode arbiter, FederationNode client)
    {
        CaDir = caDir;
        Root = root;
        Overrides = overrides;
        Seed = seed;
        SeedAddress = seedAddress;
        Arbiter = arbiter;
        Client = client;
    }

    /// <summary>
    /// Several actor systems in one process share the .NET thread pool, whose floor is one thread per core: on two cores a
    /// node start that blocks one of them (sharding's start waits synchronously) left the other systems' actors queued. A
    /// floor of 16 lets the pool grow at once instead of by its starvation heuristics.
    /// </summary>
    public static void HostManyNodes()
    {
        ThreadPool.GetMinThreads(out var workers, out var io);
        if (workers < 16) ThreadPool.SetMinThreads(16, Math.Max(io, 16));
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>
    /// Starts seed, arbiter, a client node and the parties. With <paramref name="tls"/> a federation CA is created under
    /// the root and every node runs mutual TLS with its own certificate (operator nodes "operator", parties their org).
    /// </summary>
    public static async Task<LocalFederation> StartAsync(string root, IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> parties,
        Config? overrides = null, TimeSpan? timeout = null, bool tls = false, Board.BoardFeed? board = null, AlgorithmCatalog? algorithms = null)
    {
        var plugins = algorithms ?? AlgorithmCatalog.BuiltIn;
        var wait = timeout ?? TimeSpan.FromSeconds(60);
        HostManyNodes();
        var port = FreePort();
        string? caDir = null;
        if (tls)
        {
            caDir = Path.Combine(root, "tls", "ca");
            if (!File.Exists(Path.Combine(caDir, CertificateAuthority.CaKeyFile))) CertificateAuthority.InitCa(caDir);
        }
        // Transport adapters (trttl for blackholes in tests) change the address scheme.
        var adapters = overrides?.GetStringList("akka.remote.dot-netty.tcp.applied-adapters") ?? [];
        var scheme = string.Concat(adapters.Select(a => a + ".")) + (tls ? "ssl.tcp" : "tcp");
        var seedAddress = $"akka.{scheme}://fate-llm@127.0.0.1:{port}";
        NodeTls? Tls(string org) => caDir is null ? null : IssuedTls(root, caDir, org);
        var seed = FederationNode.Start(new NodeOptions { Role = NodeRole.Seed, Port = port, Seeds = [seedAddress], DataDir = Path.Combine(root, "seed"), Overrides = overrides, Tls = Tls("operator") });
        var arbiter = FederationNode.Start(new NodeOptions { Role = NodeRole.Arbiter, Seeds = [seedAddress], DataDir = Path.Combine(root, "arbiter"), Overrides = overrides, Tls = Tls("operator"), Board = board, Algorithms = plugins });
        var client = FederationNode.Start(new NodeOptions { Role = NodeRole.Client, Seeds = [seedAddress], DataDir = Path.Combine(root, "client"), Overrides = overrides, Tls = Tls("operator") });
        var fed = new LocalFederation(root, overrides, caDir, seed, seedAddress, arbiter, client) { Algorithms = plugins };
        foreach (var (org, data) in parties) fed.StartParty(org, data);
        await Task.WhenAll(new[] { seed, arbiter, client }.Concat(fed._parties.Values).Select(n => n.WhenUp(wait)));
        return fed;
    }

    /// <summary>The certificate folder of <paramref name="org"/> under the root, issued from the CA on first use.</summary>
    public static NodeTls IssuedTls(string root, string caDir, string org)
    {
        var dir = Path.Combine(root, "tls", org);
        if (!File.Exists(Path.Combine(dir, CertificateAuthority.NodeFile))) CertificateAuthority.Issue(caDir, org, dir);
        return NodeTls.Load(dir);
    }

    /// <param name="overrides">This node's settings instead of the federation's (e.g. a restarted node without a crash point).</param>
    public FederationNode StartParty(string org, IReadOnlyDictionary<string, string>? datasets = null, Config? overrides = null)
    {
        if (datasets != null) _datasets[org] = datasets;
        var node = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = org, Seeds = [SeedAddress], DataDir = Path.Combine(Root, "party-" + org),
            Datasets = _datasets[org], Overrides = overrides ?? Overrides, Tls = CaDir is null ? null : IssuedTls(Root, CaDir, org), Algorithms = Algorithms,
        });
        _parties[org] = node;
        return node;
    }

    /// <summary>Stops a node without leaving the cluster: the others see it vanish, as after kill -9.</summary>
    public static async Task Crash(FederationNode node)
    {
        await node.System.Terminate().WaitAsync(TimeSpan.FromSeconds(30));
    }

    public async Task CrashParty(string org)
    {
        await Crash(_parties[org]);
        _parties.Remove(org);
    }

    /// <summary>
    /// Crashes the arbiter (if it still runs) and starts a new one on the same data directory (journal and blobs), with
    /// <paramref name="overrides"/> instead of the federation's (e.g. without the fault point that crashed the old one).
    /// </summary>
    public async Task<FederationNode> RestartArbiter(TimeSpan? timeout = null, Config? overrides = null)
    {
        await Crash(Arbiter);
        Arbiter = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Arbiter, Seeds = [SeedAddress], DataDir = Path.Combine(Root, "arbiter"), Overrides = overrides ?? Overrides,
            Tls = CaDir is null ? null : IssuedTls(Root, CaDir, "operator"), Board = Arbiter.Options.Board, Algorithms = Algorithms,
        });
        await Arbiter.WhenUp(timeout ?? TimeSpan.FromSeconds(60));
        return Arbiter;
    }

    public async Task<JobStatus> StatusAsync(string jobId, TimeSpan? timeout = null) =>
        await Client.JobRegion.Ask<JobStatus>(new GetJobStatus(jobId), timeout ?? TimeSpan.FromSeconds(10));

    public async Task<object> SubmitAsync(JobSpec spec, TimeSpan? timeout = null) =>
        await JobClient.SubmitAsync(Client.JobRegion, spec, Client.System.Settings.Config.GetTimeSpan("fate-llm.client.resend-interval"), timeout ?? TimeSpan.FromSeconds(120));

    /// <summary>Polls the job until it reaches a final state (or the predicate holds).</summary>
    public async Task<JobStatus> WaitAsync(string jobId, TimeSpan timeout, Func<JobStatus, bool>? until = null, IProgress<JobStatus>? progress = null)
    {
        var deadline = DateTime.UtcNow + timeout;
        until ??= s => s.State is JobState.Completed or JobState.Failed or JobState.Cancelled;
        while (true)
        {
            JobStatus? status = null;
            try { status = await StatusAsync(jobId); }
            catch (AskTimeoutException) { /* the arbiter may be restarting */ }
            if (status != null)
            {
                progress?.Report(status);
                if (until(status)) return status;
            }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"job {jobId} did not reach the expected state within {timeout} (last: {status?.State}, {status?.CompletedRounds} rounds, {status?.Reason})");
            await Task.Delay(250);
        }
    }

    /// <summary>
    /// Leaves gracefully, outermost first (client and parties, then arbiter, then seed), so nobody sees a crash. Parties
    /// leave one at a time, youngest first: the party shard coordinator lives on the oldest party node and records each
    /// leaving region with a majority write, which stalls for the exiting phase's full timeout (10 s) when every
    /// party node leaves at once.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        static async Task Leave(FederationNode n)
        {
            try { await n.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(20)); }
            catch (TimeoutException) { await n.System.Terminate(); }
        }
        await Leave(Client);
        var parties = _parties.Values.ToList();
        parties.Sort((a, b) => Akka.Cluster.Cluster.Get(a.System).SelfMember.IsOlderThan(Akka.Cluster.Cluster.Get(b.System).SelfMember) ? 1 : -1);
        foreach (var party in parties) await Leave(party);
        await Leave(Arbiter);
        await Leave(Seed);
    }
}
