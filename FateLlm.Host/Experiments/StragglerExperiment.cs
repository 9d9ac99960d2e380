using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Federation;
using FateLlm.Training.Metrics;
using FateLlm.Training.Reporting;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

/// <summary>One job of the straggler experiment: when each version (round or flush) was published and the dev loss of its global.</summary>
/// <param name="Seconds">Wall seconds from the job's submission to each version's journal entry.</param>
/// <param name="DevLoss">The pooled dev loss of each version's global adapter (index 0: the initial adapter).</param>
public sealed record StragglerRun(string Setting, int Seed, bool Straggler, bool Buffered, double[] Seconds, double[] DevLoss, double JobSeconds, RunResult Final,
    double MeanStaleness);

public sealed record StragglerResult(ExperimentSettings Settings, ZooCard Base, double Slowdown, string SlowParty, ScheduleSpec Buffered, int Versions,
    List<StragglerRun> Runs, double Seconds);

/// <summary>
/// Stragglers on the paper's WordNet setting: the three parties' LoRA job with one party's training slowed (the
/// <c>fate-llm.party.slowdown</c> fault injection), synchronous FedAvg against the buffered schedule (FedBuff), with
/// and without the straggler. Each version's global is scored on the parties' pooled dev set afterwards (dev loss
/// against wall time); the final adapters on the test set. The buffered job publishes twice the versions that apply as
/// many updates as the synchronous rounds (2·⌈rounds · parties / K⌉), so that its time to sync's final dev loss can be
/// read off its curve; its final scores are after all of them.
/// </summary>
/// <param name="buffer">K of the buffered runs; null: parties − 1.</param>
public sealed class StragglerExperiment(ExperimentSettings s, Action<string> log, double slowdown = 4, int? buffer = null)
{
    public const string Sync = "sync", Buffered = "buffered";
    /// <summary>The issue's goals: buffered reaches sync's final dev loss in ≤ 0.5× its wall time with a straggler, ≤ 1.1× without.</summary>
    public const double StragglerGoal = 0.5, NoStragglerGoal = 1.1;

