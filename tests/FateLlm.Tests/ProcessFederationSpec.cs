using System.Diagnostics;
using Akka.Actor;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Serialization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Real fate-llm processes: seed, arbiters and parties, some killed with SIGKILL.</summary>
[Trait(Tier.Key, Tier.Process)]
[Collection(Tier.Process)]
public sealed class ProcessFederationSpec : IAsyncLifetime
{
    readonly List<NodeProcess> _processes = new();
    FederationFixture.Ground _g = null!;
    string _seed = "";
    string _nodeConfig = "";

    sealed class NodeProcess(string name, Process process, string log)
    {
        public string Name => name;
        public Process Process => process;
        public string Log => log;
        public void Kill() { if (!process.HasExited) process.Kill(entireProcessTree: true); process.WaitForExit(10_000); }
    }

    public Task InitializeAsync()
    {
        _g = FederationFixture.Prepare();
        _nodeConfig = Path.Combine(_g.Root, "node.conf");
        // Consoles as an operator sees them (the in-process fixture silences them).
        File.WriteAllText(_nodeConfig, FederationFixture.FastCluster.ToString(true) + "\nfate-llm.logging.console-level = info\n");
        return Task.CompletedTask;
    }

    public Task DisposeAsync()
    {
        foreach (var p in _processes) p.Kill();
        return Task.CompletedTask;
    }

