using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation.Harness;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary><c>fate-llm evaluate</c>: lm-eval-style tasks on a base model with an optional adapter, results in lm-eval's schema.</summary>
internal static class EvaluateCommand
{
    public static Command Build(Terminal t)
    {
        var defaults = FederationNode.Reference().GetConfig("fate-llm.harness");
        var model = new Option<string?>("--model") { Description = "Base model folder (HF format)" };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder (its base is --model, or the one it records)" };
        var tasks = Required<string>("--tasks", "Comma-separated task names, tags or YAML files (built in: wordnet, wordnet_by_domain, wordnet_gloss, wordnet_word, wordnet_kind, wordnet_gloss_ppl)");
        var include = new Option<string[]>("--include-path") { Description = "A folder of lm-eval task YAMLs (repeatable)", AllowMultipleArgumentsPerToken = true };
        var limit = new Option<string?>("--limit") { Description = "At most N documents per task, or a fraction of each task below 1 (as lm-eval)" };
        var fewshot = new Option<int?>("--num-fewshot") { Description = "Few-shot examples per document for every task (default: each task's num_fewshot, else 0)" };
        var batch = Opt("--batch-size", "Requests scored together", defaults.GetInt("batch-size"));
        var maxLength = new Option<int?>("--max-length") { Description = "Context window in tokens (default: the model's max_position_embeddings)" };
        var bos = Opt("--bos", "auto | on | off: start each context with BOS (auto: when the tokenizer adds one, as FateLlm trains; off: lm-eval's HF default)", "auto");
        var output = new Option<string?>("--output") { Description = "Write lm-eval's results JSON here" };
        var logSamples = Opt("--log-samples", "With --output: write samples_<task>.jsonl beside the results", false);
        var dict = Opt("--dict", "WordNet dictionary for the built-in tasks", defaults.GetString("wordnet-dictionary"));
        var runtime = new RuntimeOptionSet();
        return new Command("evaluate", "Score a model (and adapter) on lm-eval-style tasks: multiple choice by log-likelihood, rolling perplexity, generation").With(p =>
        {
            var names = p.GetValue(tasks)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (names.Length == 0) throw new UsageException("--tasks names no task");
            var options = new HarnessOptions
            {
                BatchSize = TrainingCommands.Positive(p.GetValue(batch), "--batch-size"),
                Limit = ParseLimit(p.GetValue(limit)),
                NumFewshot = p.GetValue(fewshot) is int k && k < 0 ? throw new UsageException("--num-fewshot must be ≥ 0") : p.GetValue(fewshot),
                MaxLength = p.GetValue(maxLength) is int m && m < 2 ? throw new UsageException("--max-length must be ≥ 2") : p.GetValue(maxLength),
                AddBos = p.GetValue(bos) switch { "auto" => null, "on" => true, "off" => false, var b => throw new UsageException($"--bos '{b}' must be auto, on or off") },
                FewshotSeed = defaults.GetInt("fewshot-seed"),
                BootstrapIters = defaults.GetInt("bootstrap-iters"),
                LogSamples = p.GetValue(logSamples),
            };
            if (options.LogSamples && p.GetValue(output) is null) throw new UsageException("--log-samples needs --output FILE");
            var folders = (p.GetValue(include) ?? []).ToList();
            foreach (var f in folders.Where(f => !Directory.Exists(f))) throw new UsageException($"--include-path '{f}' is not a folder");
            var sources = new TaskSources(new Dictionary<string, string>(), folders, Path.GetFullPath(defaults.GetString("task-folder")), p.GetValue(dict)!);
            var resolved = sources.Resolve(names, defaults.GetInt("max-gen-toks"));
            var device = runtime.Apply(p);
            var clock = Stopwatch.StartNew();
            using var loaded = LoadedModel.Open(p.GetValue(model), p.GetValue(adapter), device);
            var results = new List<TaskResult>();
            var interactive = t.Err == Console.Error && !Console.IsErrorRedirected;
            foreach (var task in resolved)
            {
                var started = clock.Elapsed;
                var result = TaskEvaluation.Run(loaded.Model, loaded.Tokenizer, task, options with
                {
                    Progress = interactive ? (done, all) => t.Err.Write($"\r{task.Task}: {done}/{all} requests ") : null,
                });
                if (interactive) t.Err.Write("\r" + new string(' ', 60) + "\r");
                results.Add(result);
                t.Out.WriteLine($"{task.Task,-28} n={result.Effective,-5} {string.Join("  ", result.Metrics.Select(kv => $"{kv.Key} {Format(kv.Value)}"))}  ({(clock.Elapsed - started).TotalSeconds:F1} s)");
            }
            t.Out.WriteLine($"{results.Count} task(s) in {clock.Elapsed.TotalSeconds:F1} s");
            if (p.GetValue(output) is { } file)
            {
                var config = new JsonObject
                {
                    ["model"] = "fate-llm", ["model_args"] = $"pretrained={loaded.BaseFolder}" + (p.GetValue(adapter) is { } a ? $",peft={Path.GetFullPath(a)}" : ""),
                    ["batch_size"] = options.BatchSize, ["device"] = device.ToString(), ["limit"] = options.Limit,
                    ["bos"] = p.GetValue(bos), ["max_length"] = options.MaxLength ?? loaded.Model.Config.MaxPositions,
                };
                var json = HarnessResults.Build(results, config, clock.Elapsed.TotalSeconds);
                var dir = Path.GetDirectoryName(Path.GetFullPath(file))!;
                Directory.CreateDirectory(dir);
                File.WriteAllText(file, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                t.Out.WriteLine($"results: {file}");
                if (options.LogSamples) foreach (var r in results) t.Out.WriteLine($"samples: {HarnessResults.WriteSamples(dir, r)}");
            }
        }, [model, adapter, tasks, include, limit, fewshot, batch, maxLength, bos, output, logSamples, dict, .. runtime.All]);
    }

    static string Format(MetricValue v) => v.StdErr is double se
        ? $"{v.Value.ToString("F4", CultureInfo.InvariantCulture)} ± {se.ToString("F4", CultureInfo.InvariantCulture)}"
        : v.Value.ToString("F4", CultureInfo.InvariantCulture);

    static double? ParseLimit(string? text)
    {
        if (text is null) return null;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || v <= 0 || (v > 1 && v != Math.Floor(v)))
            throw new UsageException($"--limit '{text}' must be a positive whole number, or a fraction below 1");
        return v;
    }
}
