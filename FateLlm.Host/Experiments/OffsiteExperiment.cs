using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.Offsite;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Metrics;
using FateLlm.Training.Models;
using FateLlm.Training.Trainer;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

/// <summary>The offsite experiment's own knobs; data, seeds, rounds and evaluation come from <see cref="ExperimentSettings"/>.</summary>
public sealed record OffsiteOptions
{
    public int Bottom { get; init; } = 1;
    public int Top { get; init; } = 1;
    public int Emulator { get; init; } = 2;
    /// <summary>Adapter blocks train fully, as in the Offsite-Tuning paper.</summary>
    public double AdapterLearningRate { get; init; } = 1e-3;
    public int DistillSteps { get; init; } = 400;
    public double DistillLearningRate { get; init; } = 5e-4;

    public static OffsiteOptions Quick => new() { DistillSteps = 150 };
}

public sealed record OffsiteTransfer(long SubModelBytes, long AdapterBytes, long DownPerPartyRound1, long UpPerPartyRound, long FullModelBytes,
    long SubModelParameters, long FullModelParameters);

public sealed record OffsiteResult(ExperimentSettings Settings, OffsiteOptions Options, ZooCard Model, EmulatorPlan Plan, List<RunResult> Runs,
    OffsiteTransfer Transfer, double Seconds);

/// <summary>
/// The Offsite-Tuning paper's columns on WordNet's all-domain test, through the federation: full model zero-shot, emulator
/// zero-shot, emulator fine-tuned, plug-in (FedOST+, three parties), plug-in from one party (FedOST), and federated LoRA
/// on the full model as the upper reference; with and without emulator distillation; bytes per party.
/// </summary>
public sealed class OffsiteExperiment(ExperimentSettings s, OffsiteOptions o, Action<string> log)
{
    public const string ZeroShot = "full zero-shot", EmulatorZeroShot = "emulator zero-shot", EmulatorTuned = "emulator fine-tuned",
        PlugIn = "plug-in (FedOST+)", PlugInSingle = "plug-in (FedOST, one party)", FullLora = "full model, federated LoRA";

