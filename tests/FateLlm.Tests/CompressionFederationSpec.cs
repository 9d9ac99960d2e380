using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Compression;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Peft;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Compressed uploads through a real in-process federation: a party crash keeps its residual; secure aggregation in fewer bits.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class CompressionFederationSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(150);

    static long AdapterBytes(JobSpec spec) => new FileInfo(Path.Combine(spec.OutputDir, "adapter", AdapterFolder.WeightsFile)).Length;

    static string Residual(LocalFederation fed, string org) =>
        Directory.GetFiles(Path.Combine(fed.Root, "party-" + org), "*.residual", SearchOption.AllDirectories).Single();

    /// <summary>The residual a round left (the second half of the file after its 32-byte header).</summary>
    static byte[] Left(byte[] file) => file[(32 + (file.Length - 32) / 2)..];
    static byte[] Started(byte[] file) => file[32..(32 + (file.Length - 32) / 2)];

    [Fact]
    public async Task A_party_killed_mid_round_restarts_from_the_residual_its_last_upload_left_and_from_the_global_it_holds()
    {
        var g = FederationFixture.Prepare();
        // food's node dies when asked to train in round 2, after round 1's upload left its residual in the workspace.
        var crash = ConfigurationFactory.ParseString("""
            fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 2, action = terminate }]
            fate-llm.round.absent-grace = 25s
            """);
        await using var fed = await FederationFixture.Start(g, crash);
        var spec = FederationFixture.Job(g, "topk-crash", rounds: 3, quorum: 2, deadlineSeconds: 40) with
        {
            Compression = CompressionOptions.Off with { Up = CompressionScheme.TopK, TopKFraction = 0.02, Down = CompressionScheme.Int8 },
        };
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        await fed.Parties["food"].System.WhenTerminated.WaitAsync(Generous);
        var afterRound1 = File.ReadAllBytes(Residual(fed, "food"));
        Assert.Equal(1, BitConverter.ToInt32(afterRound1, 4));
        await fed.CrashParty("food");
        await fed.WaitAsync(spec.JobId, Generous, s => s.CompletedRounds >= 2);
        fed.StartParty("food", overrides: FederationFixture.FastCluster);
        var status = await fed.WaitAsync(spec.JobId, Generous);

        Assert.True(status.State == JobState.Completed, status.Reason);
        var food3 = status.Rounds[2].Parties.Single(p => p.Org == "food");
        Assert.True(food3.Succeeded, food3.Reason);
        // Round 3 of the restarted node started from exactly what round 1 left: nothing it did not send was lost.
        var afterRound3 = File.ReadAllBytes(Residual(fed, "food"));
        Assert.Equal(3, BitConverter.ToInt32(afterRound3, 4));
        Assert.Equal(Left(afterRound1), Started(afterRound3));
        Assert.Contains(Left(afterRound1), b => b != 0);
        // 2 % of the values with their indices: under 3 % of the fp32 adapter's bytes, every upload.
        var fp32 = AdapterBytes(spec);
        Assert.All(status.Rounds.SelectMany(r => r.Parties).Where(p => p.Succeeded), p => Assert.InRange(p.UploadBytes, 1, 0.03 * fp32));
        Assert.All(status.Rounds, r => Assert.Empty(r.Rejections));
        // Down: round 1 in full, then int8 deltas against the last global. food fetched round 2's global before its node
        // died at the fit, and its store kept it across the restart: round 3 reaches it as a delta too.
        var down = status.Rounds.SelectMany(r => r.Parties.Where(p => p.Succeeded).Select(p => (r.Round, p.Org, p.DownloadBytes))).ToList();
        Assert.All(down.Where(d => d.Round == 1), d => Assert.InRange(d.DownloadBytes, 0.95 * fp32, 1.05 * fp32));
        Assert.All(down.Where(d => d.Round > 1), d => Assert.InRange(d.DownloadBytes, 0.2 * fp32, 0.3 * fp32));
        Assert.Contains(down, d => d.Round == 3 && d.Org == "food");
    }

    [Fact]
    public async Task Under_secure_aggregation_fp16_sends_18_bit_words_and_reaches_the_plain_result_within_their_step()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g);
        // One round: the global is the initial adapter plus the mean, so the two runs differ by the mean's error alone.
        var plain = FederationFixture.Job(g, "plain", rounds: 1);
        await FederationFixture.RunToCompletion(fed, plain, Generous);
        var secure = FederationFixture.Secure(FederationFixture.Job(g, "secure-fp16", rounds: 1), 20);
        // 16 value bits over a clip range that holds the weighted deltas, plus 2 bits of headroom for 3 parties.
        secure = secure with
        {
            SecureAggregation = secure.SecureAggregation with { ClipRange = 1e-2 },
            Compression = CompressionOptions.Off with { Up = CompressionScheme.Fp16 },
        };
        var s = await FederationFixture.RunToCompletion(fed, secure, Generous);

        var round = s.Rounds.Single();
        Assert.StartsWith("3 keyed, 3 shared, 3 masked, 3 revealed", round.SecureAggregation);
        // The sum of 3 words is off by at most 3 steps of 2r/(2^16 − 1); the mean divides it by the summed weights n/cap.
        var step = 2 * 1e-2 / 65535;
        var weights = round.Parties.Sum(p => Math.Min(p.Samples, secure.SecureAggregation.SampleCap) / (double)secure.SecureAggregation.SampleCap);
        var bound = 3 * step / weights + 1e-6;
        var moved = SecureFederationSpec.AdapterValues(plain).Zip(SecureFederationSpec.AdapterValues(secure), (x, y) => Math.Abs(x - y)).Max();
        Assert.True(moved <= bound, $"secure fp16 and plain FedAvg differ by {moved}, bound {bound}");
        // 18 bits of 32 a coordinate, plus the extras' words.
        var fp32 = AdapterBytes(plain);
        Assert.All(round.Parties, p => Assert.InRange(p.UploadBytes, 0.5 * fp32, 0.6 * fp32));
    }
}
