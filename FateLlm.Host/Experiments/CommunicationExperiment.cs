using System.Diagnostics;
using System.Text;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Compression;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Metrics;
using FateLlm.Training.Peft;
using FateLlm.Training.Reporting;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

/// <summary>One setting of the communication experiment: how updates travel, or which LoRA rank each party trains.</summary>
/// <param name="Ranks">Each party's rank in party order (null: the experiment's r = 8 for all).</param>
public sealed record CommunicationSetting(string Name, CompressionOptions Compression, int[]? Ranks = null, bool Homogeneous = false,
    LoraRankRule Rule = LoraRankRule.ZeroPad)
{
    /// <summary>The job of this setting: the compression, and the ranks as parties' own (or, homogeneous, the job's one rank).</summary>
    public JobSpec Apply(JobSpec spec)
    {
        spec = spec with { Compression = Compression, Aggregation = spec.Aggregation with { LoraRanks = Rule } };
        if (Ranks is null) return spec;
        var scaling = spec.Peft.LoraAlpha / spec.Peft.LoraR;
        return Homogeneous
            ? spec with { Peft = spec.Peft with { LoraR = Ranks[0], LoraAlpha = Ranks[0] * scaling } }
            : spec with { Parties = spec.Parties.Select((p, i) => p with { Peft = new PartyPeft(Ranks[i], null) }).ToArray() };
    }
}

/// <summary>One federated job: its bytes per party and round (measured by the federation's transfers) and its scores.</summary>
/// <param name="DownAfterFirst">Down bytes per party and round after round 1 (which every party downloads in full).</param>
public sealed record CommunicationRun(string Setting, int Seed, double Up, double Down, double DownAfterFirst, RunResult Run);

public sealed record CompressionResult(ExperimentSettings Settings, ZooCard Base, List<CommunicationRun> Runs, double Seconds);

/// <summary>
/// Update compression on the paper's WordNet setting (three parties, LoRA r = 8 on q and v, FedAvg): the same job
/// through the in-process federation per way of sending updates and seed, scored on one test set; bytes are what the
/// federation's transfers moved per party and round, up and down.
/// </summary>
public sealed class CommunicationExperiment(ExperimentSettings s, Action<string> log)
{
    public const string Baseline = "fp32";

    static CompressionOptions Up(CompressionScheme up, bool feedback = true) => CompressionOptions.Off with { Up = up, ErrorFeedback = feedback };

    public static readonly IReadOnlyList<CommunicationSetting> Settings =
    [
        new(Baseline, CompressionOptions.Off),
        new("fp16 up", Up(CompressionScheme.Fp16)),
        new("int8 up", Up(CompressionScheme.Int8)),
        new("nf4 up", Up(CompressionScheme.Nf4)),
        new("nf4 up, no error feedback", Up(CompressionScheme.Nf4, feedback: false)),
        new("top-1% up", Up(CompressionScheme.TopK)),
        new("top-1% up, no error feedback", Up(CompressionScheme.TopK, feedback: false)),
        new("nf4 both ways", Up(CompressionScheme.Nf4) with { Down = CompressionScheme.Nf4 }),
        new("top-1% up, int8 down", Up(CompressionScheme.TopK) with { Down = CompressionScheme.Int8 }),
    ];

    public const string RankFloor = "r = 4 everywhere";
    /// <summary>r = 8 for every party is the fp32 baseline's job itself: its runs serve both tables.</summary>
    const string RankMiddle = Baseline;

    /// <summary>Parties of different ranks (the weakest 4, the strongest 16) against one rank for all, every α/r = 2.</summary>
    public static readonly IReadOnlyList<CommunicationSetting> RankSettings =
    [
        new(RankFloor, CompressionOptions.Off, [4], Homogeneous: true),
        new("r = 16 everywhere", CompressionOptions.Off, [16], Homogeneous: true),
        new("zero-pad (HetLoRA), ranks 4 / 8 / 16", CompressionOptions.Off, [4, 8, 16]),
        new("svd (FlexLoRA), ranks 4 / 8 / 16", CompressionOptions.Off, [4, 8, 16], Rule: LoraRankRule.Svd),
        new("stack (FLoRA), ranks 4 / 8 / 16", CompressionOptions.Off, [4, 8, 16], Rule: LoraRankRule.Stack),
    ];

    /// <summary>Which settings a run measures: compression, ranks, or both.</summary>
    public enum Part { All, Compression, Ranks }

    /// <summary>The issue's goal: upload ≤ 10 % of fp32 with the paired ROUGE-L difference's interval including 0 or above −0.3.</summary>
    public const double UploadGoal = 0.10, ScoreTolerance = 0.3;