    public async Task<OffsiteResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        var paper = new PaperExperiment(s, log);
        var (full, card) = paper.EnsureBase();
        var corpus = s.Zoo.Open(s.ZooRoot ?? s.Zoo.Root, s.WordNetDir, log).PublicCorpus().Path;
        var test = InstructionData.ReadJsonl(split.Test, PaperExperiment.Data);
        var config = ModelConfig.Load(Path.Combine(full, HfCheckpoint.ConfigFile));
        var plan = EmulatorPlan.Choose(config.NumLayers, o.Bottom, o.Top, o.Emulator);
        log($"offsite: {card.Name} ({config.NumLayers} blocks), adapters {string.Join(",", plan.Bottom.Concat(plan.Top))}, emulator {string.Join(",", plan.Emulator)}; test {test.Count} examples");
        var runs = new List<RunResult> { new("-", ZeroShot, 0, paper.Evaluate(full, null, test), 0) };
        Log(runs[^1]);
        var plainEmulator = Materialize(SubModel.Bundle(full, plan), "emulator-plain");
        runs.Add(new RunResult("plain", EmulatorZeroShot, 0, paper.Evaluate(plainEmulator, null, test), 0));
        Log(runs[^1]);

        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split), PaperExperiment.QuietCluster);
        var orgs = fed.Parties.Keys.Order().ToArray();
        OffsiteTransfer? transfer = null;
        foreach (var seed in s.Seeds)
        {
            foreach (var distilled in new[] { false, true })
            {
                var variant = distilled ? "distilled" : "plain";
                var (status, outDir) = await Offsite(fed, full, orgs, seed, distilled, corpus, progress);
                runs.Add(new RunResult(variant, PlugIn, seed, paper.Evaluate(Path.Combine(outDir, "model"), null, test), 0));
                Log(runs[^1]);
                runs.Add(new RunResult(variant, EmulatorTuned, seed, paper.Evaluate(Path.Combine(outDir, "emulator"), null, test), 0));
                Log(runs[^1]);
                if (distilled && seed == s.Seeds[0])
                {
                    // The distilled emulator as parties receive it, before any tuning.
                    var store = new BlobStore(Path.Combine(fed.Root, "arbiter", "blobs"));
                    var folder = Materialize(store.Read(status.Artifacts[OffsiteAlgorithm.SubModelArtifact]), "emulator-distilled");
                    runs.Add(new RunResult("distilled", EmulatorZeroShot, 0, paper.Evaluate(folder, null, test), 0));
                    Log(runs[^1]);
                }
                if (!distilled && seed == s.Seeds[0]) transfer = Transfer(status, full, plan);
            }
            var (single, singleOut) = await Offsite(fed, full, orgs[..1], seed, false, corpus, progress);
            runs.Add(new RunResult("plain", PlugInSingle, seed, paper.Evaluate(Path.Combine(singleOut, "model"), null, test), 0));
            Log(runs[^1]);
            var jobId = $"full-lora-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
            var lora = paper.Job(jobId, full, fed, "lora", seed);
            if (await fed.SubmitAsync(lora) is JobRejected r) throw new InvalidOperationException($"job {jobId} rejected: {r.Reason}");
            var done = await fed.WaitAsync(jobId, TimeSpan.FromHours(2), progress: progress);
            if (done.State != JobState.Completed) throw new InvalidOperationException($"federated LoRA seed {seed}: {done.State}: {done.Reason}");
            runs.Add(new RunResult("-", FullLora, seed, paper.Evaluate(full, Path.Combine(done.OutputDir!, "adapter"), test), 0));
            Log(runs[^1]);
        }
        return new OffsiteResult(s, o, card, plan, runs, transfer!, clock.Elapsed.TotalSeconds);
    }

    void Log(RunResult r) =>
        log($"{r.Setting} [{r.Method}{(r.Seed > 0 ? $", seed {r.Seed}" : "")}]: ROUGE-L {r.Scores.RougeL:F2}, BLEU-4 {r.Scores.Bleu4:F2}, loss {r.Scores.Loss:F3}");

    string Materialize(byte[] bundle, string name)
    {
        var dir = Path.Combine(s.OutDir, name);
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "bundle.safetensors");
        File.WriteAllBytes(path, bundle);
        return SubModel.Materialize(path, dir);
    }

    async Task<(JobStatus Status, string OutDir)> Offsite(LocalFederation fed, string full, string[] parties, int seed, bool distilled, string corpus,
        IProgress<JobStatus>? progress)
    {
        var jobId = $"offsite-{(parties.Length == 1 ? "single" : distilled ? "distilled" : "plain")}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var settings = new Dictionary<string, string>
        {
            ["bottom"] = o.Bottom.ToString(CultureInfo.InvariantCulture), ["top"] = o.Top.ToString(CultureInfo.InvariantCulture),
            ["emulator"] = o.Emulator.ToString(CultureInfo.InvariantCulture), ["adapters"] = "full", ["export-emulator"] = "on",
        };
        if (distilled)
        {
            settings["distill.steps"] = o.DistillSteps.ToString(CultureInfo.InvariantCulture);
            settings["distill.data"] = corpus;
            settings["distill.learning-rate"] = o.DistillLearningRate.ToString(CultureInfo.InvariantCulture);
        }
        var spec = JobFile.Default(jobId, full, parties.Select(p => new PartySpec(p, "train", "dev")).ToArray(), Path.Combine(s.OutDir, "federated", jobId));
        spec = spec with
        {
            Algorithm = JobFile.Algorithm(OffsiteAlgorithm.AlgorithmName, settings), Rounds = s.Rounds, Seed = seed, Data = PaperExperiment.Data,
            Evaluation = new EvaluationOptions(8, 16),
            Local = spec.Local with { Epochs = s.LocalEpochs, BatchSize = s.BatchSize, LearningRate = o.AdapterLearningRate, Schedule = LrSchedule.Constant },
            Round = spec.Round with { DeadlineSeconds = 900, Quorum = parties.Length },
        };
        if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {jobId} rejected: {r.Reason}");
        var status = await fed.WaitAsync(jobId, TimeSpan.FromHours(2), progress: progress);
        if (status.State != JobState.Completed) throw new InvalidOperationException($"offsite job {jobId}: {status.State}: {status.Reason}");
        return (status, status.OutputDir!);
    }

    static OffsiteTransfer Transfer(JobStatus status, string full, EmulatorPlan plan)
    {
        var first = status.Rounds[0].Parties[0];
        var later = status.Rounds.Length > 1 ? status.Rounds[1].Parties[0] : first;
        using var model = HfCheckpoint.Load(full);
        long fullParams = model.BaseParameters().Sum(p => p.Param.numel());
        var sub = SubModel.Tensors(model.BaseParameters().Select(p => (p.Name, (TorchSharp.torch.Tensor)p.Param)), plan);
        long subParams = sub.Values.Sum(t => t.numel());
        return new OffsiteTransfer(first.DownloadBytes - first.UploadBytes, first.UploadBytes, first.DownloadBytes, later.UploadBytes, fullParams * 4, subParams, fullParams);
    }

    public static void Write(OffsiteResult r, string outDir)
    {
        File.WriteAllText(Path.Combine(outDir, "results-offsite.json"), JsonSerializer.Serialize(new
        {
            r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, r.Options, model = r.Model.Name,
            plan = new { r.Plan.Bottom, r.Plan.Emulator, r.Plan.Top, r.Plan.Layers }, r.Transfer, r.Seconds,
            runs = r.Runs.Select(x => new { x.Method, x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Scores.Loss }),
        }, new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(outDir, "results-offsite.md"), Markdown(r));
    }

    public static string Markdown(OffsiteResult r)
    {
        var rows = ExperimentReport.Summarize(r.Runs);
        var order = new[] { ZeroShot, EmulatorZeroShot, EmulatorTuned, PlugIn, PlugInSingle, FullLora };
        var sb = new StringBuilder();
        var s = r.Settings;
        sb.AppendLine($"# Offsite tuning (FedOST / FedOST+) on WordNet — {r.Model.Name}");
        sb.AppendLine();
        sb.AppendLine($"{r.Model.Name}: {r.Plan.Layers} blocks; adapters = blocks {string.Join(", ", r.Plan.Bottom.Concat(r.Plan.Top))} (trained fully), emulator = blocks {string.Join(", ", r.Plan.Emulator)}. " +
            $"{s.Rounds} rounds × {s.LocalEpochs} local epoch(s), {s.TrainPerParty} training examples per party, seeds {string.Join(", ", s.Seeds)}; adapter lr {r.Options.AdapterLearningRate}; " +
            $"distillation {r.Options.DistillSteps} steps on the zoo's public corpus (lr {r.Options.DistillLearningRate}). All-domain test: {r.Runs[0].Scores.RougeLPerExample.Length} examples. " +
            $"Intervals: 95 % bootstrap over test examples (each example's score averaged over seeds). {r.Seconds / 60:F1} min.");
        sb.AppendLine();
        sb.AppendLine("| setting | emulator | seeds | ROUGE-L [95 % CI] | BLEU-4 [95 % CI] | loss |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var row in rows.OrderBy(x => Array.IndexOf(order, x.Setting)).ThenBy(x => x.Method))
            sb.AppendLine($"| {row.Setting} | {row.Method} | {row.Seeds} | {row.RougeL:F2} [{row.RougeLInterval.Low:F2}, {row.RougeLInterval.High:F2}] | {row.Bleu4:F2} [{row.Bleu4Interval.Low:F2}, {row.Bleu4Interval.High:F2}] | {row.Loss:F3} |");
        sb.AppendLine();
        var t = r.Transfer;
        sb.AppendLine("| per party | bytes |");
        sb.AppendLine("|---|---|");
        sb.AppendLine($"| down, round 1 (sub-model + adapters) | {t.DownPerPartyRound1:N0} |");
        sb.AppendLine($"| up, every round (adapter deltas only) | {t.UpPerPartyRound:N0} |");
        sb.AppendLine($"| the full model (fp32), which a party never receives | {t.FullModelBytes:N0} |");
        sb.AppendLine($"| parameters a party holds: sub-model vs full model | {t.SubModelParameters:N0} vs {t.FullModelParameters:N0} ({100.0 * t.SubModelParameters / t.FullModelParameters:F0} %) |");
        sb.AppendLine();
        sb.AppendLine("## Paired differences (ROUGE-L, same test examples)");
        sb.AppendLine();
        double[] PerExample(string setting, string method) => ExperimentReport.PerExample(r.Runs.Where(x => x.Setting == setting && x.Method == method), x => x.RougeLPerExample);
        void Diff(string label, (string, string) a, (string, string) b)
        {
            var x = PerExample(a.Item1, a.Item2);
            var y = PerExample(b.Item1, b.Item2);
            if (x.Length == 0 || y.Length == 0) return;
            var d = Bootstrap.PairedDifference(x, y);
            sb.AppendLine($"- {label}: {ExperimentReport.Signed(d)}");
        }
        Diff("plug-in (FedOST+) − full zero-shot", (PlugIn, "plain"), (ZeroShot, "-"));
        Diff("plug-in (FedOST+) − emulator fine-tuned (the emulator is no substitute if > 0)", (PlugIn, "plain"), (EmulatorTuned, "plain"));
        Diff("plug-in (FedOST+) − plug-in from one party", (PlugIn, "plain"), (PlugInSingle, "plain"));
        Diff("full model, federated LoRA − plug-in (FedOST+)", (FullLora, "-"), (PlugIn, "plain"));
        Diff("plug-in with distilled − plain emulator", (PlugIn, "distilled"), (PlugIn, "plain"));
        Diff("emulator zero-shot, distilled − plain", (EmulatorZeroShot, "distilled"), (EmulatorZeroShot, "plain"));
        return sb.ToString();
    }
}
