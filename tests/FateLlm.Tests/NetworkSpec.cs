using System.Diagnostics;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The several-machines variant of the README, for real on one machine: every node (seed, arbiter, three parties, the
/// job client) runs in its own network namespace with its own 10.x address on a bridge the spec creates and removes,
/// binds and advertises that address, and finds the cluster through the seed's address. Mid-round, one party's link is
/// cut (<c>ip link set … down</c>) until the arbiter sees it unreachable, then restored; the job still completes.
/// Needs root and iproute2 (CI runs as root).
/// </summary>
[Trait(Tier.Key, Tier.Process)]
[Collection(Tier.Process)]
public sealed class NetworkSpec : IDisposable
{
    readonly string _tag = Guid.NewGuid().ToString("N")[..5];
    readonly List<string> _namespaces = new();
    readonly List<(string Name, Process Process, StringWriter Console)> _nodes = new();
    string Bridge => $"flb{_tag}";
    const string Subnet = "10.213.0";

    static void Ip(params string[] args)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"ip {string.Join(' ', args)}: {err.Trim()}");
    }

    /// <summary>A namespace on the bridge with address 10.213.0.<paramref name="host"/>; its bridge-side link is returned.</summary>
    string Host(string name, int host)
    {
        var ns = $"fl{_tag}{name}";
        var (outer, inner) = ($"fo{_tag}{host}", $"fi{_tag}{host}");
        Ip("netns", "add", ns);
        _namespaces.Add(ns);
        Ip("link", "add", outer, "type", "veth", "peer", "name", inner);
        Ip("link", "set", inner, "netns", ns);
        Ip("link", "set", outer, "master", Bridge);
        Ip("link", "set", outer, "up");
        Ip("netns", "exec", ns, "ip", "addr", "add", $"{Subnet}.{host}/24", "dev", inner);
        Ip("netns", "exec", ns, "ip", "link", "set", inner, "up");
        Ip("netns", "exec", ns, "ip", "link", "set", "lo", "up");
        return outer;
    }

    (Process, StringWriter) Run(string name, string ns, params string[] args)
    {
        var psi = WalkthroughSpec.FateLlm(TestSupport.TempDir(), args);
        psi.FileName = "ip";
        var inner = psi.ArgumentList.ToList();
        psi.ArgumentList.Clear();
        foreach (var a in new[] { "netns", "exec", $"fl{_tag}{ns}", "dotnet" }.Concat(inner)) psi.ArgumentList.Add(a);
        var (process, console) = WalkthroughSpec.Start(psi);
        _nodes.Add((name, process, console));
        return (process, console);
    }

    [Fact]
    public async Task Nodes_on_separate_hosts_form_the_federation_by_address_and_a_party_whose_link_is_cut_and_restored_mid_round_carries_on()
    {
        Assert.True(Environment.UserName == "root", "NetworkSpec creates network namespaces: it needs root (CI runs as root)");
        var g = FederationFixture.Prepare();
        Ip("link", "add", Bridge, "type", "bridge");
        Ip("link", "set", Bridge, "up");
        var hosts = new Dictionary<string, int> { ["seed"] = 1, ["arbiter"] = 2, ["animal"] = 3, ["artifact"] = 4, ["food"] = 5, ["client"] = 6 };
        var links = hosts.ToDictionary(kv => kv.Key, kv => Host(kv.Key, kv.Value));
        // Patient failure detection: a short outage is seen (unreachable), not punished (downed after 20 s).
        var config = Path.Combine(g.Root, "node.conf");
        File.WriteAllText(config, """
            akka.cluster.failure-detector.heartbeat-interval = 500ms
            akka.cluster.failure-detector.acceptable-heartbeat-pause = 3s
            akka.cluster.split-brain-resolver.stable-after = 20s
            akka.cluster.sharding.retry-interval = 300ms
            fate-llm.round.resend-interval = 1s
            fate-llm.party.duplicate-grace = 5s
            """);
        var seed = $"akka.tcp://fate-llm@{Subnet}.1:4053";
        string[] Node(string name) => ["--host", $"{Subnet}.{hosts[name]}", "--config", config, "--data-dir", Path.Combine(g.Root, "state-" + name)];
        Run("seed", "seed", ["seed", "--port", "4053", .. Node("seed")]);
        var (_, arbiter) = Run("arbiter", "arbiter", ["arbiter", "--seed", seed, .. Node("arbiter")]);
        foreach (var org in FederationFixture.Orgs)
            Run(org, org, ["party", "--org", org, "--seed", seed, "--data", "train=" + g.Datasets[org]["train"], "--data", "dev=" + g.Datasets[org]["dev"], .. Node(org)]);
        await TestSupport.Until(() => arbiter.ToString().Split('\n').Count(l => l.Contains("member up: party")) == 3, TimeSpan.FromSeconds(90), "three parties up at the arbiter");
        Assert.Contains($"party food at akka.tcp://fate-llm@{Subnet}.5:", arbiter.ToString()); // advertised by address, not 127.0.0.1

        var job = Path.Combine(g.Root, "job.conf");
        File.WriteAllText(job, $$"""
            job {
              id = network
              model = "{{g.Model}}"
              parties = [{ org = animal, data = train, eval = dev }, { org = artifact, data = train, eval = dev }, { org = food, data = train, eval = dev }]
              rounds = 3
              quorum = 2
              round-deadline = 90s
              peft { r = 4, dropout = 0 }
              local { epochs = 3, learning-rate = 5e-3, schedule = constant }
              data { max-tokens = 96 }
              evaluation { limit = 4, max-new-tokens = 8 }
              output = "{{Path.Combine(g.Root, "out")}}"
            }
            """);
        // The client finds its own address toward the seed (10.213.0.6): the cluster reaches it back there.
        var (submit, progress) = Run("job submit", "client", ["job", "submit", job, "--seed", seed, "--wait"]);
        await TestSupport.Until(() => progress.ToString().Contains("round 2/3 attempt 1, exchange 1 collect"), TimeSpan.FromMinutes(4), "round 2 to begin");
        Ip("link", "set", links["food"], "down");
        await TestSupport.Until(() => arbiter.ToString().Contains("member unreachable: party food"), TimeSpan.FromSeconds(60), "the arbiter to see food unreachable");
        Ip("link", "set", links["food"], "up");
        await TestSupport.Until(() => submit.HasExited, TimeSpan.FromMinutes(5), "the job to finish");
        Assert.True(submit.ExitCode == 0, progress.ToString());
        Assert.Contains("job network: Completed, 3/3 rounds", progress.ToString());
        await TestSupport.Until(() => arbiter.ToString().Contains("member reachable again: party food"), TimeSpan.FromSeconds(30), "food to be reachable again");
        Assert.False(_nodes.Single(n => n.Name == "food").Process.HasExited, "food was not downed by a short outage");
        // After the outage food trains again: its line in round 3's report shows losses, not a dropout.
        var round3 = progress.ToString()[progress.ToString().IndexOf("round 3/3 (attempt", StringComparison.Ordinal)..];
        Assert.Matches(@"\n  food\s+loss ", round3[..round3.IndexOf("job network:", StringComparison.Ordinal)]);
        foreach (var (name, _, console) in _nodes) WalkthroughSpec.AssertCalm(name, console.ToString());
    }

    public void Dispose()
    {
        foreach (var (_, process, _) in Enumerable.Reverse(_nodes))
            if (!process.HasExited) { process.Kill(entireProcessTree: true); process.WaitForExit(10_000); }
        foreach (var ns in _namespaces) try { Ip("netns", "del", ns); } catch (InvalidOperationException) { }
        try { Ip("link", "del", Bridge); } catch (InvalidOperationException) { }
    }
}
