using System.Diagnostics;
using System.Globalization;
using System.Text;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms.Dpo;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Metrics;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

/// <summary>The DPO experiment's own knobs; data, seeds, rounds and batch size come from <see cref="ExperimentSettings"/>.</summary>
public sealed record DpoExperimentOptions
{
    public double Beta { get; init; } = 0.1;
    public double LearningRate { get; init; } = 5e-3;
    /// <summary>Epochs of the shared SFT stage (centralized LoRA on the parties' instruction data, merged) every setting starts from.</summary>
    public int SftEpochs { get; init; } = 1;
}

/// <summary>One setting's scores on the test pairs: per pair whether the chosen answer is the likelier (0 or 100) and the
/// implicit reward margin against the SFT model; and the greedy generations against the chosen gloss.</summary>
public sealed record PreferenceRun(string Setting, int Seed, double[] Accuracy, double[] Margin, Scores Generation, double Seconds);

public sealed record DpoResult(ExperimentSettings Settings, DpoExperimentOptions Options, ZooCard Model, IReadOnlyDictionary<string, int> Negatives,
    List<PreferenceRun> Runs, double Seconds);

/// <summary>
/// SFT then DPO on the zoo's base: one SFT model for everyone (centralized LoRA on the parties' instruction data,
/// merged), then DPO from it on WordNet preference pairs (chosen gloss, a sibling's gloss rejected) — the SFT model
/// itself, each party alone, federated through the cluster, centralized on the union — scored on the all-domain test
/// pairs: preference accuracy (the chosen gloss the likelier), the implicit reward margin, and ROUGE-L of greedy
/// generations against the chosen gloss. The paper-style claim (federated above every party, within 1 point of
/// centralized) is checked with paired bootstrap intervals over the test pairs.
/// </summary>
public sealed class DpoExperiment(ExperimentSettings s, DpoExperimentOptions o, Action<string> log)
{
    public const string Sft = "SFT (no DPO)", Federated = "federated", Centralized = "centralized";

    public async Task<DpoResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var synsets = WordNetCorpus.Read(s.WordNetDir);
        var split = s.WriteSplit(publicLimit: 1, synsets);
        var prefs = WordNetPreferences.Write(synsets, Path.Combine(s.OutDir, "data"), s.SplitOptions(publicLimit: 1));
        var paper = new PaperExperiment(s, log);
        var (basePath, card) = paper.EnsureBase();
        var sft = Path.Combine(s.OutDir, "sft");
        if (!File.Exists(Path.Combine(sft, "config.json")))
        {
            var union = split.Parties.Values.SelectMany(p => InstructionData.ReadJsonl(p.Train, PaperExperiment.Data)).ToList();
            using var run = FineTuning.Open(basePath, s.Peft("lora"), 1);
            run.Train(run.Tokenize(union, PaperExperiment.Data), new TrainOptions
            {
                Epochs = o.SftEpochs, BatchSize = s.BatchSize, LearningRate = s.LoraLearningRate, Schedule = LrSchedule.Constant, Seed = 1,
            });
            PeftModel.SaveMerged(run.Model, sft, basePath);
        }
        // Tuning scores the parties' pooled dev pairs, never the test pairs.
        var test = s.EvaluateOn == EvaluationSet.Test ? PreferenceData.Read(prefs.Test, "prompt", "chosen", "rejected")
            : [.. prefs.Parties.Values.SelectMany(f => PreferenceData.Read(f.Dev, "prompt", "chosen", "rejected"))];
        var partyPairs = prefs.Parties.ToDictionary(kv => kv.Key, kv => PreferenceData.Read(kv.Value.Train, "prompt", "chosen", "rejected"));
        log($"dpo: SFT from {card.Name} ({o.SftEpochs} epoch of centralized LoRA), β = {o.Beta}, lr {o.LearningRate:G3}; {test.Count} test pairs; " +
            $"rejected glosses: {string.Join(", ", prefs.Negatives.Select(kv => $"{kv.Value} {kv.Key}"))}");