    public async Task<CompressionResult> RunAsync(Part part = Part.All, IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        var paper = new PaperExperiment(s, log);
        var (basePath, card) = paper.EnsureBase();
        var evaluation = s.Evaluation(split);
        // The fp32 runs are the baseline of both parts.
        var settings = (part switch { Part.Compression => Settings, Part.Ranks => [Settings[0], .. RankSettings], _ => [.. Settings, .. RankSettings] }).ToList();
        log($"communication: {settings.Count} settings × seeds {string.Join(", ", s.Seeds)}, {s.Rounds} rounds; scored on {evaluation.Count} " +
            $"{(s.EvaluateOn == EvaluationSet.Test ? "test" : "dev")} examples");
        var runs = new List<CommunicationRun>();
        foreach (var seed in s.Seeds)
            foreach (var setting in settings)
            {
                var sw = Stopwatch.StartNew();
                // A federation of its own per job: parties' stores start empty, so no job downloads less because an earlier
                // one left the same blob behind (the round-1 global is the same in every job of a seed).
                await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split),
                    PaperExperiment.QuietCluster);
                var id = $"comm-{runs.Count}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
                var spec = setting.Apply(paper.Job(id, basePath, fed, "lora", seed));
                if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {id} rejected: {r.Reason}");
                var status = await fed.WaitAsync(id, TimeSpan.FromHours(2), progress: progress);
                if (status.State != JobState.Completed) throw new InvalidOperationException($"{setting.Name} seed {seed}: {status.State}: {status.Reason}");
                var scores = paper.Evaluate(basePath, Path.Combine(status.OutputDir!, "adapter"), evaluation);
                var answered = status.Rounds.SelectMany(x => x.Parties.Where(p => p.Succeeded).Select(p => (x.Round, p))).ToList();
                var run = new CommunicationRun(setting.Name, seed, answered.Average(x => (double)x.p.UploadBytes), answered.Average(x => (double)x.p.DownloadBytes),
                    answered.Where(x => x.Round > 1).Select(x => (double)x.p.DownloadBytes).DefaultIfEmpty(double.NaN).Average(),
                    new RunResult("lora", setting.Name, seed, scores, sw.Elapsed.TotalSeconds));
                runs.Add(run);
                log($"{setting.Name} seed {seed}: up {run.Up / 1024:F1} KiB, down {run.Down / 1024:F1} KiB per party and round; ROUGE-L {scores.RougeL:F2}, loss {scores.Loss:F3}");
            }
        return new CompressionResult(s, card, runs, clock.Elapsed.TotalSeconds);
    }

    public static void Write(CompressionResult r, string outDir)
    {
        var plot = Path.Combine(outDir, "communication-score-vs-bytes.png");
        var fp32 = r.Runs.Where(x => x.Setting == Baseline).Average(x => x.Up);
        LineChart.Save(plot, "ROUGE-L against upload size", "upload per party and round, % of fp32", "ROUGE-L",
            Settings.Concat(RankSettings).Select(st => r.Runs.Where(x => x.Setting == st.Name).ToList()).Where(xs => xs.Count > 0)
                .Select(xs => new Series(xs[0].Setting, [100 * xs.Average(x => x.Up) / fp32], [xs.Average(x => x.Run.Scores.RougeL)])), integerX: false);
        ExperimentReport.WriteResults(outDir, "communication", new
        {
            r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, evaluateOn = r.Settings.EvaluateOn.ToString(), r.Seconds,
            settings = Settings.Concat(RankSettings).Select(x => new { x.Name, up = CompressionOptions.Name(x.Compression.Up), down = CompressionOptions.Name(x.Compression.Down), x.Compression.ErrorFeedback, x.Ranks, x.Homogeneous }),
            runs = r.Runs.Select(x => new { x.Setting, x.Seed, x.Up, x.Down, x.DownAfterFirst, x.Run.Scores.RougeL, x.Run.Scores.Bleu4, x.Run.Scores.Loss, x.Run.Seconds }),
        }, Markdown(r));
    }

    public static string Markdown(CompressionResult r)
    {
        var s = r.Settings;
        var sb = new StringBuilder();
        sb.AppendLine($"# Update compression on WordNet — {r.Base.Name}");
        sb.AppendLine();
        sb.AppendLine($"3 parties, LoRA r = 8 (q, v), FedAvg, {s.Rounds} rounds × {s.LocalEpochs} local epoch(s), {s.TrainPerParty} training examples per party; " +
            $"block 64 for int8 / NF4 scales; seeds {string.Join(", ", s.Seeds)}; scored on the {(s.EvaluateOn == EvaluationSet.Test ? "all-domain test set" : "parties' pooled dev sets")}; " +
            $"{r.Seconds / 60:F1} min. Bytes are what the federation's transfers moved per party and round (payload and headers), averaged over rounds, parties and seeds; " +
            "down after round 1 leaves out round 1, which every party downloads in full.");
        sb.AppendLine();
        var fp32 = r.Runs.Where(x => x.Setting == Baseline).ToList();
        var (fp32Up, fp32Down) = (fp32.Average(x => x.Up), fp32.Average(x => x.Down));
        sb.AppendLine("| setting | up KiB | up % fp32 | down KiB | down % fp32 | down after round 1 % | ROUGE-L − fp32 [95 % CI] | goal |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|");
        var met = new List<string>();
        foreach (var setting in Settings)
        {
            var mine = r.Runs.Where(x => x.Setting == setting.Name).ToList();
            if (mine.Count == 0) continue;
            var (up, down, later) = (mine.Average(x => x.Up), mine.Average(x => x.Down), mine.Average(x => x.DownAfterFirst));
            var d = Bootstrap.PairedDifference(ExperimentReport.PerExample(mine.Select(x => x.Run), x => x.RougeLPerExample),
                ExperimentReport.PerExample(fp32.Select(x => x.Run), x => x.RougeLPerExample));
            var small = up / fp32Up <= UploadGoal;
            var kept = d.Low <= 0 && d.High >= 0 || d.Estimate > -ScoreTolerance;
            var goal = setting.Name == Baseline ? "—" : small && kept ? "met" : small ? "small enough, score lost" : "not ≤ 10 %";
            if (goal == "met") met.Add(setting.Name);
            sb.AppendLine($"| {setting.Name} | {up / 1024:F1} | {100 * up / fp32Up:F2} | {down / 1024:F1} | {100 * down / fp32Down:F2} | " +
                $"{100 * later / fp32.Average(x => x.DownAfterFirst):F2} | {(setting.Name == Baseline ? "—" : $"{ExperimentReport.Signed(d)}")} | {goal} |");
        }
        sb.AppendLine();
        sb.AppendLine("Scores (each example averaged over seeds; 95 % bootstrap intervals):");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs.Select(x => x.Run).ToList(), modelColumn: false);
        sb.AppendLine();
        sb.AppendLine($"Goal — upload ≤ {UploadGoal:P0} of fp32 (NVFlare's best published: 14.06 %) with the paired ROUGE-L difference's interval including 0 or " +
            $"its estimate above −{ScoreTolerance}: {(met.Count > 0 ? "met by " + string.Join(", ", met) : "met by no setting")}.");
        sb.AppendLine();
        sb.AppendLine("![ROUGE-L against upload size](communication-score-vs-bytes.png)");
        IReadOnlyList<RunResult> Of(string name) => r.Runs.Where(x => x.Setting == name).Select(x => x.Run).ToList();
        if (Of(RankFloor).Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("## Parties of different LoRA ranks");
            sb.AppendLine();
            sb.AppendLine("Ranks 4, 8 and 16 across the three parties (α/r = 2 everywhere) under each rule, against one rank for every party. " +
                "Up and down: zero-pad sends the largest rank's shapes both ways; svd and stack send each party's own factors " +
                "(stack also sends the growing stacked global down every round).");
            sb.AppendLine();
            sb.AppendLine("| setting | up KiB | down KiB | ROUGE-L − r = 4 everywhere [95 % CI] | ROUGE-L − r = 8 everywhere (fp32) [95 % CI] |");
            sb.AppendLine("|---|---|---|---|---|");
            foreach (var setting in RankSettings.Prepend(Settings[0]))
            {
                var mine = r.Runs.Where(x => x.Setting == setting.Name).ToList();
                string Diff(string other)
                {
                    if (setting.Name == other) return "—";
                    var d = Bootstrap.PairedDifference(ExperimentReport.PerExample(Of(setting.Name), x => x.RougeLPerExample), ExperimentReport.PerExample(Of(other), x => x.RougeLPerExample));
                    return $"{ExperimentReport.Signed(d)}";
                }
                sb.AppendLine($"| {(setting.Name == Baseline ? "r = 8 everywhere (fp32)" : setting.Name)} | {mine.Average(x => x.Up) / 1024:F1} | {mine.Average(x => x.Down) / 1024:F1} | {Diff(RankFloor)} | {Diff(RankMiddle)} |");
            }
            sb.AppendLine();
            sb.AppendLine($"Goal — each rule at least as good as r = 4 everywhere (the weakest party's rank; \"holds\" when the paired interval stays above −{ScoreTolerance} ROUGE-L):");
            foreach (var rule in RankSettings.Where(x => !x.Homogeneous).Select(x => x.Name).Where(n => Of(n).Count > 0))
            {
                var floor = Bootstrap.PairedDifference(ExperimentReport.PerExample(Of(rule), x => x.RougeLPerExample), ExperimentReport.PerExample(Of(RankFloor), x => x.RougeLPerExample));
                var middle = Bootstrap.PairedDifference(ExperimentReport.PerExample(Of(rule), x => x.RougeLPerExample), ExperimentReport.PerExample(Of(RankMiddle), x => x.RougeLPerExample));
                sb.AppendLine($"- {rule}: {ExperimentReport.Verdict(floor, above: false, ScoreTolerance)} ({ExperimentReport.Signed(floor)} " +
                    $"against r = 4); against r = 8 everywhere {ExperimentReport.Signed(middle)}.");
            }
        }
        return sb.ToString();
    }
}
