using System.Diagnostics;
using Akka.Actor;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Real fate-llm processes: seed, arbiter and parties, killed with SIGKILL and restarted.</summary>
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
        foreach (var a in args.Concat(["--config", _nodeConfig, "--data-dir", Path.Combine(_g.Root, "state-" + name)])) psi.ArgumentList.Add(a);
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
    public async Task Killing_parties_and_the_arbiter_with_sigkill_loses_no_completed_round()
    {
        var port = LocalFederation.FreePort();
        _seed = $"akka.tcp://fate-llm@127.0.0.1:{port}";
        var seedNode = Launch("seed", "seed", "--port", port.ToString());
        var arbiter = Arbiter();
        var parties = FederationFixture.Orgs.ToDictionary(o => o, o => Party(o));

        await using var client = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = [_seed], DataDir = Path.Combine(_g.Root, "client"), Overrides = FederationFixture.FastCluster,
        });
        await client.WhenUp(TimeSpan.FromSeconds(60));
        var spec = FederationFixture.Job(_g, "processes", rounds: 4, quorum: 2, deadlineSeconds: 10, attempts: 3, epochs: 3);
        Assert.IsType<JobAccepted>(await client.JobRegion.Ask<object>(new SubmitJob(spec.JobId, spec), TimeSpan.FromSeconds(120)));

        async Task<JobStatus> WaitFor(Func<JobStatus, bool> until)
        {
            var deadline = DateTime.UtcNow.AddSeconds(180);
            while (true)
            {
                try
                {
                    var s = await client.JobRegion.Ask<JobStatus>(new GetJobStatus(spec.JobId), TimeSpan.FromSeconds(5));
                    if (until(s)) return s;
                }
                catch (AskTimeoutException) { /* arbiter restarting */ }
                if (DateTime.UtcNow > deadline)
                    throw new TimeoutException("job stalled; node logs: " + string.Join("\n", _processes.Select(p => $"--- {p.Name}\n{SafeTail(p.Log)}")));
                await Task.Delay(300);
            }
        }

        await WaitFor(s => s.CompletedRounds >= 1);
        parties["food"].Kill();                       // kill -9 a party while round 2 runs
        await WaitFor(s => s.CompletedRounds >= 2);
        parties["food"] = Party("food");              // it restarts and rejoins
        arbiter.Kill();                               // kill -9 the arbiter while round 3 runs
        arbiter = Arbiter();
        var final = await WaitFor(s => s.State is JobState.Completed or JobState.Failed);

        Assert.True(final.State == JobState.Completed, final.Reason);
        Assert.Equal([1, 2, 3, 4], final.Rounds.Select(r => r.Round));
        Assert.False(final.Rounds[1].Parties.Single(p => p.Org == "food").Succeeded);
        Assert.True(final.Rounds[3].Parties.Single(p => p.Org == "food").Succeeded, "the restarted party trains again");
        // A peer killed with -9 is one WARNING line on the other consoles, never an ERROR or a stack trace.
        var seedConsole = File.ReadAllText(seedNode.Log);
        Assert.Matches(@"\d\d:\d\d:\d\d WARNING member unreachable: party food at akka\.tcp://", seedConsole);
        WalkthroughSpec.AssertCalm("seed", seedConsole);
        WalkthroughSpec.AssertCalm("arbiter", File.ReadAllText(arbiter.Log));
    }

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
        foreach (var org in FederationFixture.Orgs) Party(org, "--tls", Certs("issue", "--ca", ca, "--org", org, "--out", Path.Combine(_g.Root, "tls-" + org)));

        await using var client = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = [_seed], DataDir = Path.Combine(_g.Root, "client"), Overrides = FederationFixture.FastCluster,
            Tls = Actors.Security.NodeTls.Load(op),
        });
        await client.WhenUp(TimeSpan.FromSeconds(60));
        var spec = FederationFixture.Secure(FederationFixture.Job(_g, "tls-processes", rounds: 2, deadlineSeconds: 60), 20);
        spec = spec with { Dp = spec.Dp with { Mode = Training.Privacy.DpMode.Distributed, NoiseMultiplier = 1.0 } };
        Assert.IsType<JobAccepted>(await client.JobRegion.Ask<object>(new SubmitJob(spec.JobId, spec), TimeSpan.FromSeconds(120)));
        var deadline = DateTime.UtcNow.AddSeconds(240);
        JobStatus status;
        while (true)
        {
            status = await client.JobRegion.Ask<JobStatus>(new GetJobStatus(spec.JobId), TimeSpan.FromSeconds(10));
            if (status.State is JobState.Completed or JobState.Failed) break;
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException("job stalled; node logs: " + string.Join("\n", _processes.Select(p => $"--- {p.Name}\n{SafeTail(p.Log)}")));
            await Task.Delay(500);
        }
        Assert.True(status.State == JobState.Completed, status.Reason);
        Assert.All(status.Rounds, r => Assert.StartsWith("3 keyed, 3 shared, 3 masked, 3 revealed", r.SecureAggregation));
        Assert.True(status.Epsilon > 0);
        Assert.Contains(_processes, p => p.Name == "seed" && File.ReadAllText(p.Log).Contains("akka.ssl.tcp://"));
    }

    static string SafeTail(string path)
    {
        try { return string.Join("\n", File.ReadLines(path).TakeLast(15)); }
        catch (IOException) { return "(log unavailable)"; }
    }
}
