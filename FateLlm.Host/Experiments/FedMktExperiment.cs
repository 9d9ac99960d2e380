using System.Diagnostics;
using System.Globalization;
using System.Text;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.Mkt;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Trainer;

namespace FateLlm.Host.Experiments;

/// <summary>The FedMKT experiment's own knobs; data, seeds, rounds and evaluation come from <see cref="ExperimentSettings"/>.</summary>
public sealed record FedMktOptions
{
    public string ServerModel { get; init; } = "server";
    /// <summary>The parties' small models in the order of their names: three families, three tokenizers (base shares the server's).</summary>
    public string[] PartyModels { get; init; } = ["slm-gpt2", "slm-llama", "base"];
    public int PublicExamples { get; init; } = 64;
    public int TopK { get; init; } = 128;
    public int PublicEpochs { get; init; } = 2;

    public static FedMktOptions Quick => new() { PublicExamples = 32 };
}

/// <param name="Bytes">Per round: the largest upload and download of a party (both exchanges).</param>
public sealed record FedMktResult(ExperimentSettings Settings, FedMktOptions Options, Dictionary<string, string> Assignment, List<RunResult> Runs,
    List<(int Round, long Up, long Down)> Bytes, double Seconds);

/// <summary>
/// FedMKT on WordNet: three parties with three model families and tokenizers (the zoo's slm-gpt2, slm-llama and base)
/// and the zoo's server model at the arbiter, exchanging top-k logits on the public split (domains no party holds).
/// Each small model before and after, against itself trained on its party's data alone; the server model before and
/// after, against LoRA on the union of the parties' data (centralized); bytes per round per party.
/// </summary>
public sealed class FedMktExperiment(ExperimentSettings s, FedMktOptions o, Action<string> log)
{
    public const string ZeroShot = "zero-shot", Local = "own data only (LoRA)", Mkt = "FedMKT", Centralized = "centralized LoRA on the union";
    public const string Server = "server";