        var runs = new List<PreferenceRun>();
        using (var model = HfCheckpoint.Load(sft))
            runs.Add(Score(paper, Sft, 0, model, TokenizerLoader.Load(sft, model.Config), test, adapter: false, 0));
        var datasets = prefs.Parties.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, string>)new Dictionary<string, string>
        {
            ["prefs"] = kv.Value.Train, ["prefs-dev"] = kv.Value.Dev,
        });
        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), datasets, PaperExperiment.QuietCluster, board: s.Board);
        var epochs = s.Rounds * s.LocalEpochs; // the same local passes in every setting
        foreach (var seed in s.Seeds)
        {
            foreach (var (party, pairs) in partyPairs)
                runs.Add(Trained(paper, $"local:{party}", seed, sft, pairs, epochs, test));
            runs.Add(Trained(paper, Centralized, seed, sft, [.. partyPairs.Values.SelectMany(x => x)], epochs, test));
            var sw = Stopwatch.StartNew();
            var jobId = $"dpo-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
            var spec = paper.Job(jobId, sft, fed, "lora", seed);
            spec = spec with
            {
                Parties = [.. fed.Parties.Keys.Order().Select(org => new PartySpec(org, "prefs", "prefs-dev"))],
                Algorithm = JobFile.Algorithm(DpoAlgorithm.AlgorithmName, new Dictionary<string, string> { ["beta"] = o.Beta.ToString(CultureInfo.InvariantCulture) }),
                Local = spec.Local with { LearningRate = o.LearningRate },
            };
            if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {jobId} rejected: {r.Reason}");
            var status = await fed.WaitAsync(jobId, TimeSpan.FromHours(2), progress: progress);
            if (status.State != JobState.Completed) throw new InvalidOperationException($"federated dpo seed {seed}: {status.State}: {status.Reason}");
            using (var adapted = AdapterFolder.Load(Path.Combine(status.OutputDir!, "adapter"), sft).Model)
                runs.Add(Score(paper, Federated, seed, adapted, TokenizerLoader.Load(sft, adapted.Config), test, adapter: true, sw.Elapsed.TotalSeconds));
            foreach (var x in runs.Where(x => x.Seed == seed))
                log($"dpo seed {seed} {x.Setting,-16} preference accuracy {x.Accuracy.Average():F1} %, margin {x.Margin.Average():F3}, ROUGE-L {x.Generation.RougeL:F2}");
        }
        return new DpoResult(s, o, card, prefs.Negatives, runs, clock.Elapsed.TotalSeconds);
    }

    PreferenceRun Trained(PaperExperiment paper, string setting, int seed, string sft, IReadOnlyList<PreferencePair> pairs, int epochs, IReadOnlyList<PreferencePair> test)
    {
        var sw = Stopwatch.StartNew();
        using var run = FineTuning.Open(sft, s.Peft("lora"), seed);
        PreferenceOptimization.Train(run.Model, run.Tokenizer, pairs, PaperExperiment.Data,
            new DpoOptions(o.Beta, 0, PreferenceLoss.Sigmoid, epochs, s.BatchSize, o.LearningRate, seed), baseReference: true);
        return Score(paper, setting, seed, run.Model, run.Tokenizer, test, adapter: true, sw.Elapsed.TotalSeconds);
    }

    /// <summary>A model's test-pair scores; the reference is the SFT model (the adapter disabled), so the SFT model's own margins are 0.</summary>
    PreferenceRun Score(PaperExperiment paper, string setting, int seed, CausalLm model, ITextTokenizer tok, IReadOnlyList<PreferencePair> test, bool adapter, double seconds)
    {
        var pad = tok.PadId ?? tok.EosId ?? 0;
        var (chosen, rejected) = PreferenceOptimization.Tokenize(test, tok, PaperExperiment.Data);
        var pc = PreferenceOptimization.LogProbs(model, chosen, pad, 32, average: false);
        var pr = PreferenceOptimization.LogProbs(model, rejected, pad, 32, average: false);
        var (rc, rr) = adapter ? PreferenceOptimization.Reference(model, chosen, rejected, pad, 32, average: false, baseReference: true) : (pc, pr);
        var accuracy = Enumerable.Range(0, test.Count).Select(i => pc[i] > pr[i] ? 100.0 : 0.0).ToArray();
        var margin = Enumerable.Range(0, test.Count).Select(i => o.Beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))).ToArray();
        var generation = paper.Score(model, [.. test.Select(p => new Example(p.Prompt, p.Chosen, p.Location))], tok);
        return new PreferenceRun(setting, seed, accuracy, margin, generation, seconds);
    }

    static double[] PerPair(IEnumerable<PreferenceRun> runs, Func<PreferenceRun, double[]> f) => ExperimentReport.PerExampleOf(runs, f);

    public static void Write(DpoResult r, string outDir) => ExperimentReport.WriteResults(outDir, "dpo", new
    {
        r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, r.Options, model = r.Model.Name, r.Negatives, r.Seconds,
        runs = r.Runs.Select(x => new { x.Setting, x.Seed, accuracy = x.Accuracy.Average(), margin = x.Margin.Average(), rougeL = x.Generation.RougeL, x.Seconds, x.Accuracy, x.Margin }),
    }, Markdown(r));

    public static string Markdown(DpoResult r)
    {
        var md = new StringBuilder();
        static string F(double x) => x.ToString("F2", CultureInfo.InvariantCulture);
        static string CI(Interval i) => $"{F(i.Estimate)} [{F(i.Low)}, {F(i.High)}]";
        md.AppendLine("# Federated DPO on WordNet preferences");
        md.AppendLine();
        md.AppendLine($"SFT: the zoo's `{r.Model.Name}` ({r.Model.Parameters:N0} parameters) after {r.Options.SftEpochs} epoch of centralized LoRA on the parties' instruction data, merged; " +
            $"every setting starts from it and uses it as DPO's reference. DPO: β = {r.Options.Beta}, LoRA r = 8 on q/v, lr {r.Options.LearningRate:G3}, " +
            $"{r.Settings.Rounds} rounds × {r.Settings.LocalEpochs} local epoch (the same passes alone and centralized); seeds {string.Join(", ", r.Settings.Seeds)}. " +
            $"Pairs: the synset's attributes → its gloss chosen, a sibling's gloss rejected ({string.Join(", ", r.Negatives.Select(kv => $"{kv.Value} {kv.Key}"))}). " +
            $"{r.Runs[0].Accuracy.Length} {(r.Settings.EvaluateOn == EvaluationSet.Test ? "all-domain test pairs" : "pooled dev pairs (tuning run: not the test set)")}; " +
            "each pair's score averaged over seeds; 95 % bootstrap intervals over pairs.");
        md.AppendLine();
        md.AppendLine("| setting | seeds | preference accuracy % | reward margin | ROUGE-L vs chosen | gloss bits/byte |");
        md.AppendLine("|---|---|---|---|---|---|");
        var settings = r.Runs.Select(x => x.Setting).Distinct().ToList();
        foreach (var setting in settings)
        {
            var mine = r.Runs.Where(x => x.Setting == setting).ToList();
            var bits = mine.All(x => x.Generation.Likelihood is not null)
                ? CI(Bootstrap.Mean(PerPair(mine, x => x.Generation.Likelihood!.BitsPerByte))) : "–";
            md.AppendLine($"| {setting} | {mine.Count} | {CI(Bootstrap.Mean(PerPair(mine, x => x.Accuracy)))} | {CI(Bootstrap.Mean(PerPair(mine, x => x.Margin)))} | " +
                $"{CI(Bootstrap.Mean(PerPair(mine, x => x.Generation.RougeLPerExample)))} | {bits} |");
        }
        md.AppendLine();
        md.AppendLine("Federated minus each other setting on the same pairs (paired bootstrap, 95 %): above every party and the SFT model, within 1 point of centralized.");
        md.AppendLine();
        md.AppendLine("| metric | federated vs | difference | claim | verdict |");
        md.AppendLine("|---|---|---|---|---|");
        var fed = r.Runs.Where(x => x.Setting == Federated).ToList();
        foreach (var (metric, f) in new (string, Func<PreferenceRun, double[]>)[] { ("preference accuracy %", x => x.Accuracy), ("ROUGE-L", x => x.Generation.RougeLPerExample) })
            foreach (var other in settings.Where(x => x != Federated))
            {
                var d = Bootstrap.PairedDifference(PerPair(fed, f), PerPair(r.Runs.Where(x => x.Setting == other), f));
                var above = other != Centralized;
                md.AppendLine($"| {metric} | {other} | {CI(d)} | {(above ? "above" : "within 1 point")} | {ExperimentReport.Verdict(d, above, 1)} |");
            }
        md.AppendLine();
        md.AppendLine($"Wall time: {r.Seconds / 60:F1} min.");
        return md.ToString();
    }
}
