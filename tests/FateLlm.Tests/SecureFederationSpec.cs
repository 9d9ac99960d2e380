using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Secure aggregation and DP through the real cluster: three parties, the actor protocol, killed parties.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class SecureFederationSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(150);

    internal static float[] AdapterValues(JobSpec spec)
    {
        var tensors = SafeTensors.FromBytes(File.ReadAllBytes(Path.Combine(spec.OutputDir, "adapter", AdapterFolder.WeightsFile)));
        return tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).SelectMany(kv => kv.Value.to(TorchSharp.torch.ScalarType.Float32).data<float>().ToArray()).ToArray();
    }

    [Fact]
    public async Task Secure_aggregation_reaches_the_plain_fedavg_result_within_the_quantization_bound()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g);
        var plain = FederationFixture.Job(g, "plain", rounds: 2);
        var p = await FederationFixture.RunToCompletion(fed, plain, Generous);

        var secure = FederationFixture.Secure(FederationFixture.Job(g, "secure", rounds: 2), 20);
        var s = await FederationFixture.RunToCompletion(fed, secure, Generous);
        Assert.All(s.Rounds, r => Assert.StartsWith("3 keyed, 3 shared, 3 masked, 3 revealed", r.SecureAggregation));
        Assert.All(p.Rounds, r => Assert.Null(r.SecureAggregation));

        var a = AdapterValues(plain);
        var b = AdapterValues(secure);
        var moved = a.Zip(b, (x, y) => Math.Abs(x - y)).Max();
        Assert.True(moved < 1e-4, $"secure and plain FedAvg differ by {moved}");
        Assert.NotEqual(p.GlobalDigest, s.GlobalDigest); // quantization noise: close, not bit-identical
    }

    [Fact]
    public async Task With_distributed_dp_and_a_party_crashing_after_sharing_its_keys_its_masks_are_removed_and_epsilon_is_reported()
    {
        var g = FederationFixture.Prepare();
        // food's node terminates itself when asked for its masked input in round 2: it shared its keys (U2) but never
        // uploads (not in U3), so the survivors' pairwise masks with it must be removed through its rebuilt key.
        var crash = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.mask, org = food, round = 2, action = terminate }]");
        await using var fed = await FederationFixture.Start(g, crash);
        var spec = FederationFixture.Secure(FederationFixture.Job(g, "secure-dp", rounds: 3, quorum: 2, deadlineSeconds: 20), 5);
        spec = spec with { Dp = spec.Dp with { Mode = DpMode.Distributed, ClipNorm = 0.5, NoiseMultiplier = 0.8, AdaptiveClip = true, ClipCountNoise = 0.5 } };
        var status = await FederationFixture.RunToCompletion(fed, spec, Generous);
        Assert.Equal([1, 2, 3], status.Rounds.Select(r => r.Round));
        Assert.True(fed.Parties["food"].System.WhenTerminated.IsCompleted, "the fault injection crashed food's node");
        var round2 = status.Rounds[1];
        Assert.StartsWith("3 keyed, 3 shared, 2 masked, 2 revealed", round2.SecureAggregation);
        Assert.Contains("masks of dropped food removed", round2.SecureAggregation);
        Assert.Contains("dropped out of secure aggregation", round2.Parties.Single(p => p.Org == "food").Reason);
        Assert.False(status.Rounds[2].Parties.Single(p => p.Org == "food").Succeeded);
        // ε grows every round and the status carries it.
        var eps = status.Rounds.Select(r => r.Privacy!.Epsilon).ToArray();
        Assert.True(eps[0] > 0 && eps[1] > eps[0] && eps[2] > eps[1], string.Join(", ", eps));
        Assert.Equal(eps[2], status.Epsilon);
        Assert.All(status.Rounds, r => Assert.True(r.Privacy!.RoundEpsilon > 0 && r.Privacy.RoundEpsilon <= r.Privacy.Epsilon));
        // Rounds 2 and 3 ran with two of three noise shares: accounted with z·√(2/3).
        Assert.Equal(0.8 * Math.Sqrt(2.0 / 3), round2.Privacy!.NoiseMultiplier, 6);
    }

    [Fact]
    public async Task The_job_stops_before_a_round_that_would_exceed_its_epsilon_budget()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g);
        // Central DP, z = 1, q = 1, δ = 1e-5: ε ≈ 4.7 after one round, ≈ 7.1 after two; a budget of 5 allows one round.
        var spec = FederationFixture.Job(g, "budget", rounds: 3);
        spec = spec with { Dp = spec.Dp with { Mode = DpMode.Central, NoiseMultiplier = 1.0, EpsilonBudget = 5 } };
        var status = await FederationFixture.RunToCompletion(fed, spec, Generous);
        Assert.Single(status.Rounds);
        Assert.Contains("past the budget 5", status.Reason);
        Assert.True(status.Epsilon < 5);
    }
}
