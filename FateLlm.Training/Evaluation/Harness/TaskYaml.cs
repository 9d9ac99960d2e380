using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace FateLlm.Training.Evaluation.Harness;

/// <summary>
/// Reads lm-eval task YAML files: the keys people use, <c>include</c> of a base file (the including file's keys win),
/// local JSON/JSONL data through <c>dataset_path: json</c> + <c>dataset_kwargs.data_files</c> (or a local folder of
/// <c>&lt;split&gt;.jsonl</c> files). Relative data paths are resolved against the folder of the YAML file that names
/// them. Anything FateLlm does not run (Python hooks such as <c>!function</c>, filters, groups, Hub datasets) and any
/// unknown key is refused naming file, line and key, so a task never silently scores something else.
/// </summary>
public static class TaskYaml
{
    /// <summary>A key's value and where it was written.</summary>
    sealed record Entry(YamlNode Node, string File)
    {
        public string Where => $"{File}:{Node.Start.Line}";
    }

    static readonly HashSet<string> Supported =
    [
        "task", "task_alias", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "data_files", "training_split", "validation_split",
        "test_split", "fewshot_split", "doc_to_text", "doc_to_target", "doc_to_choice", "description", "target_delimiter", "fewshot_delimiter",
        "num_fewshot", "metric_list", "output_type", "generation_kwargs", "repeats", "metadata", "should_decontaminate",
        "doc_to_decontamination_query", "include",
    ];

    /// <summary>lm-eval keys FateLlm knows and does not run, with why.</summary>
    static readonly Dictionary<string, string> Unsupported = new()
    {
        ["process_docs"] = "it calls Python", ["process_results"] = "it calls Python", ["custom_dataset"] = "it calls Python",
        ["filter_list"] = "only the 'none' filter is run", ["group"] = "group configs are not run; name the tasks or a tag instead",
        ["group_alias"] = "group configs are not run", ["doc_to_image"] = "tasks are text-only", ["doc_to_audio"] = "tasks are text-only",
        ["use_prompt"] = "promptsource is not available", ["unsafe_code"] = "code execution tasks are not run", ["gen_prefix"] = "not supported",
        ["fewshot_config"] = "few-shot examples are drawn at random from the few-shot split",
    };

    static readonly Dictionary<OutputType, string[]> DefaultMetrics = new()
    {
        [OutputType.MultipleChoice] = ["acc", "acc_norm"],
        [OutputType.Loglikelihood] = ["perplexity", "acc"],
        [OutputType.LoglikelihoodRolling] = ["word_perplexity", "byte_perplexity", "bits_per_byte"],
        [OutputType.GenerateUntil] = ["exact_match"],
    };

    /// <summary>Metric → (default aggregation, higher is better, the output types that produce it).</summary>
    static readonly Dictionary<string, (string Aggregation, bool Higher, OutputType[] Types)> Metrics = new()
    {
        ["acc"] = ("mean", true, [OutputType.MultipleChoice, OutputType.Loglikelihood]),
        ["acc_norm"] = ("mean", true, [OutputType.MultipleChoice]),
        ["perplexity"] = ("perplexity", false, [OutputType.Loglikelihood]),
        ["word_perplexity"] = ("weighted_perplexity", false, [OutputType.LoglikelihoodRolling]),
        ["byte_perplexity"] = ("weighted_perplexity", false, [OutputType.LoglikelihoodRolling]),
        ["bits_per_byte"] = ("bits_per_byte", false, [OutputType.LoglikelihoodRolling]),
        ["exact_match"] = ("mean", true, [OutputType.GenerateUntil]),
        ["rougeL"] = ("mean", true, [OutputType.GenerateUntil]),
        ["bleu"] = ("bleu", true, [OutputType.GenerateUntil]),
    };

    static readonly HashSet<string> ExactMatchOptions = ["ignore_case", "ignore_punctuation", "regexes_to_ignore", "ignore_numbers"];
    static readonly HashSet<string> GenerationKeys = ["until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"];

