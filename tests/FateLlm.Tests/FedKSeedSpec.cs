using System.Diagnostics;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.KSeed;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>FedKSeed's pure parts: directions, replay, the estimator, the wire formats, Pro and seed sampling.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class FedKSeedSpec
{
    [Fact]
    public void Directions_match_an_independent_rendering_of_the_formula_and_have_unit_variance()
    {
        // The formula of SeedDirection's summary rendered independently in Python/numpy gives these fp32 bit patterns.
        var key = SeedDirection.Key(42, 7);
        Assert.Equal(0x3448b5a5e80082b0UL, key);
        Assert.Equal(new[] { 1071240697, 1030785503, 1074676360, 1073146673, 1060345742 },
            SeedDirection.Values(key, 5).Select(BitConverter.SingleToInt32Bits));

        var z = SeedDirection.Values(SeedDirection.Key(1, 0), 1 << 20, threads: 2);
        double mean = z.Average(v => (double)v), variance = z.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.005, 0.005);
        Assert.InRange(variance, 0.99, 1.01);
        Assert.InRange(z.Max(), 3.0f, 3.47f); // Irwin–Hall(4) at unit variance is bounded by 2√3 ≈ 3.46
        // Different candidates are uncorrelated.
        var y = SeedDirection.Values(SeedDirection.Key(1, 1), 1 << 20);
        Assert.InRange(z.Zip(y, (a, b) => (double)a * b).Average(), -0.005, 0.005);
    }

    static RoundScalars Round(int round, params (int Candidate, float Sum)[] entries) =>
        new(round, entries.Select(e => new SeedEntry(e.Candidate, e.Sum, Math.Abs(e.Sum), 1)).ToArray());

    [Fact]
    public void Replay_gives_the_same_bits_for_any_thread_count_and_from_a_cached_prefix()
    {
        var n = 100_003; // not a multiple of the chunk
        var baseWeights = SeedDirection.Values(SeedDirection.Key(9, 9), n);
        var m = new KSeedManifest(KSeedManifest.CurrentFormat, 5, 64, 1e-3, n, new string('a', 64));
        RoundScalars[] rounds = [Round(1, (3, 0.5f), (17, -2f)), Round(2, (3, 1.25f), (40, 0.1f)), Round(3, (63, -0.75f))];
        var one = (float[])baseWeights.Clone();
        KSeedReplay.Replay(one, m, rounds, threads: 1);
        var two = (float[])baseWeights.Clone();
        KSeedReplay.Replay(two, m, rounds, threads: 2);
        Assert.Equal(one, two);
        Assert.NotEqual(baseWeights, one);

        var cache = TestSupport.TempDir();
        var named = rounds.Select((r, i) => ($"digest-{i}", r)).ToList();
        var (partial, applied) = KSeedReplay.Rebuild(() => (float[])baseWeights.Clone(), m, named.Take(2).ToList(), cache, 2);
        Assert.Equal(2, applied);
        var (full, rest) = KSeedReplay.Rebuild(() => throw new InvalidOperationException("the cache holds the first two rounds"), m, named, cache, 2);
        Assert.Equal(1, rest);
        Assert.Equal(one, full);
        // A history that is not an extension of the cached one starts over from the base.
        var (other, again) = KSeedReplay.Rebuild(() => (float[])baseWeights.Clone(), m, [("other", rounds[2])], cache, 2);
        Assert.Equal(1, again);
        Assert.NotEqual(one, other);
    }

    [Fact]
    public void The_two_point_estimate_is_the_directional_derivative()
    {
        TestSupport.CapThreads();
        using var model = TestSupport.TinyModel();
        var layout = ParameterLayout.Of(model);
        var tok = new ByteTokenizer();
        var pad = ByteTokenizer.Pad;
        var example = InstructionData.Tokenize(new Example("Name an animal.", "A cat sits on the mat.", "spec"), tok, new DataOptions());
        // Autograd's ∇L·z for candidate 11.
        foreach (var (_, p, _) in layout.Entries) p.requires_grad = true;
        model.eval();
        using (var batch = InstructionData.Collate([example], pad))
            LanguageModelLoss.Compute(model, batch).backward();
        var z = SeedDirection.Values(SeedDirection.Key(3, 11), layout.Count);
        double exact = 0;
        foreach (var (_, p, offset) in layout.Entries)
        {
            var g = p.grad!.data<float>().ToArray();
            for (int i = 0; i < g.Length; i++) exact += (double)g[i] * z[offset + i];
        }
        var w = layout.Read();
        var r = ZerothOrder.Run(model, layout, w, [example], pad, [11], 3, new ZerothOrderOptions(1, 1e-6, 1e-3, 1e6, 2), 1, default);
        var estimate = r.Upload.Pairs.Single().Scalar;
        Assert.Equal(11, r.Upload.Pairs.Single().Candidate);
        Assert.InRange(Math.Abs(estimate - exact), 0, 0.02 * Math.Abs(exact) + 1e-3);
        // The step moved w by −η·ĝ·z and the model holds it.
        Assert.Equal(w, layout.Read());
    }

    [Fact]
    public void Uploads_are_refused_for_bad_framing_indices_counts_and_values()
    {
        var good = new ScalarUpload([(0, 1.5f), (4095, -2f)]).ToBytes();
        Assert.Equal(24, good.Length);
        Assert.Equal([(0, 1.5f), (4095, -2f)], ScalarUpload.Parse(good, 4096, 200, 1000).Pairs);
        string Refusal(byte[] b, int candidates = 4096, int steps = 200) => Assert.Throws<FormatException>(() => ScalarUpload.Parse(b, candidates, steps, 1000)).Message;
        Assert.Contains("seed index 4095 outside the 4000 candidates", Refusal(good, candidates: 4000));
        Assert.Contains("2 (seed, scalar) pairs, more than the 1 steps asked", Refusal(good, steps: 1));
        Assert.Contains("KSU1", Refusal(new byte[] { 1, 2, 3 }));
        Assert.Contains("25 bytes for 2 pairs", Refusal([.. good, 0]));
        Assert.Contains("not finite", Refusal(new ScalarUpload([(1, float.NaN)]).ToBytes()));
        Assert.Contains("beyond ±1000", Refusal(new ScalarUpload([(1, 5000f)]).ToBytes()));
    }

    [Fact]
    public void A_round_weights_parties_by_data_share_and_its_blob_round_trips()
    {
        var round = RoundScalars.Aggregate(4, [
            ("b", 300, new ScalarUpload([(7, 2f), (2, -1f)])),
            ("a", 100, new ScalarUpload([(7, 4f), (7, -8f)])),
        ], proClip: 5);
        Assert.Equal([2, 7], round.Entries.Select(e => e.Candidate));
        var seven = round.Entries[1];
        Assert.Equal(0.25 * (4 - 8) + 0.75 * 2, seven.Sum, 6);
        Assert.Equal(2 + 4 + 5, seven.AbsSum, 6); // |−8| clipped at 5
        Assert.Equal(3, seven.Count);
        var back = RoundScalars.Parse(round.ToBytes(), 4096, "round");
        Assert.Equal(round.Round, back.Round);
        Assert.Equal(round.Entries, back.Entries);
        var e = Assert.Throws<FormatException>(() => RoundScalars.Parse(round.ToBytes(), 5, "round-0004"));
        Assert.Contains("round-0004: entry 1 has seed index 7", e.Message);
    }

    [Fact]
    public void Pro_favours_seeds_with_large_estimates_by_at_most_e_and_sampling_differs_per_draw()
    {
        var uniform = SeedProbabilities.Of(8, [], pro: true);
        Assert.All(uniform, p => Assert.Equal(1.0 / 8, p, 12));
        var p = SeedProbabilities.Of(8, [Round(1, (1, 10f), (2, -1f))], pro: true);
        Assert.Equal(1.0, p.Sum(), 9);
        Assert.True(p[1] > p[2] && p[2] > p[0]);
        Assert.Equal(Math.E, p[1] / p[0], 9);
        Assert.All(SeedProbabilities.Of(8, [Round(1, (1, 10f))], pro: false), q => Assert.Equal(1.0 / 8, q, 12));

        var draws = SeedProbabilities.Sample(p, 20_000, 11);
        Assert.InRange(draws.Count(d => d == 1) / 20_000.0, p[1] - 0.015, p[1] + 0.015);
        Assert.NotEqual(draws.Take(50), SeedProbabilities.Sample(p, 50, 12));
        Assert.Equal(draws.Take(50), SeedProbabilities.Sample(p, 50, 11));
    }

    [Fact]
    public void Settings_are_read_from_the_algorithm_block_and_bad_ones_refused()
    {
        static JobSpec With(params (string Key, string Value)[] settings) => JobFile.Default("k", "m", [new PartySpec("a", "train", null)], "out") with
        {
            Algorithm = JobFile.Algorithm(FedKSeedAlgorithm.AlgorithmName, settings.ToDictionary(s => s.Key, s => s.Value)),
        };
        var s = FedKSeedAlgorithm.Settings.Of(With(("seeds", "1024"), ("steps", "50")));
        Assert.Equal((1024, 50, 4), (s.Seeds, s.Steps, s.BatchSize));
        var algorithm = AlgorithmCatalog.BuiltIn.Get(FedKSeedAlgorithm.AlgorithmName);
        Assert.Contains("did you mean 'seeds'", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("seed", "3")))).Message);
        Assert.Contains("job.algorithm.epsilon = 0 must be a positive number", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("epsilon", "0")))).Message);
        Assert.Contains("job.algorithm.seeds = 0", Assert.Throws<JobSpecException>(() => algorithm.Validate(With(("seeds", "0")))).Message);
        Assert.False(algorithm.Summable); // secure aggregation and DP are refused by the framework
    }

    [Fact]
    public void The_example_job_parses_and_validates()
    {
        var spec = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "fedkseed.conf")));
        JobSpecValidation.Validate(spec, "fedkseed.conf", AlgorithmCatalog.BuiltIn);
    }
}