    NodeProcess Launch(string name, params string[] args)
    {
        var log = Path.Combine(_g.Root, name + "-" + _processes.Count + ".log");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "fate-llm.dll"));
        string[] config = args.Contains("--config") ? [] : ["--config", _nodeConfig];
        foreach (var a in args.Concat([.. config, "--data-dir", Path.Combine(_g.Root, "state-" + name)])) psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        var writer = TextWriter.Synchronized(new StreamWriter(log) { AutoFlush = true });
        process.OutputDataReceived += (_, e) => { if (e.Data != null) writer.WriteLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) writer.WriteLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var node = new NodeProcess(name, process, log);
        _processes.Add(node);
        return node;
    }

    NodeProcess Party(string org, params string[] extra) => Launch("party-" + org, ["party", "--org", org, "--seed", _seed,
        "--data", "train=" + _g.Datasets[org]["train"], "--data", "dev=" + _g.Datasets[org]["dev"], .. extra]);

    NodeProcess Arbiter(params string[] extra) => Launch("arbiter", ["arbiter", "--seed", _seed, .. extra]);

    [Fact]
    public async Task Real_processes_run_a_secure_private_job_over_mutual_tls_set_up_with_the_cli()
    {
        string Certs(params string[] args)
        {
            var err = new StringWriter();
            Assert.True(Host.Cli.CliApp.Run(["certs", .. args], new StringWriter(), err) == 0, err.ToString());
            return args[^1];
        }
        var ca = Certs("init-ca", "--out", Path.Combine(_g.Root, "ca"));
        var op = Certs("issue", "--ca", ca, "--org", "operator", "--out", Path.Combine(_g.Root, "tls-operator"));
        var port = LocalFederation.FreePort();
        _seed = $"akka.ssl.tcp://fate-llm@127.0.0.1:{port}";
        Launch("seed", "seed", "--port", port.ToString(), "--tls", op);
        Arbiter("--tls", op);
        // A rolling upgrade: the first party's node announces another minor wire version than the rest, and is served.
        string Announcing(string version)
        {
            var path = Path.Combine(_g.Root, $"node-wire-{version}.conf");
            File.WriteAllText(path, File.ReadAllText(_nodeConfig) + $"\nfate-llm.wire.announce = \"{version}\"\n");
            return path;
        }
        var minor = $"{WireSchema.Version.Major}.{WireSchema.Version.Minor + 1}";
        foreach (var org in FederationFixture.Orgs)
            Party(org, ["--tls", Certs("issue", "--ca", ca, "--org", org, "--out", Path.Combine(_g.Root, "tls-" + org)),
                .. org == FederationFixture.Orgs[0] ? new[] { "--config", Announcing(minor) } : []]);

        await using var client = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = [_seed], DataDir = Path.Combine(_g.Root, "client"), Overrides = FederationFixture.FastCluster,
            Tls = Actors.Security.NodeTls.Load(op),
        });
        await client.WhenUp(TimeSpan.FromSeconds(60));
        var spec = FederationFixture.Secure(FederationFixture.Job(_g, "tls-processes", rounds: 2, deadlineSeconds: 60), 20);
        spec = spec with { Dp = spec.Dp with { Mode = Training.Privacy.DpMode.Distributed, NoiseMultiplier = 1.0 } };
        Assert.IsType<JobAccepted>(await JobClient.SubmitAsync(client.JobRegion, spec, client.System.Settings.Config.GetTimeSpan("fate-llm.client.resend-interval"), TimeSpan.FromSeconds(120)));
        var status = await WaitFor(client, spec.JobId, s => s.State is JobState.Completed or JobState.Failed, seconds: 240);
        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.All(status.Rounds, r => Assert.StartsWith("3 keyed, 3 shared, 3 masked, 3 revealed", r.SecureAggregation));
        Assert.True(status.Epsilon > 0);
        Assert.Contains(_processes, p => p.Name == "seed" && File.ReadAllText(p.Log).Contains("akka.ssl.tcp://"));

        // A node of another major version is refused at join, saying so on its console and on the seed's, and ends.
        var major = $"{WireSchema.Version.Major + 1}.0";
        var rogue = Launch("party-rogue", "party", "--org", "rogue", "--seed", _seed, "--data", "train=" + _g.Datasets[FederationFixture.Orgs[1]]["train"],
            "--tls", Certs("issue", "--ca", ca, "--org", "rogue", "--out", Path.Combine(_g.Root, "tls-rogue")), "--config", Announcing(major));
        Assert.True(rogue.Process.WaitForExit(60_000), "the node of another major version still runs");
        rogue.Process.WaitForExit(); // and its console's last lines are in the log
        Assert.NotEqual(0, rogue.Process.ExitCode);
        Assert.Contains($"refused by the cluster: this node speaks wire protocol {major}, the cluster (akka.ssl.tcp://fate-llm@127.0.0.1:{port}) speaks {WireSchema.Version}",
            File.ReadAllText(rogue.Log));
        var seedLog = File.ReadAllText(_processes.Single(p => p.Name == "seed").Log);
        Assert.Contains($"it speaks wire protocol {major}, this cluster speaks {WireSchema.Version}", seedLog);
        // The minor difference is shown to the operator by `job status` (from a client that is not a member).
        var said = new StringWriter();
        var err = new StringWriter();
        Assert.True(Host.Cli.CliApp.Run(["job", "status", spec.JobId, "--seed", _seed, "--tls", op], said, err) == 0, err.ToString());
        Assert.True(said.ToString().Contains($"speaks protocol {minor}"), said.ToString());
        Assert.Matches($@"wire: akka\.ssl\.tcp://fate-llm@127\.0\.0\.1:\d+ \(org-{FederationFixture.Orgs[0]}, party\) speaks protocol {minor}, FateLlm ", said.ToString());
    }

    /// <summary>A fresh database on the local PostgreSQL server (build/setup.sh tests makes the role), dropped afterwards.</summary>
    sealed class PostgresDatabase : IAsyncDisposable
    {
        const string Admin = "postgres://fatellm:fatellm@127.0.0.1:5432/postgres";
        readonly string _admin, _name;
        public string Url { get; }

        PostgresDatabase(string admin, string name, string url) => (_admin, _name, Url) = (admin, name, url);

        public static async Task<PostgresDatabase> CreateAsync()
        {
            var admin = Environment.GetEnvironmentVariable("FATELLM_TEST_POSTGRES") ?? Admin;
            var name = "fatellm_" + Guid.NewGuid().ToString("N")[..12];
            await using var c = new Npgsql.NpgsqlConnection(JournalLocation.PostgresConnectionString(admin));
            try { await c.OpenAsync(); }
            catch (Exception e) when (e is Npgsql.NpgsqlException or System.Net.Sockets.SocketException)
            {
                throw new InvalidOperationException($"no PostgreSQL at {JournalLocation.Redacted(admin)} ({e.Message}): run build/setup.sh tests, or set FATELLM_TEST_POSTGRES");
            }
            await using (var create = new Npgsql.NpgsqlCommand($"CREATE DATABASE {name}", c)) await create.ExecuteNonQueryAsync();
            var u = new Uri(admin);
            return new PostgresDatabase(admin, name, $"{u.Scheme}://{u.UserInfo}@{u.Host}:{u.Port}/{name}");
        }

        public async ValueTask DisposeAsync()
        {
            await using var c = new Npgsql.NpgsqlConnection(JournalLocation.PostgresConnectionString(_admin));
            await c.OpenAsync();
            await using var drop = new Npgsql.NpgsqlCommand($"DROP DATABASE IF EXISTS {_name} WITH (FORCE)", c);
            await drop.ExecuteNonQueryAsync();
        }
    }

    [Fact]
    public async Task Two_arbiters_on_a_postgres_journal_a_party_killed_and_restarted_then_an_arbiter_killed_for_good_the_other_finishes_the_job_without_losing_a_round()
    {
        await using var db = await PostgresDatabase.CreateAsync();
        // node.log tells which arbiter runs the job. A crashed node is downed after 10 s: against the removal margin of
        // reference.conf (3 s), Akka's default (stable-after, here 10 s) would keep the restarted party's shard away.
        File.AppendAllText(_nodeConfig, "akka.loglevel = INFO\nakka.cluster.split-brain-resolver.stable-after = 10s\n");
        var port = LocalFederation.FreePort();
        _seed = $"akka.tcp://fate-llm@127.0.0.1:{port}";
        Launch("seed", "seed", "--port", port.ToString());
        var arbiters = new List<NodeProcess>
        {
            Launch("arbiter-a", "arbiter", "--seed", _seed, "--journal", db.Url), Launch("arbiter-b", "arbiter", "--seed", _seed, "--journal", db.Url),
        };
        var parties = FederationFixture.Orgs.ToDictionary(o => o, o => Party(o));
        // The client is a member too: it runs the nodes' own failure detector and split-brain timing (with the fixture's
        // 2 s stable-after beside the nodes' 10 s, a run ended with every member downed).
        await using var client = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = [_seed], DataDir = Path.Combine(_g.Root, "client"), Overrides = Akka.Configuration.ConfigurationFactory.ParseString(File.ReadAllText(_nodeConfig)),
        });
        await client.WhenUp(TimeSpan.FromSeconds(60));
        var arbitersUp = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        client.System.ActorOf(Props.Create(() => new RoleCount("arbiter", 2, arbitersUp)));
        try { await arbitersUp.Task.WaitAsync(TimeSpan.FromSeconds(60)); }
        catch (TimeoutException) { throw new TimeoutException($"both arbiters never came up; logs:\n{Logs()}"); }
        var spec = FederationFixture.Job(_g, "failover-" + Guid.NewGuid().ToString("N")[..6], rounds: 4, quorum: 2, deadlineSeconds: 30, attempts: 3, epochs: 3);
        Assert.IsType<JobAccepted>(await JobClient.SubmitAsync(client.JobRegion, spec, client.System.Settings.Config.GetTimeSpan("fate-llm.client.resend-interval"), TimeSpan.FromSeconds(120)));
        await WaitFor(client, spec.JobId, s => s.CompletedRounds >= 1);
        parties["food"].Kill();                       // kill -9 a party while round 2 runs
        await WaitFor(client, spec.JobId, s => s.CompletedRounds >= 2);
        parties["food"] = Party("food");              // it restarts on its data directory and rejoins
        var (joined, ready) = await Restarted(parties["food"], "food");
        Assert.True(ready - joined < TimeSpan.FromSeconds(5), $"the restarted party was ready {(ready - joined).TotalSeconds:F1} s after its node was up; logs:\n{Logs()}");

        // Kill -9 whichever arbiter runs the job once round 3 is under way, and never bring it back.
        var started = $"job {spec.JobId}: round 3/4 attempt 1 started";
        var deadline = DateTime.UtcNow.AddSeconds(60);
        NodeProcess? host;
        while ((host = arbiters.FirstOrDefault(a => SafeRead(NodeLog(a)).Contains(started))) is null)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no arbiter logged '{started}'; logs:\n{Logs()}");
            await Task.Delay(200);
        }
        var before = await client.JobRegion.Ask<JobStatus>(new GetJobStatus(spec.JobId), TimeSpan.FromSeconds(10));
        var survivor = arbiters.Single(a => a != host);
        // Round 2's state (global adapter and server state) reaches the other arbiter while round 3 trains.
        var blobs = Path.Combine(_g.Root, "state-" + survivor.Name, "blobs");
        while (!before.Artifacts.Values.All(d => Directory.Exists(blobs) && Directory.EnumerateFiles(blobs, Training.IO.ContentDigest.Stem(d) + "*").Any()))
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"round 2's state ({string.Join(", ", before.Artifacts.Select(kv => $"{kv.Key} {kv.Value[..12]}"))}) never reached {survivor.Name} " +
                $"(it holds {string.Join(", ", Directory.EnumerateFiles(blobs).Select(f => Path.GetFileName(f)[..12]))}); logs:\n{Logs()}");
            await Task.Delay(100);
        }
        Assert.Equal(3, before.CompletedRounds + 1); // still round 3: the kill is mid-round
        host.Kill();
        var final = await WaitFor(client, spec.JobId, s => s.State is JobState.Completed or JobState.Failed, seconds: 300);

        Assert.True(final.State == JobState.Completed, final.Reason + "\n" + Logs());
        Assert.Equal([1, 2, 3, 4], final.Rounds.Select(r => r.Round));
        // The rounds completed before the kill are the same records: not lost, not run again.
        foreach (var r in before.Rounds)
            Assert.Equal((r.Attempt, r.GlobalDigest, r.Seconds), (final.Rounds[r.Round - 1].Attempt, final.Rounds[r.Round - 1].GlobalDigest, final.Rounds[r.Round - 1].Seconds));
        Assert.Contains($"job {spec.JobId}: recovered with {before.CompletedRounds} completed rounds", SafeRead(NodeLog(survivor)));
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_model.safetensors")));
        Assert.False(final.Rounds[1].Parties.Single(p => p.Org == "food").Succeeded);
        Assert.True(final.Rounds[3].Parties.Single(p => p.Org == "food").Succeeded, "the restarted party trains again");
        // A peer killed with -9 is one WARNING line on the other consoles, never an ERROR or a stack trace.
        var seedConsole = SafeRead(_processes.Single(p => p.Name == "seed").Log);
        Assert.Matches(@"\d\d:\d\d:\d\d WARNING member unreachable: party food at akka\.tcp://", seedConsole);
        WalkthroughSpec.AssertCalm("seed", seedConsole);
        WalkthroughSpec.AssertCalm("surviving arbiter", SafeRead(survivor.Log));
    }

    /// <summary>
    /// When a restarted party's node saw itself up, and when its party entity was ready, from its node.log. The log
    /// also holds the earlier run's lines: the restart's ready line is the one after the first run's. It may precede the
    /// node's own member-up line (the entity can be ready before the node sees itself up).
    /// </summary>
    async Task<(DateTime Joined, DateTime Ready)> Restarted(NodeProcess party, string org)
    {
        var deadline = DateTime.UtcNow.AddSeconds(120);
        var address = "";
        while (true)
        {
            var console = SafeRead(party.Log);
            var at = System.Text.RegularExpressions.Regex.Match(console, @"party \S+ node at (\S+),");
            if (at.Success) address = at.Groups[1].Value;
            var log = SafeRead(Path.Combine(_g.Root, "state-" + party.Name, "node.log")).Split('\n');
            var joined = log.LastOrDefault(l => address.Length > 0 && l.Contains($"member up: party {org} at {address}"));
            var ready = log.Where(l => l.Contains($"party {org} ready with datasets")).Skip(1).LastOrDefault();
            if (joined is not null && ready is not null)
                return (Stamp(joined), Stamp(ready));
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"restarted party {org} ({address}) never got ready; logs:\n{Logs()}");
            await Task.Delay(200);
        }
        static DateTime Stamp(string line) => DateTime.ParseExact(line[..23], "yyyy-MM-dd HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture);
    }

    async Task<JobStatus> WaitFor(FederationNode client, string job, Func<JobStatus, bool> until, int seconds = 180)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            try
            {
                var s = await client.JobRegion.Ask<JobStatus>(new GetJobStatus(job), TimeSpan.FromSeconds(5));
                if (until(s)) return s;
            }
            catch (AskTimeoutException) { /* an arbiter restarting, or the job moving to another one */ }
            if (DateTime.UtcNow > deadline) throw new TimeoutException("job stalled; node logs:\n" + Logs());
            await Task.Delay(300);
        }
    }

    /// <summary>Completes <paramref name="done"/> once this many members with <paramref name="role"/> are Up (cluster events), then stops.</summary>
    sealed class RoleCount : ReceiveActor
    {
        readonly HashSet<Address> _up = new();

        public RoleCount(string role, int count, TaskCompletionSource done)
        {
            Receive<Akka.Cluster.ClusterEvent.MemberUp>(e =>
            {
                if (e.Member.HasRole(role)) _up.Add(e.Member.Address);
                if (_up.Count < count) return;
                done.TrySetResult();
                Context.Stop(Self);
            });
            Receive<Akka.Cluster.ClusterEvent.IMemberEvent>(_ => { });
        }

        protected override void PreStart() =>
            Akka.Cluster.Cluster.Get(Context.System).Subscribe(Self, Akka.Cluster.ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(Akka.Cluster.ClusterEvent.IMemberEvent));

        protected override void PostStop() => Akka.Cluster.Cluster.Get(Context.System).Unsubscribe(Self);
    }

    /// <summary>Everything the node logged (its console shows only FateLlm's operator lines).</summary>
    string NodeLog(NodeProcess p) => Path.Combine(_g.Root, "state-" + p.Name, "node.log");

    string Logs() => string.Join("\n", _processes.Select(p => $"--- {p.Name}\n{SafeTail(p.Log)}"));

    static string SafeRead(string path)
    {
        try
        {
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return new StreamReader(s).ReadToEnd();
        }
        catch (IOException) { return ""; }
    }

    static string SafeTail(string path)
    {
        try { return string.Join("\n", File.ReadLines(path).TakeLast(15)); }
        catch (IOException) { return "(log unavailable)"; }
    }
}