    public static TaskConfig Load(string path, int defaultMaxGenToks = 256)
    {
        var full = Path.GetFullPath(path);
        var entries = Merged(full, []);
        string Where(string key) => entries.TryGetValue(key, out var e) ? e.Where : full;
        TaskConfigException Fail(string key, string message) => new($"{Where(key)}: {key}: {message}");

        string? Str(string key)
        {
            if (!entries.TryGetValue(key, out var e)) return null;
            return e.Node is YamlScalarNode s ? s.Value ?? "" : throw Fail(key, "must be a string");
        }
        var task = Str("task") ?? throw new TaskConfigException($"{full}:1: task: missing (every task needs a name)");
        var typeName = Str("output_type") ?? "generate_until";
        var type = typeName switch
        {
            "multiple_choice" => OutputType.MultipleChoice,
            "loglikelihood" => OutputType.Loglikelihood,
            "loglikelihood_rolling" => OutputType.LoglikelihoodRolling,
            "generate_until" => OutputType.GenerateUntil,
            _ => throw Fail("output_type", $"'{typeName}' is not one of multiple_choice, loglikelihood, loglikelihood_rolling, generate_until"),
        };
        if (entries.TryGetValue("repeats", out var rep) && Int(rep, "repeats") != 1) throw Fail("repeats", "only 1 is run");
        // Decontamination needs lm-eval's n-gram index of a training corpus; without one lm-eval scores as usual, and so does this.
        if (entries.TryGetValue("should_decontaminate", out var dec)) Bool(dec, "should_decontaminate");
        var fewshot = entries.TryGetValue("num_fewshot", out var nf) ? Int(nf, "num_fewshot") : (int?)null;
        if (fewshot < 0) throw Fail("num_fewshot", "must be 0 or more");
        if (type == OutputType.MultipleChoice && !entries.ContainsKey("doc_to_choice")) throw Fail("output_type", "multiple_choice needs doc_to_choice");
        return new TaskConfig
        {
            Task = task,
            Source = full,
            OutputType = type,
            DataFiles = DataFiles(entries, Fail),
            TrainingSplit = Str("training_split"),
            ValidationSplit = Str("validation_split"),
            TestSplit = Str("test_split"),
            FewshotSplit = Str("fewshot_split"),
            DocToText = Field(entries, "doc_to_text"),
            DocToTarget = Field(entries, "doc_to_target"),
            DocToChoice = Field(entries, "doc_to_choice"),
            Description = Str("description") ?? "",
            TargetDelimiter = Str("target_delimiter") ?? " ",
            FewshotDelimiter = Str("fewshot_delimiter") ?? "\n\n",
            NumFewshot = fewshot,
            Metrics = MetricList(entries, type, Fail),
            Generation = type == OutputType.GenerateUntil ? Generation(entries, defaultMaxGenToks, Fail) : null,
            Tags = entries.TryGetValue("tag", out var tag) ? Strings(tag, "tag") : [],
            Alias = Str("task_alias"),
            Version = entries.TryGetValue("metadata", out var meta) && meta.Node is YamlMappingNode m
                && m.Children.TryGetValue(new YamlScalarNode("version"), out var v) && v is YamlScalarNode vs
                && double.TryParse(vs.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var ver) ? ver : 0,
            Config = new JsonObject(entries.Where(kv => kv.Key != "include").Select(kv => KeyValuePair.Create(kv.Key, ToJson(kv.Value.Node)))),
        };
    }

    /// <summary>The task's name and tags without checking the rest, to find tasks in a folder.</summary>
    public static (string? Task, IReadOnlyList<string> Tags) Peek(string path)
    {
        var entries = Merged(Path.GetFullPath(path), []);
        var task = entries.TryGetValue("task", out var t) && t.Node is YamlScalarNode s ? s.Value : null;
        return (task, entries.TryGetValue("tag", out var tag) ? Strings(tag, "tag") : []);
    }

