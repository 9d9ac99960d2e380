using System.Diagnostics;
using System.Globalization;
using System.Text;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.CoLlm;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

/// <summary>The FedCoLLM experiment's own knobs; data, seeds, rounds and evaluation come from <see cref="ExperimentSettings"/>.</summary>
public sealed record FedCoLlmOptions
{
    public string ServerModel { get; init; } = "server";
    public int DistillSteps { get; init; } = 50;
    public double DistillLearningRate { get; init; } = 1e-3;

    public static FedCoLlmOptions Quick => new() { DistillSteps = 30 };
}

public sealed record FedCoLlmResult(ExperimentSettings Settings, FedCoLlmOptions Options, ZooCard Small, ZooCard Server, List<RunResult> Runs, double Seconds);

/// <summary>
/// FedCoLLM on WordNet with the zoo's base (small, at the parties) and server (large, at the arbiter) models, which share
/// a tokenizer. The small model: zero-shot, each party alone, federated LoRA without co-tuning, FedCoLLM, centralized on
/// the union. The server model: zero-shot, after FedCoLLM (it never saw private data, only the public corpus and the
/// small model), and centralized LoRA on the union as the reference the paper compares with.
/// </summary>
public sealed class FedCoLlmExperiment(ExperimentSettings s, FedCoLlmOptions o, Action<string> log)
{
    public const string Small = "small (base)", Large = "server";
    public const string ZeroShot = "zero-shot", FedAvg = "federated LoRA (no co-tuning)", CoLlm = "FedCoLLM", Centralized = "centralized LoRA on the union";