/// <summary>FedKSeed through the cluster: three parties, a crash, the bytes on the wire, and the replay in other processes.</summary>
[Trait(Tier.Key, Tier.Process)]
[Collection(Tier.InProcess)] // its federation trains in this process
public class FedKSeedFederationSpec
{
    [Fact]
    public async Task Parties_tune_with_seeds_upload_under_18_KB_survive_a_crash_and_two_processes_replay_the_same_bits()
    {
        var g = FederationFixture.Prepare();
        // As in FederationFaultSpec: the grace leaves the restarted node time to rejoin for round 3 on a busy machine.
        // Two parties estimating gradients flat out on two cores stalled the whole test process past the fixture's 2 s
        // heartbeat pause (3.6 s once): every node saw every other unreachable and the split-brain resolver downed them
        // all, so the job's status went unanswered; a CI run failed the same way with a 6 s pause. As in the IPR
        // and cancel specs, reference.conf's failure detector and split-brain timing ride that out, as they must in a
        // real federation; food's crash is then seen after about 30 s, well inside round 2's 60 s deadline.
        var patient = FederationFixture.LoadTolerant.WithFallback(FederationFixture.FastCluster);
        var crash = ConfigurationFactory.ParseString("""
            fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 2, action = terminate }]
            fate-llm.round.absent-grace = 25s
            """).WithFallback(patient);
        await using var fed = await FederationFixture.Start(g, crash);
        var spec = FederationFixture.Job(g, "kseed", rounds: 3, quorum: 2, deadlineSeconds: 60) with
        {
            Algorithm = JobFile.Algorithm(FedKSeedAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["steps"] = "100", ["learning-rate"] = "1e-4", ["batch-size"] = "2",
            }),
        };
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        // food's node dies in round 2; restarted on the same data directory, it rejoins for round 3 and catches up by replay.
        await fed.Parties["food"].System.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(120));
        await fed.CrashParty("food");
        await fed.WaitAsync(spec.JobId, TimeSpan.FromSeconds(120), s => s.CompletedRounds >= 2);
        fed.StartParty("food", overrides: patient);
        var status = await fed.WaitAsync(spec.JobId, TimeSpan.FromSeconds(180));
        Assert.True(status.State == JobState.Completed, status.Reason);

        Assert.Equal([1, 2, 3], status.Rounds.Select(r => r.Round));
        var round2 = status.Rounds[1].Parties.ToDictionary(p => p.Org);
        Assert.False(round2["food"].Succeeded);
        Assert.True(round2["animal"].Succeeded && round2["artifact"].Succeeded);
        Assert.All(status.Rounds[2].Parties, p => Assert.True(p.Succeeded, $"{p.Org} rejoins in round 3: {p.Reason}"));
        // The wire, from the transfer accounting: 8 bytes a step up; one round's history down (the model never travels).
        foreach (var p in status.Rounds.SelectMany(r => r.Parties).Where(p => p.Succeeded))
        {
            Assert.Equal(8 + 8 * 100, p.UploadBytes);
            Assert.InRange(p.DownloadBytes, 0, 18_000);
        }
        Assert.True(status.Rounds[2].Parties.Single(p => p.Org == "animal").DownloadBytes > 0, "round 2's history is downloaded in round 3");
        // The restarted food may still get round 2's buffered request (and cache round 1 then); it catches up either way.
        Assert.InRange(status.Rounds[2].Parties.Single(p => p.Org == "food").Metrics["kseed.replayed-rounds"], 1, 2);
        Assert.Equal(1, status.Rounds[2].Parties.Single(p => p.Org == "animal").Metrics["kseed.replayed-rounds"]);

        // The arbiter's export moved every kind of tensor, and two fresh processes rebuild it bit for bit from the history.
        var exported = Path.Combine(spec.OutputDir, "model");
        using (var before = HfCheckpoint.Load(g.Model))
        using (var after = HfCheckpoint.Load(exported))
        {
            var moved = after.BaseParameters().Zip(before.BaseParameters()).Count(x => !OffsiteSpec.Same(x.Item1.Param, x.Item2.Param));
            Assert.Equal(before.BaseParameters().Count, moved);
        }
        var history = Path.Combine(spec.OutputDir, "history");
        Assert.Equal(3, Directory.GetFiles(history, "round-*.ksr").Length);
        var digests = new[] { 1, 2 }.Select(threads => Replay(g.Model, history, Path.Combine(g.Root, $"replay-{threads}"), threads)).ToArray();
        Assert.Equal(digests[0], digests[1]);
        Assert.Equal(HfCheckpoint.WeightsDigest(exported), digests[0]);
    }

    static string Replay(string model, string history, string output, int threads)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "fate-llm.dll"), "fedkseed", "replay", "--model", model, "--history", history,
                     "--out", output, "--threads", threads.ToString() })
            psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEnd();
        var stderr = process.StandardError.ReadToEnd();
        Assert.True(process.WaitForExit(120_000), "replay timed out");
        Assert.True(process.ExitCode == 0, stderr);
        Assert.Contains("replayed 3 rounds", stdout);
        return stdout.Split('\n').Single(l => l.StartsWith("weights ")).Split(' ')[1].Trim();
    }
}