    public async Task<StragglerResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        var paper = new PaperExperiment(s, log);
        var (basePath, card) = paper.EnsureBase();
        var test = s.Evaluation(split);
        var dev = split.Parties.Values.SelectMany(p => InstructionData.ReadJsonl(p.Dev, PaperExperiment.Data)).ToList();
        var datasets = PaperExperiment.Datasets(split);
        var parties = datasets.Keys.Order(StringComparer.Ordinal).ToList();
        var slow = parties[^1];
        // A party F times slower comes back about F·(P − 1)/K versions late: the bound leaves it room to count (weighted),
        // where the reference default of 4 refused a 4× straggler's every update in two of three seeds of the first run.
        var schedule = ScheduleSpec.Synchronous with
        {
            Mode = ScheduleMode.Buffered, Buffer = buffer ?? parties.Count - 1, MaxStaleness = (int)Math.Ceiling(3 * slowdown), Weighting = StalenessWeighting.Polynomial,
            Exponent = 0.5, Concurrency = parties.Count,
        };
        if (schedule.Buffer < 1 || schedule.Buffer > parties.Count) throw new ArgumentException($"--buffer must be between 1 and the {parties.Count} parties, got {schedule.Buffer}");
        // Twice the versions that apply as many updates as sync: room to reach sync's final dev loss however late (its time
        // to that loss is read off the curve, not at the end).
        var versions = 2 * (int)Math.Ceiling(s.Rounds * parties.Count / (double)schedule.Buffer);
        log($"stragglers: {parties.Count} parties, {slow} {slowdown:G3}× slower; sync {s.Rounds} rounds against buffered K = {schedule.Buffer}, " +
            $"{versions} versions; seeds {string.Join(", ", s.Seeds)}; dev loss on {dev.Count} pooled dev examples, final scores on {test.Count} {(s.EvaluateOn == EvaluationSet.Test ? "test" : "dev")} examples");
        var runs = new List<StragglerRun>();
        foreach (var seed in s.Seeds)
            foreach (var straggler in new[] { true, false })
                foreach (var buffered in new[] { false, true })
                {
                    var setting = $"{(buffered ? Buffered : Sync)}, {(straggler ? $"{slow} {slowdown:G3}× slower" : "no straggler")}";
                    IReadOnlyDictionary<string, double> overrides = straggler ? new Dictionary<string, double> { [slow] = slowdown } : new Dictionary<string, double>();
                    await using var fed = await Federation(datasets, overrides);
                    var id = $"straggle-{runs.Count}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
                    var spec = paper.Job(id, basePath, fed, "lora", seed);
                    if (buffered) spec = spec with { Schedule = schedule, Rounds = versions };
                    var submitted = DateTime.UtcNow;
                    if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {id} rejected: {r.Reason}");
                    var status = await fed.WaitAsync(id, TimeSpan.FromHours(2), progress: progress);
                    if (status.State != JobState.Completed) throw new InvalidOperationException($"{setting} seed {seed}: {status.State}: {status.Reason}");
                    var events = Events(status.OutputDir!);
                    var seconds = Published(events, submitted);
                    var losses = DevLosses(spec, basePath, fed, status, dev, events);
                    var final = paper.Evaluate(basePath, Path.Combine(status.OutputDir!, "adapter"), test);
                    var staleness = status.Rounds.SelectMany(x => x.Buffer?.Contributions ?? []).Select(c => (double)c.Staleness).DefaultIfEmpty(0).Average();
                    var run = new StragglerRun(setting, seed, straggler, buffered, seconds, losses, seconds[^1], new RunResult("lora", setting, seed, final, seconds[^1]), staleness);
                    runs.Add(run);
                    log($"{setting} seed {seed}: {seconds.Length} versions in {seconds[^1]:F0} s, dev loss {losses[0]:F3} → {losses[^1]:F3}, ROUGE-L {final.RougeL:F2}" +
                        (buffered ? $", mean staleness {staleness:F2}" : ""));
                }
        return new StragglerResult(s, card, slowdown, slow, schedule, versions, runs, clock.Elapsed.TotalSeconds);
    }

    /// <summary>A federation of its own per job, the slowed parties' nodes started with their slowdown.</summary>
    async Task<LocalFederation> Federation(Dictionary<string, IReadOnlyDictionary<string, string>> datasets, IReadOnlyDictionary<string, double> slowed)
    {
        var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks),
            datasets.Where(kv => !slowed.ContainsKey(kv.Key)).ToDictionary(), PaperExperiment.QuietCluster);
        foreach (var (org, factor) in slowed)
        {
            var node = fed.StartParty(org, datasets[org], ConfigurationFactory.ParseString($"fate-llm.party.slowdown = {factor.ToString(CultureInfo.InvariantCulture)}")
                .WithFallback(PaperExperiment.QuietCluster));
            await node.WhenUp(TimeSpan.FromSeconds(60));
        }
        return fed;
    }

    /// <summary>The job's event record (events.jsonl), each line as JSON.</summary>
    static List<JsonNode> Events(string outputDir) => File.ReadLines(Path.Combine(outputDir, "events.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();

    /// <summary>Seconds from submission to each RoundCompleted in the job's event record (a flush under the buffered schedule).</summary>
    static double[] Published(IEnumerable<JsonNode> events, DateTime submitted) =>
        events.Where(n => (string?)n["type"] == nameof(RoundCompleted))
            .Select(n => (DateTime.Parse((string)n["event"]!["At"]!, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal) - submitted).TotalSeconds)
            .ToArray();

    /// <summary>The pooled dev loss of the initial adapter and of each version's global, read back from the arbiter's store.</summary>
    static double[] DevLosses(JobSpec spec, string basePath, LocalFederation fed, JobStatus status, List<Example> dev, IEnumerable<JsonNode> events)
    {
        using var run = FederatedComputation.Open(spec, basePath);
        double Loss(string digest)
        {
            run.LoadTrainable(fed.Arbiter.Store.Read(digest), "global adapter");
            return run.Evaluate(dev, spec.Data, new EvalOptions { Generate = false, BatchSize = 32 }).Loss;
        }
        var initial = (string)events.First(n => (string?)n["type"] == nameof(JobSubmitted))["event"]!["Initial"]!["Artifacts"]![Training.Algorithms.AlgorithmState.Global]!;
        return status.Rounds.Select(r => r.GlobalDigest ?? throw new InvalidOperationException($"version {r.Round} has no global")).Prepend(initial).Select(Loss).ToArray();
    }

    /// <summary>Seconds until the run's dev loss first reaches <paramref name="target"/> (linear between versions), or NaN when it never does.</summary>
    public static double TimeTo(StragglerRun run, double target)
    {
        if (run.DevLoss[0] <= target) return 0;
        for (int i = 1; i < run.DevLoss.Length; i++)
            if (run.DevLoss[i] <= target)
            {
                var (t0, t1) = (i == 1 ? 0 : run.Seconds[i - 2], run.Seconds[i - 1]);
                var (l0, l1) = (run.DevLoss[i - 1], run.DevLoss[i]);
                return l0 == l1 ? t1 : t0 + (t1 - t0) * (l0 - target) / (l0 - l1);
            }
        return double.NaN;
    }

    /// <summary>
    /// Per seed: buffered's time to a dev loss over sync's own time to it (same seed, same straggler setting). The target
    /// is sync's start minus <paramref name="share"/> of its drop: 1 is sync's final dev loss (the goal's target).
    /// </summary>
    public static IReadOnlyList<(int Seed, double Ratio)> Ratios(StragglerResult r, bool straggler, double share = 1) =>
        r.Runs.Where(x => x.Straggler == straggler && !x.Buffered).Select(sync =>
        {
            var buffered = r.Runs.Single(x => x.Straggler == straggler && x.Buffered && x.Seed == sync.Seed);
            var target = sync.DevLoss[0] - share * (sync.DevLoss[0] - sync.DevLoss[^1]);
            return (sync.Seed, TimeTo(buffered, target) / TimeTo(sync, target));
        }).ToList();

    /// <summary>The second reading: 90 % of sync's dev-loss drop, since its final value sits where the curves flatten and a thousandth decides.</summary>
    public const double NearShare = 0.9;

    public static void Write(StragglerResult r, string outDir)
    {
        var seed = r.Settings.Seeds[0];
        LineChart.Save(Path.Combine(outDir, "stragglers-dev-loss.png"), $"Dev loss against wall time (seed {seed})", "seconds since submission", "pooled dev loss",
            r.Runs.Where(x => x.Seed == seed).Select(x => new Series(x.Setting, [0, .. x.Seconds], x.DevLoss)), integerX: false);
        ExperimentReport.WriteResults(outDir, "stragglers", new
        {
            r.Settings.Seeds, r.Settings.Rounds, r.Versions, r.Settings.TrainPerParty, r.Settings.DevPerParty, r.Settings.TestPerParty, r.Slowdown, r.SlowParty,
            buffered = new { r.Buffered.Buffer, r.Buffered.MaxStaleness, weighting = r.Buffered.Weighting.ToString(), r.Buffered.Exponent, r.Buffered.Concurrency },
            evaluateOn = r.Settings.EvaluateOn.ToString(), r.Seconds,
            runs = r.Runs.Select(x => new { x.Setting, x.Seed, x.Straggler, x.Buffered, x.Seconds, x.DevLoss, x.JobSeconds, x.MeanStaleness, x.Final.Scores.RougeL, x.Final.Scores.Bleu4, x.Final.Scores.Loss }),
        }, Markdown(r));
    }

    /// <summary>Median [min, max]; a ratio of a run that never reached its target (NaN) counts as infinitely slow.</summary>
    static string Range(IReadOnlyList<double> xs)
    {
        var sorted = xs.Select(x => double.IsNaN(x) ? double.PositiveInfinity : x).Order().ToList();
        if (sorted.Count == 0) return "–";
        var median = sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
        return $"{F(median)} [{F(sorted[0])}, {F(sorted[^1])}]";
    }

    static string F(double ratio) => double.IsFinite(ratio) ? ratio.ToString("F2", CultureInfo.InvariantCulture) : "never";

    public static string Markdown(StragglerResult r)
    {
        var s = r.Settings;
        var sb = new StringBuilder();
        sb.AppendLine($"# Stragglers: synchronous FedAvg against buffered (FedBuff) — {r.Base.Name}");
        sb.AppendLine();
        sb.AppendLine($"3 parties (WordNet domains), LoRA r = 8 (q, v), {s.TrainPerParty} training examples per party, {s.LocalEpochs} local epoch per round or dispatch. " +
            $"Sync: {s.Rounds} rounds. Buffered: K = {r.Buffered.Buffer}, concurrency {r.Buffered.Concurrency}, max staleness {r.Buffered.MaxStaleness}, " +
            $"w(s) = (1 + s)^−{r.Buffered.Exponent:G3}, {r.Versions} versions (twice the updates sync applies: its time to sync's final dev loss is read off its curve, its final scores are after all of them). Straggler: {r.SlowParty} trains {r.Slowdown:G3}× slower " +
            $"(fate-llm.party.slowdown: its trainer pauses {r.Slowdown - 1:G3}× each step's time). Seeds {string.Join(", ", s.Seeds)}; each job on a federation of its own " +
            $"in this process; {r.Seconds / 60:F1} min in all. Dev loss: each version's global on the pooled dev set ({s.DevPerParty} per party); final scores on the " +
            $"{(s.EvaluateOn == EvaluationSet.Test ? "all-domain test set" : "pooled dev set")}.");
        sb.AppendLine();
        sb.AppendLine("| setting | seeds | job seconds (median [min, max]) | final dev loss | mean staleness | ROUGE-L [95 % CI] |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var g in r.Runs.GroupBy(x => x.Setting))
        {
            var rl = Bootstrap.Mean(ExperimentReport.PerExample(g.Select(x => x.Final), x => x.RougeLPerExample));
            sb.AppendLine($"| {g.Key} | {g.Count()} | {Range(g.Select(x => x.JobSeconds).ToList())} | {g.Average(x => x.DevLoss[^1]):F3} | " +
                $"{(g.First().Buffered ? g.Average(x => x.MeanStaleness).ToString("F2", CultureInfo.InvariantCulture) : "—")} | {rl.Estimate:F2} [{rl.Low:F2}, {rl.High:F2}] |");
        }
        sb.AppendLine();
        sb.AppendLine("Time for buffered to reach the synchronous run's final dev loss, over sync's own time to it (per seed; median [min, max]); final ROUGE-L buffered − sync " +
            "(paired over test examples, each averaged over seeds):");
        sb.AppendLine();
        sb.AppendLine("| condition | time ratio per seed | median [min, max] | goal | to 90 % of sync's drop: per seed, median | ROUGE-L buffered − sync [95 % CI] | not worse |");
        sb.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var straggler in new[] { true, false })
        {
            var ratios = Ratios(r, straggler);
            if (ratios.Count == 0) continue;
            var goal = straggler ? StragglerGoal : NoStragglerGoal;
            var values = ratios.Select(x => x.Ratio).ToList();
            var reached = values.All(double.IsFinite);
            var verdict = !reached ? $"does not hold: buffered never reached the target in {values.Count(v => !double.IsFinite(v))} of {values.Count} seeds"
                : values.All(v => v <= goal) ? "holds in every seed" : values.Order().ElementAt(values.Count / 2) <= goal ? "holds on the median only" : "does not hold";
            var d = Bootstrap.PairedDifference(ExperimentReport.PerExample(r.Runs.Where(x => x.Straggler == straggler && x.Buffered).Select(x => x.Final), x => x.RougeLPerExample),
                ExperimentReport.PerExample(r.Runs.Where(x => x.Straggler == straggler && !x.Buffered).Select(x => x.Final), x => x.RougeLPerExample));
            var near = Ratios(r, straggler, NearShare);
            sb.AppendLine($"| {(straggler ? $"{r.SlowParty} {r.Slowdown:G3}× slower" : "no straggler")} | {string.Join(", ", ratios.Select(x => $"seed {x.Seed}: {F(x.Ratio)}"))} | " +
                $"{Range(values)} | ≤ {goal:G2}: {verdict} | {string.Join(", ", near.Select(x => F(x.Ratio)))}; median {Range(near.Select(x => x.Ratio).ToList())} | " +
                $"{ExperimentReport.Signed(d)} | {(d.Low <= 0 && d.High >= 0 || d.Low > 0 ? "yes" : "no")} |");
        }
        sb.AppendLine();
        sb.AppendLine("![Dev loss against wall time](stragglers-dev-loss.png)");
        sb.AppendLine();
        sb.AppendLine("Final scores (each example averaged over seeds; 95 % bootstrap intervals):");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs.Select(x => x.Final).ToList(), modelColumn: false);
        return sb.ToString();
    }
}
