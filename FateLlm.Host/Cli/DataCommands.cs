using System.CommandLine;
using System.Text.Json;
using FateLlm.Training.Data;
using FateLlm.Training.Trainer;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

internal static class DataCommands
{
    public static Command Data(Terminal t)
    {
        var dict = Opt("--dict", "WordNet 3.0 dictionary folder (data.noun, data.verb, ...)", WordNetCorpus.DefaultDictionary);
        var outDir = Required<string>("--out", "Output folder for the JSONL splits");
        var seed = Opt("--seed", "Split seed", 42L);
        var train = Opt("--train-per-party", "Training examples per party", 1500);
        var dev = Opt("--dev-per-party", "Dev examples per party", 100);
        var test = Opt("--test-per-party", "Test examples contributed per party's domains", 100);
        var publicLimit = Opt("--public", "Public-corpus examples (other domains; 0 = all)", 20000);
        var alpha = new Option<double?>("--dirichlet") { Description = "Split the party domains with Dirichlet(α) label skew instead of one domain group per party" };
        var preferences = Opt("--preferences", "Also write preference pairs for dpo: the gloss chosen, a sibling's (or homograph's) gloss rejected", false);
        var wordnet = new Command("wordnet", "WordNet definition generation as AdvertiseGen-style JSONL: non-IID party shards, dev, test, public corpus").With(p =>
        {
            if (p.GetValue(alpha) is <= 0) throw new UsageException("--dirichlet α must be positive");
            var synsets = WordNetCorpus.Read(p.GetValue(dict)!);
            var options = new WordNetSplitOptions
            {
                Seed = p.GetValue(seed), TrainPerParty = TrainingCommands.Positive(p.GetValue(train), "--train-per-party"),
                DevPerParty = TrainingCommands.Positive(p.GetValue(dev), "--dev-per-party"), TestPerParty = TrainingCommands.Positive(p.GetValue(test), "--test-per-party"),
                PublicLimit = p.GetValue(publicLimit), DirichletAlpha = p.GetValue(alpha),
            };
            var split = WordNetCorpus.Write(synsets, p.GetValue(outDir)!, options);
            t.Out.WriteLine($"read {synsets.Count:N0} synsets; wrote {string.Join(", ", split.Counts.Select(kv => $"{kv.Key} {kv.Value}"))} to {p.GetValue(outDir)}");
            var tasks = Path.Combine(p.GetValue(outDir)!, "tasks");
            var names = FateLlm.Training.Evaluation.Harness.WordNetTasks.Write(synsets, tasks, options);
            t.Out.WriteLine($"wrote {names.Count} evaluation tasks over the test set to {tasks} (fate-llm evaluate --include-path {tasks} --tasks wordnet)");
            if (p.GetValue(preferences))
            {
                var prefs = WordNetPreferences.Write(synsets, p.GetValue(outDir)!, options);
                t.Out.WriteLine($"wrote preference pairs ({string.Join(", ", prefs.Parties.Keys.Select(k => $"{k}-prefs-train/dev"))}, prefs-test) with rejected glosses from " +
                    string.Join(", ", prefs.Negatives.Select(kv => $"{kv.Value} {kv.Key}")));
            }
        }, dict, outDir, seed, train, dev, test, publicLimit, alpha, preferences);
        var cmd = new Command("data", "Datasets");
        cmd.Subcommands.Add(wordnet);
        return cmd;
    }

    public static Command Pretrain(Terminal t)
    {
        var arch = Opt("--arch", "llama | gpt2", "llama");
        var preset = Opt("--preset", "Model preset (byte tokenizer)", "tiny");
        var data = Required<string>("--data", "Public corpus JSONL (content/summary)");
        var outDir = Required<string>("--out", "Output model folder (HF format)");
        var epochs = Opt("--epochs", "Epochs", 3);
        var minutes = Opt("--minutes", "Stop after this many minutes of training (0 = no limit)", 3.0);
        var maxSteps = new Option<int?>("--max-steps") { Description = "Stop after this many optimizer steps (reproducible, unlike --minutes)" };
        var lr = Opt("--lr", "Peak learning rate", 3e-3);
        var batch = Opt("--batch-size", "Batch size", 32);
        var seed = Opt("--seed", "Seed", 42L);
        var runtime = new RuntimeOptionSet();
        return new Command("pretrain", "Train a base model from scratch on a public corpus (plain causal LM)").With(p =>
        {
            runtime.Apply(p);
            var r = Pretraining.Run(p.GetValue(arch)!, p.GetValue(preset)!, p.GetValue(data)!, p.GetValue(outDir)!, new TrainOptions
            {
                Epochs = TrainingCommands.Positive(p.GetValue(epochs), "--epochs"), LearningRate = p.GetValue(lr),
                BatchSize = TrainingCommands.Positive(p.GetValue(batch), "--batch-size"), Seed = p.GetValue(seed),
                WarmupRatio = 0.05, Schedule = LrSchedule.Cosine, MaxDuration = p.GetValue(minutes) > 0 ? TimeSpan.FromMinutes(p.GetValue(minutes)) : null,
                MaxSteps = p.GetValue(maxSteps) is int n ? TrainingCommands.Positive(n, "--max-steps") : null,
            }, new DataOptions { MaxTotalTokens = 192 }, progress: null);
            t.Out.WriteLine($"pretrained {r.Parameters:N0} parameters: {r.Steps} steps, {r.Tokens:N0} tokens in {r.Seconds:F0}s on {r.TrainExamples:N0} examples; dev loss {r.DevLoss:F4}, perplexity {r.DevPerplexity:F2} (bytes, {r.DevExamples} held-out examples)");
            File.WriteAllText(Path.Combine(p.GetValue(outDir)!, "pretrain_summary.json"), JsonSerializer.Serialize(r, new JsonSerializerOptions { WriteIndented = true }));
        }, [arch, preset, data, outDir, epochs, minutes, maxSteps, lr, batch, seed, .. runtime.All]);
    }
}
