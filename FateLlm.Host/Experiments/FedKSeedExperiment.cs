using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.KSeed;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

/// <summary>The FedKSeed experiment's own knobs; data, seeds, rounds and evaluation come from <see cref="ExperimentSettings"/>.</summary>
public sealed record FedKSeedOptions
{
    public int Candidates { get; init; } = 4096;
    public int Steps { get; init; } = 200;
    public int BatchSize { get; init; } = 4;
    /// <summary>Chosen on the pooled dev sets among 1e-4, 3e-4 and 1e-3 (quick setting).</summary>
    public double LearningRate { get; init; } = 3e-4;
    public double Epsilon { get; init; } = 5e-4;
    /// <summary>Local steps of the short LoRA job that measures a LoRA step's time inside the federation.</summary>
    public int ProbeSteps { get; init; } = 10;

    public static FedKSeedOptions Quick => new() { Steps = 100 };
}

/// <summary>One round of a FedKSeed job as the parties saw it: bytes per party (largest), seconds of replay and of steps (mean).</summary>
public sealed record KSeedRound(int Seed, int Round, long UpBytes, long DownBytes, double ReplaySeconds, double StepSeconds);

/// <param name="LoraSteps">Local steps per round given to federated LoRA so that its parties train as long per round as FedKSeed's.</param>
public sealed record FedKSeedResult(ExperimentSettings Settings, FedKSeedOptions Options, ZooCard Model, long Parameters, List<RunResult> Runs,
    List<KSeedRound> Traffic, Dictionary<string, double> JobSeconds, int LoraSteps, long LoraUpBytesPerRound, long LoraDownBytesPerRound,
    double FullReplaySeconds, double Seconds);

/// <summary>
/// FedKSeed-Pro through the federation on the zoo's base model: the tuned model against the zero-shot base and against
/// federated LoRA given the same training time per round; bytes per round per party from the transfer accounting; the
/// replay cost (per round from a party's cache, and from the base for a newcomer).
/// </summary>
public sealed class FedKSeedExperiment(ExperimentSettings s, FedKSeedOptions o, Action<string> log)
{
    public const string ZeroShot = "zero-shot base", KSeed = "FedKSeed-Pro (full parameters)", Lora = "federated LoRA, same training time";