    static Dictionary<string, Entry> Merged(string file, HashSet<string> visiting)
    {
        if (!visiting.Add(file)) throw new TaskConfigException($"{file}: include: the file includes itself (through {string.Join(" → ", visiting)})");
        if (!File.Exists(file)) throw new TaskConfigException($"{file}: no such task file");
        YamlMappingNode root;
        try
        {
            var stream = new YamlStream();
            using (var reader = new StreamReader(file)) stream.Load(reader);
            root = stream.Documents.Count == 1 && stream.Documents[0].RootNode is YamlMappingNode m
                ? m : throw new TaskConfigException($"{file}:1: a task file holds one mapping of keys");
        }
        catch (YamlException e)
        {
            throw new TaskConfigException($"{file}:{e.Start.Line}: not valid YAML: {e.Message}");
        }
        var own = new Dictionary<string, Entry>();
        foreach (var (k, v) in root.Children)
        {
            var key = (k as YamlScalarNode)?.Value ?? throw new TaskConfigException($"{file}:{k.Start.Line}: a key must be a plain name");
            if (Unsupported.TryGetValue(key, out var why)) throw new TaskConfigException($"{file}:{k.Start.Line}: {key}: not supported by FateLlm ({why})");
            if (!Supported.Contains(key)) throw new TaskConfigException($"{file}:{k.Start.Line}: {key}: unknown key");
            if (FindFunctionTag(v) is { } fn)
                throw new TaskConfigException($"{file}:{fn.Start.Line}: {key}: '!function' calls Python, which FateLlm does not run; write it as a Jinja template or a column name");
            own[key] = new Entry(v, file);
        }
        var merged = new Dictionary<string, Entry>();
        if (own.TryGetValue("include", out var inc))
        {
            foreach (var name in Strings(inc, "include"))
            {
                var path = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(file)!, name));
                Dictionary<string, Entry> included;
                try { included = Merged(path, visiting); }
                catch (TaskConfigException e) when (!File.Exists(path)) { throw new TaskConfigException($"{inc.Where}: include: {name}: {e.Message}"); }
                foreach (var (k, e) in included) merged[k] = e;
            }
        }
        foreach (var (k, e) in own) merged[k] = e;
        visiting.Remove(file);
        return merged;
    }

    static YamlNode? FindFunctionTag(YamlNode node)
    {
        if (!node.Tag.IsEmpty && node.Tag.Value == "!function") return node;
        return node switch
        {
            YamlMappingNode m => m.Children.Select(kv => FindFunctionTag(kv.Value)).FirstOrDefault(x => x is not null),
            YamlSequenceNode s => s.Children.Select(FindFunctionTag).FirstOrDefault(x => x is not null),
            _ => null,
        };
    }

    static IReadOnlyDictionary<string, IReadOnlyList<string>> DataFiles(Dictionary<string, Entry> entries, Func<string, string, TaskConfigException> fail)
    {
        string Resolve(Entry e, string p) => Path.GetFullPath(Path.Combine(Path.GetDirectoryName(e.File)!, p));
        Entry? files = entries.GetValueOrDefault("data_files");
        if (entries.TryGetValue("dataset_kwargs", out var kw))
        {
            if (kw.Node is not YamlMappingNode km) throw fail("dataset_kwargs", "must be a mapping");
            foreach (var (k, v) in km.Children)
            {
                var name = ((YamlScalarNode)k).Value;
                if (name != "data_files") throw new TaskConfigException($"{kw.File}:{k.Start.Line}: dataset_kwargs.{name}: unknown key (only data_files is read)");
                files = new Entry(v, kw.File);
            }
        }
        var path = entries.TryGetValue("dataset_path", out var dp) ? (dp.Node as YamlScalarNode)?.Value : null;
        if (files is not null)
        {
            if (path is not null and not "json") throw fail("dataset_path", $"'{path}' with data_files: use dataset_path: json (the files are local JSON or JSONL)");
            // Hugging Face's datasets put a bare file or list under the "train" split.
            return files.Node switch
            {
                YamlScalarNode or YamlSequenceNode => new Dictionary<string, IReadOnlyList<string>> { ["train"] = Strings(files, "data_files").Select(p => Resolve(files, p)).ToList() },
                YamlMappingNode m => m.Children.ToDictionary(kv => ((YamlScalarNode)kv.Key).Value!,
                    kv => (IReadOnlyList<string>)Strings(new Entry(kv.Value, files.File), "data_files").Select(p => Resolve(files, p)).ToList()),
                _ => throw fail("data_files", "must be a file, a list of files, or a mapping of split to files"),
            };
        }
        if (path is null) throw new TaskConfigException($"{entries["task"].File}: dataset_path: missing (a local folder, or json with dataset_kwargs.data_files)");
        var folder = Resolve(dp!, path);
        if (!Directory.Exists(folder))
            throw fail("dataset_path", $"'{path}' is not a local folder; FateLlm reads no dataset hub: give dataset_path: json with dataset_kwargs.data_files naming local JSON/JSONL files");
        var found = Directory.EnumerateFiles(folder).Where(f => f.EndsWith(".jsonl") || f.EndsWith(".json"))
            .GroupBy(f => Path.GetFileNameWithoutExtension(f)).ToDictionary(g => g.Key, g => (IReadOnlyList<string>)g.Order().ToList());
        return found.Count > 0 ? found : throw fail("dataset_path", $"'{folder}' holds no <split>.jsonl or <split>.json files");
    }

    static DocField? Field(Dictionary<string, Entry> entries, string key)
    {
        if (!entries.TryGetValue(key, out var e)) return null;
        return e.Node switch
        {
            YamlScalarNode s when s.Style == ScalarStyle.Plain && long.TryParse(s.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) => new DocField.Number(n),
            YamlScalarNode s => new DocField.Template(s.Value ?? ""),
            YamlSequenceNode q => new DocField.Items(Strings(e, key)),
            YamlMappingNode m => new DocField.Items(m.Children.Select(kv => (kv.Value as YamlScalarNode)?.Value
                ?? throw new TaskConfigException($"{e.File}:{kv.Value.Start.Line}: {key}: each value must be a string")).ToList()),
            _ => throw new TaskConfigException($"{e.Where}: {key}: must be a column name, a template, a number or a list"),
        };
    }

    static IReadOnlyList<MetricSpec> MetricList(Dictionary<string, Entry> entries, OutputType type, Func<string, string, TaskConfigException> fail)
    {
        if (!entries.TryGetValue("metric_list", out var e))
            return DefaultMetrics[type].Select(m => new MetricSpec(m, Metrics[m].Aggregation, Metrics[m].Higher, new Dictionary<string, JsonNode?>())).ToList();
        if (e.Node is not YamlSequenceNode seq) throw fail("metric_list", "must be a list of {metric: NAME, ...}");
        var list = new List<MetricSpec>();
        foreach (var item in seq.Children)
        {
            string At(YamlNode n) => $"{e.File}:{n.Start.Line}";
            if (item is not YamlMappingNode m) throw new TaskConfigException($"{At(item)}: metric_list: each entry is a mapping with 'metric'");
            string? name = null, aggregation = null;
            bool? higher = null;
            var options = new Dictionary<string, JsonNode?>();
            foreach (var (k, v) in m.Children)
            {
                var key = ((YamlScalarNode)k).Value!;
                var value = (v as YamlScalarNode)?.Value;
                switch (key)
                {
                    case "metric": name = value; break;
                    case "aggregation": aggregation = value; break;
                    case "higher_is_better": higher = Bool(new Entry(v, e.File), "metric_list.higher_is_better"); break;
                    default:
                        if (name is not "exact_match" || !ExactMatchOptions.Contains(key))
                            throw new TaskConfigException($"{At(k)}: metric_list.{key}: unknown option{(name is null ? " (write 'metric' first)" : $" of metric '{name}'")}");
                        options[key] = ToJson(v);
                        break;
                }
            }
            if (name is null) throw new TaskConfigException($"{At(item)}: metric_list.metric: missing");
            if (!Metrics.TryGetValue(name, out var known))
                throw new TaskConfigException($"{At(item)}: metric_list.metric: '{name}' is not one of {string.Join(", ", Metrics.Keys)}");
            if (!known.Types.Contains(type))
                throw new TaskConfigException($"{At(item)}: metric_list.metric: '{name}' is not computed for output_type {Snake(type)}");
            if (aggregation is not null && aggregation != known.Aggregation)
                throw new TaskConfigException($"{At(item)}: metric_list.aggregation: '{aggregation}' for {name}; FateLlm aggregates it as {known.Aggregation}");
            list.Add(new MetricSpec(name, known.Aggregation, higher ?? known.Higher, options));
        }
        return list;
    }

    static GenerationSpec Generation(Dictionary<string, Entry> entries, int defaultMaxGenToks, Func<string, string, TaskConfigException> fail)
    {
        var spec = new GenerationSpec([], defaultMaxGenToks, false, 0, 0, 1.0);
        if (!entries.TryGetValue("generation_kwargs", out var e)) return spec;
        if (e.Node is not YamlMappingNode m) throw fail("generation_kwargs", "must be a mapping");
        foreach (var (k, v) in m.Children)
        {
            var key = ((YamlScalarNode)k).Value!;
            if (!GenerationKeys.Contains(key)) throw new TaskConfigException($"{e.File}:{k.Start.Line}: generation_kwargs.{key}: unknown key (one of {string.Join(", ", GenerationKeys)})");
            var entry = new Entry(v, e.File);
            var name = "generation_kwargs." + key;
            spec = key switch
            {
                "until" => spec with { Until = Strings(entry, name) },
                "max_gen_toks" => spec with { MaxGenToks = Int(entry, name) is var n && n > 0 ? n : throw new TaskConfigException($"{entry.Where}: {name}: must be positive") },
                "do_sample" => spec with { DoSample = Bool(entry, name) },
                "temperature" => spec with { Temperature = Double(entry, name) },
                "top_k" => spec with { TopK = Int(entry, name) },
                _ => spec with { TopP = Double(entry, name) },
            };
        }
        return spec;
    }

    static IReadOnlyList<string> Strings(Entry e, string key) => e.Node switch
    {
        YamlScalarNode s => [s.Value ?? ""],
        YamlSequenceNode q => q.Children.Select(c => (c as YamlScalarNode)?.Value
            ?? throw new TaskConfigException($"{e.File}:{c.Start.Line}: {key}: each item must be a string")).ToList(),
        _ => throw new TaskConfigException($"{e.Where}: {key}: must be a string or a list of strings"),
    };

    static int Int(Entry e, string key) => e.Node is YamlScalarNode s && int.TryParse(s.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n)
        ? n : throw new TaskConfigException($"{e.Where}: {key}: must be an integer");

    static double Double(Entry e, string key) => e.Node is YamlScalarNode s && double.TryParse(s.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var n)
        ? n : throw new TaskConfigException($"{e.Where}: {key}: must be a number");

    static bool Bool(Entry e, string key) => e.Node is YamlScalarNode { Value: var v } && v?.ToLowerInvariant() is "true" or "false"
        ? v!.Equals("true", StringComparison.OrdinalIgnoreCase) : throw new TaskConfigException($"{e.Where}: {key}: must be true or false");

    static readonly Regex Integer = new(@"^-?\d+$"), Number = new(@"^-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$");

    /// <summary>The YAML as JSON for the results' configs: plain numbers and booleans typed, everything else a string.</summary>
    static JsonNode? ToJson(YamlNode node) => node switch
    {
        YamlScalarNode { Style: ScalarStyle.Plain, Value: var v } when v is "true" or "True" => true,
        YamlScalarNode { Style: ScalarStyle.Plain, Value: var v } when v is "false" or "False" => false,
        YamlScalarNode { Style: ScalarStyle.Plain, Value: var v } when v is "null" or "~" or "" => null,
        YamlScalarNode { Style: ScalarStyle.Plain, Value: var v } when Integer.IsMatch(v!) && long.TryParse(v, out var l) => l,
        YamlScalarNode { Style: ScalarStyle.Plain, Value: var v } when Number.IsMatch(v!) => double.Parse(v!, CultureInfo.InvariantCulture),
        YamlScalarNode s => s.Value,
        YamlSequenceNode q => new JsonArray(q.Children.Select(ToJson).ToArray()),
        YamlMappingNode m => new JsonObject(m.Children.Select(kv => KeyValuePair.Create(((YamlScalarNode)kv.Key).Value!, ToJson(kv.Value)))),
        _ => null,
    };

    public static string Snake(OutputType t) => t switch
    {
        OutputType.MultipleChoice => "multiple_choice",
        OutputType.Loglikelihood => "loglikelihood",
        OutputType.LoglikelihoodRolling => "loglikelihood_rolling",
        _ => "generate_until",
    };
}