    public async Task<FedMktResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: o.PublicExamples);
        PaperExperiment Zoo(string name) => new(s with { BaseModel = name }, log);
        var paper = Zoo(o.ServerModel);
        var (serverPath, _) = paper.EnsureBase();
        var orgs = split.Parties.Keys.Order(StringComparer.Ordinal).ToArray();
        var assignment = orgs.Select((org, i) => (org, o.PartyModels[i % o.PartyModels.Length])).ToDictionary(x => x.org, x => x.Item2);
        var paths = assignment.Values.Distinct().ToDictionary(m => m, m => Zoo(m).EnsureBase().Path);
        var test = InstructionData.ReadJsonl(split.Test, PaperExperiment.Data);
        var partyTrain = split.Parties.ToDictionary(kv => kv.Key, kv => InstructionData.ReadJsonl(kv.Value.Train, PaperExperiment.Data));
        var epochs = s.Rounds * s.LocalEpochs;
        log($"fedmkt: server {o.ServerModel}; parties {string.Join(", ", assignment.Select(a => $"{a.Key} → {a.Value}"))}; {o.PublicExamples} public examples, top-{o.TopK}; test {test.Count}");
        var runs = new List<RunResult> { Timed(Server, ZeroShot, 0, () => paper.Evaluate(serverPath, null, test)) };
        foreach (var (org, model) in assignment) runs.Add(Timed(Label(org, model), ZeroShot, 0, () => paper.Evaluate(paths[model], null, test)));
        var bytes = new List<(int, long, long)>();
        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split),
            PaperExperiment.QuietCluster);
        foreach (var seed in s.Seeds)
        {
            foreach (var (org, model) in assignment)
                runs.Add(Timed(Label(org, model), Local, seed, () => paper.TrainAndEvaluate(paths[model], "lora", partyTrain[org], epochs, seed, test,
                    s.Peft("lora") with { LoraTargets = [] })));
            runs.Add(Timed(Server, Centralized, seed, () => paper.TrainAndEvaluate(serverPath, "lora", partyTrain.Values.SelectMany(x => x).ToList(), epochs, seed, test)));
            var sw = Stopwatch.StartNew();
            var spec = Job(fed, paper, serverPath, split.Public, assignment.ToDictionary(a => a.Key, a => paths[a.Value]), seed);
            if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {spec.JobId} rejected: {r.Reason}");
            var status = await fed.WaitAsync(spec.JobId, TimeSpan.FromHours(3), progress: progress);
            if (status.State != JobState.Completed) throw new InvalidOperationException($"job {spec.JobId}: {status.State}: {status.Reason}");
            runs.Add(new RunResult(Server, Mkt, seed, paper.Evaluate(Path.Combine(status.OutputDir!, "server-merged"), null, test), sw.Elapsed.TotalSeconds));
            foreach (var (org, model) in assignment)
                runs.Add(new RunResult(Label(org, model), Mkt, seed, paper.Evaluate(paths[model], PartyAdapter(fed, spec, org, paths[model]), test), sw.Elapsed.TotalSeconds));
            if (seed == s.Seeds[0])
                bytes.AddRange(status.Rounds.Select(x => (x.Round, x.Parties.Where(p => p.Succeeded).Max(p => p.UploadBytes), x.Parties.Where(p => p.Succeeded).Max(p => p.DownloadBytes))));
            foreach (var x in runs.Where(x => x.Seed == seed || x.Seed == 0))
                log($"{x.Method} {x.Setting}{(x.Seed > 0 ? $" [seed {x.Seed}]" : "")}: ROUGE-L {x.Scores.RougeL:F2}, BLEU-4 {x.Scores.Bleu4:F2}, loss {x.Scores.Loss:F3}");
        }
        return new FedMktResult(s, o, assignment, runs, bytes, clock.Elapsed.TotalSeconds);
    }

    static string Label(string org, string model) => $"{org} ({model})";

    static RunResult Timed(string model, string setting, int seed, Func<Scores> run)
    {
        var sw = Stopwatch.StartNew();
        var scores = run();
        return new RunResult(model, setting, seed, scores, sw.Elapsed.TotalSeconds);
    }

    JobSpec Job(LocalFederation fed, PaperExperiment paper, string serverPath, string publicData, Dictionary<string, string> partyModels, int seed)
    {
        var id = $"fedmkt-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var settings = new Dictionary<string, string>
        {
            ["public-data"] = publicData, ["public-limit"] = o.PublicExamples.ToString(CultureInfo.InvariantCulture), ["top-k"] = o.TopK.ToString(CultureInfo.InvariantCulture),
            ["public-epochs"] = o.PublicEpochs.ToString(CultureInfo.InvariantCulture),
        };
        foreach (var (org, path) in partyModels) settings["party-models." + org] = path;
        return paper.Job(id, serverPath, fed, "lora", seed) with { Algorithm = JobFile.Algorithm(FedMktAlgorithm.AlgorithmName, settings) };
    }

    /// <summary>A party's final adapter (its last distil phase, in its node's workspace), written as a PEFT folder to score it.</summary>
    string PartyAdapter(LocalFederation fed, JobSpec spec, string org, string modelPath)
    {
        var file = Directory.GetFiles(Path.Combine(fed.Root, "party-" + org), $"fedmkt-r{spec.Rounds:D4}-{FedMktAlgorithm.DistillPhase}.safetensors", SearchOption.AllDirectories)
            .SingleOrDefault(f => f.Contains(spec.JobId, StringComparison.Ordinal)) ?? throw new InvalidOperationException($"party {org} kept no final adapter for {spec.JobId}");
        var folder = Path.Combine(s.OutDir, "adapters", spec.JobId, org);
        using var run = FineTuning.Open(modelPath, spec.Peft with { LoraTargets = [] }, spec.Seed);
        run.LoadTrainable(File.ReadAllBytes(file), file);
        run.SaveAdapter(folder, spec.Data);
        return folder;
    }

    public static void Write(FedMktResult r, string outDir) => ExperimentReport.WriteResults(outDir, "fedmkt", new
    {
        r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, r.Options, r.Assignment, r.Seconds,
        bytes = r.Bytes.Select(b => new { round = b.Round, up = b.Up, down = b.Down }),
        quality = r.Runs.Select(x => new { model = x.Method, x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Scores.Loss, x.Seconds }),
    }, Markdown(r));

    public static string Markdown(FedMktResult r)
    {
        var s = r.Settings;
        var o = r.Options;
        var sb = new StringBuilder();
        sb.AppendLine($"# FedMKT on WordNet — {o.ServerModel} at the arbiter, {string.Join(", ", r.Assignment.Select(a => $"{a.Value} at {a.Key}"))}");
        sb.AppendLine();
        sb.AppendLine($"LoRA r = 8 on every model (q/v, c_attn for GPT-2); {s.Rounds} rounds × {s.LocalEpochs} local epoch(s) on {s.TrainPerParty} private examples per party, " +
            $"then {o.PublicEpochs} distillation epoch(s) on {o.PublicExamples} public examples (domains no party holds) at the arbiter and at each party, top-{o.TopK} logits, α = 0.9, Min-CE; " +
            $"own-data-only and centralized runs train {s.Rounds * s.LocalEpochs} epochs; seeds {string.Join(", ", s.Seeds)}; all-domain test; {r.Seconds / 60:F1} min.");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs, modelColumn: true);
        sb.AppendLine();
        IReadOnlyList<RunResult> Of(string model, string setting) => r.Runs.Where(x => x.Method == model && x.Setting == setting).ToList();
        foreach (var model in r.Runs.Select(x => x.Method).Distinct())
            foreach (var other in new[] { model == Server ? Centralized : Local, ZeroShot })
                sb.AppendLine(ExperimentReport.PairedLine($"{model}: FedMKT − {other}", Of(model, Mkt), Of(model, other)));
        sb.AppendLine();
        sb.AppendLine("Bytes per party and round (largest party; the fit upload is its logit block, the download the arbiter's block): " +
            string.Join("; ", r.Bytes.Select(b => $"round {b.Round}: up {b.Up:N0} B, down {b.Down:N0} B")) + ".");
        return sb.ToString();
    }
}