    public async Task<FedKSeedResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        var paper = new PaperExperiment(s, log);
        var (basePath, card) = paper.EnsureBase();
        var evaluation = s.Evaluation(split);
        log($"fedkseed: {card.Name}, K = {o.Candidates}, τ = {o.Steps} steps of batch {o.BatchSize}, η = {o.LearningRate:G3}, ε = {o.Epsilon:G3}; " +
            $"scoring on {(s.EvaluateOn == EvaluationSet.Test ? "the all-domain test set" : "the pooled dev sets (tuning)")}: {evaluation.Count} examples");
        var runs = new List<RunResult> { new("-", ZeroShot, 0, paper.Evaluate(basePath, null, evaluation), 0) };
        Log(runs[^1]);
        long parameters;
        using (var m = HfCheckpoint.Load(basePath)) parameters = ParameterLayout.Of(m).Count;

        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split),
            PaperExperiment.QuietCluster);
        var traffic = new List<KSeedRound>();
        var jobSeconds = new Dictionary<string, double>();
        int loraSteps = 0;
        long loraUp = 0, loraDown = 0;
        double fullReplay = 0;
        foreach (var seed in s.Seeds)
        {
            var (status, seconds) = await Run(fed, KSeedJob(fed, basePath, seed), progress);
            jobSeconds[$"{KSeed}, seed {seed}"] = seconds;
            runs.Add(new RunResult("fedkseed", KSeed, seed, paper.Evaluate(Path.Combine(status.OutputDir!, "model"), null, evaluation), seconds));
            Log(runs[^1]);
            traffic.AddRange(status.Rounds.Select(r => Traffic(seed, r)));
            foreach (var t in traffic.Where(t => t.Seed == seed))
                log($"  round {t.Round}: up {t.UpBytes:N0} B, down {t.DownBytes:N0} B per party; replay {t.ReplaySeconds:F1} s, steps {t.StepSeconds:F1} s");
            if (seed == s.Seeds[0])
            {
                fullReplay = FullReplay(basePath, Path.Combine(status.OutputDir!, "history"));
                // LoRA's local steps: as many as fill the time FedKSeed's parties spent per round, at LoRA's step time measured in the same federation.
                var partySeconds = traffic.Where(t => t.Seed == seed).Average(t => t.ReplaySeconds + t.StepSeconds);
                var (probe, _) = await Run(fed, LoraJob(fed, paper, basePath, seed, o.ProbeSteps, rounds: 1, "probe"), progress);
                var perStep = probe.Rounds[0].Parties.Where(p => p.Succeeded).Average(p => p.TrainSeconds) / o.ProbeSteps;
                loraSteps = Math.Max(1, (int)Math.Round(partySeconds / perStep));
                log($"LoRA step {perStep:F2} s inside the federation; FedKSeed parties spent {partySeconds:F1} s per round → LoRA gets {loraSteps} steps per round");
            }
            var (lora, loraSeconds) = await Run(fed, LoraJob(fed, paper, basePath, seed, loraSteps, s.Rounds, "lora"), progress);
            jobSeconds[$"{Lora}, seed {seed}"] = loraSeconds;
            loraUp = lora.Rounds[^1].Parties.Max(p => p.UploadBytes);
            // Round 1's adapter may already be in the parties' stores (the probe job starts from the same one): the largest round counts.
            loraDown = lora.Rounds.Max(x => x.Parties.Max(p => p.DownloadBytes));
            runs.Add(new RunResult("lora", Lora, seed, paper.Evaluate(basePath, Path.Combine(lora.OutputDir!, "adapter"), evaluation), loraSeconds));
            Log(runs[^1]);
        }
        return new FedKSeedResult(s, o, card, parameters, runs, traffic, jobSeconds, loraSteps, loraUp, loraDown, fullReplay, clock.Elapsed.TotalSeconds);
    }

    void Log(RunResult r) =>
        log($"{r.Setting}{(r.Seed > 0 ? $" [seed {r.Seed}]" : "")}: ROUGE-L {r.Scores.RougeL:F2}, BLEU-4 {r.Scores.Bleu4:F2}, loss {r.Scores.Loss:F3}");

    static KSeedRound Traffic(int seed, RoundSummary r)
    {
        var ok = r.Parties.Where(p => p.Succeeded).ToList();
        double Mean(string metric) => ok.Average(p => p.Metrics.GetValueOrDefault(metric));
        return new KSeedRound(seed, r.Round, ok.Max(p => p.UploadBytes), ok.Max(p => p.DownloadBytes), Mean("kseed.replay-seconds"), Mean("kseed.step-seconds"));
    }

    /// <summary>What a newcomer pays: every round replayed from the base (the arbiter's export does the same).</summary>
    double FullReplay(string basePath, string history)
    {
        var sw = Stopwatch.StartNew();
        var (manifest, rounds) = FedKSeedAlgorithm.ReadHistory(history);
        FedKSeedAlgorithm.Export(basePath, manifest, rounds, Path.Combine(s.OutDir, "replayed"), threads: 2);
        log($"full replay of {rounds.Count} rounds ({rounds.Sum(r => r.Entries.Count)} seed terms) from the base: {sw.Elapsed.TotalSeconds:F1} s");
        return sw.Elapsed.TotalSeconds;
    }

    static async Task<(JobStatus, double)> Run(LocalFederation fed, JobSpec spec, IProgress<JobStatus>? progress)
    {
        var sw = Stopwatch.StartNew();
        if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {spec.JobId} rejected: {r.Reason}");
        var status = await fed.WaitAsync(spec.JobId, TimeSpan.FromHours(3), progress: progress);
        if (status.State != JobState.Completed) throw new InvalidOperationException($"job {spec.JobId}: {status.State}: {status.Reason}");
        return (status, sw.Elapsed.TotalSeconds);
    }

    JobSpec KSeedJob(LocalFederation fed, string basePath, int seed)
    {
        var id = $"fedkseed-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var spec = new PaperExperiment(s, log).Job(id, basePath, fed, "lora", seed);
        return spec with
        {
            Algorithm = JobFile.Algorithm(FedKSeedAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["seeds"] = I(o.Candidates), ["steps"] = I(o.Steps), ["batch-size"] = I(o.BatchSize),
                ["learning-rate"] = o.LearningRate.ToString("R", CultureInfo.InvariantCulture), ["epsilon"] = o.Epsilon.ToString("R", CultureInfo.InvariantCulture),
            }),
        };
    }

    JobSpec LoraJob(LocalFederation fed, PaperExperiment paper, string basePath, int seed, int steps, int rounds, string name)
    {
        var spec = paper.Job($"{name}-seed{seed}-{DateTime.UtcNow:HHmmssfff}", basePath, fed, "lora", seed);
        return spec with { Rounds = rounds, Local = spec.Local with { Steps = steps } };
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);

    public static void Write(FedKSeedResult r, string outDir) => ExperimentReport.WriteResults(outDir, "fedkseed", new
    {
        r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, evaluate_on = r.Settings.EvaluateOn.ToString(), r.Options,
        model = r.Model.Name, r.Parameters, r.Traffic, r.JobSeconds, r.LoraSteps, r.LoraUpBytesPerRound, r.LoraDownBytesPerRound, r.FullReplaySeconds, r.Seconds,
        quality = r.Runs.Select(x => new { x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Scores.Loss, x.Seconds }),
    }, Markdown(r));

    public static string Markdown(FedKSeedResult r)
    {
        var s = r.Settings;
        var o = r.Options;
        var sb = new StringBuilder();
        sb.AppendLine($"# FedKSeed-Pro on WordNet — {r.Model.Name}");
        sb.AppendLine();
        sb.AppendLine($"{r.Model.Name} ({r.Parameters:N0} parameters, all tuned), 3 parties, {s.Rounds} rounds, K = {o.Candidates} candidate seeds, τ = {o.Steps} " +
            $"two-point steps of batch {o.BatchSize} per party and round, η = {o.LearningRate:G3}, ε = {o.Epsilon:G3}; {s.TrainPerParty} training examples per party; " +
            $"seeds {string.Join(", ", s.Seeds)}; scored on {(s.EvaluateOn == EvaluationSet.Test ? "the all-domain test set" : "the pooled dev sets")}. " +
            $"Federated LoRA (r = 8, q/v) gets {r.LoraSteps} local steps per round: as long as FedKSeed's parties trained, at LoRA's step time measured in the same federation. {r.Seconds / 60:F1} min.");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs, modelColumn: false, x => r.Runs.Where(y => y.Setting == x.Setting && y.Seconds > 0).Select(y => y.Seconds)
            .DefaultIfEmpty(0).Average() is var wall and > 0 ? wall.ToString("F0", CultureInfo.InvariantCulture) : "-", "job wall time (s)");
        sb.AppendLine();
        IReadOnlyList<RunResult> Of(string setting) => r.Runs.Where(x => x.Setting == setting).ToList();
        sb.AppendLine(ExperimentReport.PairedLine("FedKSeed − zero-shot", Of(KSeed), Of(ZeroShot)));
        sb.AppendLine(ExperimentReport.PairedLine("FedKSeed − LoRA", Of(KSeed), Of(Lora)));
        sb.AppendLine();
        var t = r.Traffic;
        sb.AppendLine("| per party and round | FedKSeed (max over rounds) | federated LoRA |");
        sb.AppendLine("|---|---|---|");
        sb.AppendLine($"| up | {t.Max(x => x.UpBytes):N0} B | {r.LoraUpBytesPerRound:N0} B |");
        sb.AppendLine($"| down | {t.Max(x => x.DownBytes):N0} B | {r.LoraDownBytesPerRound:N0} B |");
        sb.AppendLine();
        sb.AppendLine($"Replay: {t.Where(x => x.Round > 1).Select(x => x.ReplaySeconds).DefaultIfEmpty(0).Average():F1} s per round on a party that holds the previous round's model " +
            $"(its cache), against {t.Average(x => x.StepSeconds):F1} s of zeroth-order steps; a newcomer replays all {s.Rounds} rounds from the base in {r.FullReplaySeconds:F1} s.");
        return sb.ToString();
    }
}