    public async Task<FedCoLlmResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        var small = new PaperExperiment(s, log);
        var (smallPath, smallCard) = small.EnsureBase();
        var (serverPath, serverCard) = new PaperExperiment(s with { BaseModel = o.ServerModel }, log).EnsureBase();
        var corpus = s.Zoo.Open(s.ZooRoot ?? s.Zoo.Root, s.WordNetDir, log).PublicCorpus().Path;
        var test = InstructionData.ReadJsonl(split.Test, PaperExperiment.Data);
        var partyTrain = split.Parties.ToDictionary(kv => kv.Key, kv => InstructionData.ReadJsonl(kv.Value.Train, PaperExperiment.Data));
        var union = partyTrain.Values.SelectMany(x => x).ToList();
        var epochs = s.Rounds * s.LocalEpochs;
        log($"fedcollm: small {smallCard.Name} at the parties, {serverCard.Name} at the arbiter, {o.DistillSteps} co-tuning steps per round on the zoo's public corpus; test {test.Count} examples");
        var runs = new List<RunResult>
        {
            Timed(Small, ZeroShot, 0, () => small.Evaluate(smallPath, null, test)),
            Timed(Large, ZeroShot, 0, () => small.Evaluate(serverPath, null, test)),
        };
        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split),
            PaperExperiment.QuietCluster);
        foreach (var seed in s.Seeds)
        {
            foreach (var (party, examples) in partyTrain)
                runs.Add(Timed(Small, $"local:{party}", seed, () => small.TrainAndEvaluate(smallPath, "lora", examples, epochs, seed, test)));
            runs.Add(Timed(Small, Centralized, seed, () => small.TrainAndEvaluate(smallPath, "lora", union, epochs, seed, test)));
            runs.Add(Timed(Large, Centralized, seed, () => small.TrainAndEvaluate(serverPath, "lora", union, epochs, seed, test)));
            foreach (var steps in new[] { 0, o.DistillSteps })
            {
                var sw = Stopwatch.StartNew();
                var out1 = await Federate(fed, small, smallPath, serverPath, corpus, seed, steps, progress);
                runs.Add(new RunResult(Small, steps == 0 ? FedAvg : CoLlm, seed, small.Evaluate(smallPath, Path.Combine(out1, "adapter"), test), sw.Elapsed.TotalSeconds));
                if (steps > 0) runs.Add(new RunResult(Large, CoLlm, seed, small.Evaluate(Path.Combine(out1, "server-merged"), null, test), sw.Elapsed.TotalSeconds));
            }
            foreach (var r in runs.Where(r => r.Seed == seed || r.Seed == 0))
                log($"{r.Method} {r.Setting}{(r.Seed > 0 ? $" [seed {r.Seed}]" : "")}: ROUGE-L {r.Scores.RougeL:F2}, BLEU-4 {r.Scores.Bleu4:F2}, loss {r.Scores.Loss:F3}");
        }
        return new FedCoLlmResult(s, o, smallCard, serverCard, runs, clock.Elapsed.TotalSeconds);
    }

    static RunResult Timed(string model, string setting, int seed, Func<Scores> run)
    {
        var sw = Stopwatch.StartNew();
        var scores = run();
        return new RunResult(model, setting, seed, scores, sw.Elapsed.TotalSeconds);
    }

    async Task<string> Federate(LocalFederation fed, PaperExperiment paper, string smallPath, string serverPath, string corpus, int seed, int steps,
        IProgress<JobStatus>? progress)
    {
        var id = $"fedcollm-d{steps}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var spec = paper.Job(id, smallPath, fed, "lora", seed) with
        {
            Algorithm = JobFile.Algorithm(FedCoLlmAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["server-model"] = serverPath, ["public-data"] = corpus, ["distill.steps"] = steps.ToString(CultureInfo.InvariantCulture),
                ["distill.learning-rate"] = o.DistillLearningRate.ToString("R", CultureInfo.InvariantCulture),
            }),
        };
        if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {id} rejected: {r.Reason}");
        var status = await fed.WaitAsync(id, TimeSpan.FromHours(3), progress: progress);
        if (status.State != JobState.Completed) throw new InvalidOperationException($"job {id}: {status.State}: {status.Reason}");
        return status.OutputDir!;
    }

    public static void Write(FedCoLlmResult r, string outDir) => ExperimentReport.WriteResults(outDir, "fedcollm", new
    {
        r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, r.Options, small = r.Small.Name, server = r.Server.Name, r.Seconds,
        quality = r.Runs.Select(x => new { model = x.Method, x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Scores.Loss, x.Seconds }),
    }, Markdown(r));

    public static string Markdown(FedCoLlmResult r)
    {
        var s = r.Settings;
        var sb = new StringBuilder();
        sb.AppendLine($"# FedCoLLM on WordNet — {r.Small.Name} at the parties, {r.Server.Name} at the arbiter");
        sb.AppendLine();
        sb.AppendLine($"LoRA r = 8 (q, v) on both models; 3 parties, {s.Rounds} rounds × {s.LocalEpochs} local epoch(s), {s.TrainPerParty} training examples per party; " +
            $"{r.Options.DistillSteps} co-tuning steps per round on the zoo's public corpus (λ = 1, top-k 128, lr {r.Options.DistillLearningRate:G3}); " +
            $"local and centralized runs train for the same {s.Rounds * s.LocalEpochs} epochs; seeds {string.Join(", ", s.Seeds)}; {r.Seconds / 60:F1} min.");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs, modelColumn: true);
        sb.AppendLine();
        IReadOnlyList<RunResult> Of(string model, string setting) => r.Runs.Where(x => x.Method == model && x.Setting == setting).ToList();
        var bestLocal = r.Runs.Where(x => x.Method == Small && x.Setting.StartsWith("local:")).GroupBy(x => x.Setting)
            .OrderByDescending(g => g.Average(x => x.Scores.RougeL)).First().Key;
        foreach (var (name, model, a, b) in new[]
                 {
                     ("small: FedCoLLM − federated LoRA", Small, CoLlm, FedAvg), ($"small: FedCoLLM − best single party ({bestLocal[6..]})", Small, CoLlm, bestLocal),
                     ("small: FedCoLLM − centralized", Small, CoLlm, Centralized), ("server: FedCoLLM − zero-shot", Large, CoLlm, ZeroShot),
                     ("server: FedCoLLM − centralized", Large, CoLlm, Centralized),
                 })
            sb.AppendLine(ExperimentReport.PairedLine(name, Of(model, a), Of(model, b)));
        return sb.ToString();
    }
}
