using Akka.Cluster;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Security;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Mutual TLS with the federation's own CA, and organizations pinned to their certificates.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class TlsSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(150);

    static async Task<bool> BecomesUp(FederationNode node, TimeSpan within)
    {
        try { await node.WhenUp(within); return true; }
        catch (TimeoutException) { return false; }
    }

    [Fact]
    public async Task The_federation_runs_a_job_end_to_end_over_mutual_tls()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g, tls: true);
        Assert.StartsWith("akka.ssl.tcp://", fed.SeedAddress);
        Assert.Equal("akka.ssl.tcp", Cluster.Get(fed.Parties["food"].System).SelfAddress.Protocol);
        var spec = FederationFixture.Job(g, "tls", rounds: 1);
        var status = await FederationFixture.RunToCompletion(fed, spec, Generous);
        Assert.All(status.Rounds[0].Parties, p => Assert.True(p.Succeeded, p.Reason));
    }

    [Fact]
    public async Task Strangers_are_refused_a_certificate_from_another_ca_at_the_handshake_a_plain_tcp_node_entirely()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g with { Datasets = [] }, tls: true);
        var otherCa = Path.Combine(g.Root, "rogue-ca");
        CertificateAuthority.InitCa(otherCa, "Rogue CA");
        CertificateAuthority.Issue(otherCa, "animal", Path.Combine(g.Root, "rogue-animal"));
        var rogue = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = "animal", Seeds = [fed.SeedAddress], DataDir = Path.Combine(g.Root, "rogue"), Overrides = FederationFixture.FastCluster,
            Datasets = g.Datasets["animal"], Tls = NodeTls.Load(Path.Combine(g.Root, "rogue-animal")),
        });
        // A plain-TCP node dials the TLS seed's port with the plain scheme: its handshake is not TLS.
        var plain = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = "food", Seeds = [fed.SeedAddress.Replace("akka.ssl.tcp", "akka.tcp")], DataDir = Path.Combine(g.Root, "plain"),
            Overrides = FederationFixture.FastCluster, Datasets = g.Datasets["food"],
        });
        try
        {
            Assert.False(await BecomesUp(rogue, TimeSpan.FromSeconds(12)), "a node with a foreign CA's certificate joined");
            Assert.False(await BecomesUp(plain, TimeSpan.FromSeconds(2)), "a plain TCP node joined a TLS cluster");
            var members = Cluster.Get(fed.Seed.System).State.Members;
            Assert.DoesNotContain(members, m => m.HasRole("org-animal") || m.HasRole("org-food"));
        }
        finally
        {
            await LocalFederation.Crash(rogue);
            await LocalFederation.Crash(plain);
        }
    }

    [Fact]
    public async Task A_node_whose_certificate_is_for_another_organization_cannot_act_as_that_party()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g with { Datasets = g.Datasets.Where(kv => kv.Key != "food").ToDictionary() }, tls: true);
        var acme = LocalFederation.IssuedTls(g.Root, fed.CaDir!, "acme");
        var options = new NodeOptions
        {
            Role = NodeRole.Party, Org = "food", Seeds = [fed.SeedAddress], DataDir = Path.Combine(g.Root, "impostor"),
            Overrides = FederationFixture.FastCluster, Datasets = g.Datasets["food"], Tls = acme,
        };
        // The node itself refuses to start under an identity its certificate does not back...
        var e = Assert.Throws<TlsConfigurationException>(() => FederationNode.Start(options));
        Assert.Contains("certificate is for organization 'acme'", e.Message);

        // ...and a modified node that skips that check is downed by the cluster and never hosts the party.
        var config = FederationNode.BuildConfig(options);
        var system = FederationNode.CreateSystem(options, config);
        FederationNode.Attach(system, options);
        await system.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.DoesNotContain(Cluster.Get(fed.Seed.System).State.Members, m => m.HasRole("org-food") && m.Status == MemberStatus.Up);
    }
}
