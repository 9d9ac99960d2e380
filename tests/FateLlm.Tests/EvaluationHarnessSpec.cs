using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Host.Cli;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Evaluation.Harness;
using FateLlm.Training.Federation;
using FateLlm.Training.Inference;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The lm-eval-style harness against values computed independently (tests/reference/make_eval_fixtures.py, which
/// writes lm-eval's HF-backend algorithms in PyTorch): multiple-choice log-likelihoods, acc and acc_norm with their
/// standard errors on arc_easy's own YAML over local data, rolling-window perplexities, and generation with stop
/// sequences; batching that changes no score; refusals that name file, line and key; the built-in WordNet tasks;
/// and the CLI's lm-eval results file.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class EvaluationHarnessSpec
{
    static string Fixture(params string[] parts) => TestSupport.FixturePath(["eval", .. parts]);
    static readonly JsonElement Expected = JsonDocument.Parse(File.ReadAllText(Fixture("expected.json"))).RootElement;

    static TaskResult Run(string yaml, int batch = 1, int? fewshot = null, double? limit = null)
    {
        using var served = ServedModel.Open(Fixture("model"));
        return TaskEvaluation.Run(served.Model, served.Tokenizer, TaskYaml.Load(Fixture(yaml)),
            new HarnessOptions { BatchSize = batch, LogSamples = true, NumFewshot = fewshot, Limit = limit });
    }

    /// <summary>Each request's log-likelihood from the sample log: [[ll, is_greedy]] per choice, [[ll]] per rolling document.</summary>
    static double[] LogLikelihoods(TaskResult r) => r.Samples
        .SelectMany(s => s["resps"]!.AsArray().Select(x => x!.AsArray()[0] is JsonArray pair ? pair[0]!.GetValue<double>() : x.AsArray()[0]!.GetValue<double>())).ToArray();

    [Fact]
    public void Multiple_choice_log_likelihoods_acc_and_acc_norm_match_the_reference_on_arc_easys_yaml()
    {
        var r = Run("arc_easy.yaml");
        var e = Expected.GetProperty("arc_easy");
        var expected = e.GetProperty("docs").EnumerateArray().SelectMany(d => d.GetProperty("loglikelihoods").EnumerateArray().Select(x => x.GetDouble())).ToArray();
        var actual = LogLikelihoods(r);
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) < 1e-4, $"request {i}: {actual[i]} vs {expected[i]}");
        var greedy = e.GetProperty("docs").EnumerateArray().SelectMany(d => d.GetProperty("greedy").EnumerateArray().Select(x => x.GetBoolean()));
        Assert.Equal(greedy, r.Samples.SelectMany(s => s["resps"]!.AsArray().Select(x => x!.AsArray()[0]!.AsArray()[1]!.GetValue<bool>())));
        Assert.Equal(e.GetProperty("docs").EnumerateArray().Select(d => d.GetProperty("gold").GetInt32()), r.Samples.Select(s => s["target"]!.GetValue<int>()));
        Assert.Equal(e.GetProperty("acc").GetDouble(), r.Metrics["acc"].Value, 9);
        Assert.Equal(e.GetProperty("acc_stderr").GetDouble(), r.Metrics["acc"].StdErr!.Value, 9);
        Assert.Equal(e.GetProperty("acc_norm").GetDouble(), r.Metrics["acc_norm"].Value, 9);
        Assert.Equal(e.GetProperty("acc_norm_stderr").GetDouble(), r.Metrics["acc_norm"].StdErr!.Value, 9);
        Assert.NotEqual(r.Metrics["acc"].Value, r.Metrics["acc_norm"].Value); // the fixture tells the two apart
        // doc_to_choice rendered "{{choices.text}}" as a Python list, the apostrophe of "it's cold air" included.
        Assert.Equal([" salt", " sand", " it's cold air"], r.Samples[1]["arguments"]!.AsArray().Select(a => a![1]!.GetValue<string>()));
        Assert.Equal((6, 6, 0), (r.Original, r.Effective, r.NumFewshot));
    }

    [Fact]
    public void Rolling_perplexities_match_the_reference_over_several_windows()
    {
        var r = Run("tiny_wikitext.yaml");
        var e = Expected.GetProperty("tiny_wikitext");
        var expected = e.GetProperty("docs").EnumerateArray().Select(d => d.GetProperty("loglikelihood").GetDouble()).ToArray();
        Assert.Contains(e.GetProperty("docs").EnumerateArray(), d => d.GetProperty("windows").GetInt32() > 1);
        var actual = LogLikelihoods(r);
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) < 1e-3, $"document {i}: {actual[i]} vs {expected[i]}");
        foreach (var m in new[] { "word_perplexity", "byte_perplexity", "bits_per_byte" })
        {
            var want = e.GetProperty(m).GetDouble();
            Assert.True(Math.Abs(r.Metrics[m].Value / want - 1) < 1e-5, $"{m}: {r.Metrics[m].Value} vs {want}");
            Assert.Null(r.Metrics[m].StdErr);
        }
    }

    [Fact]
    public void Generation_stops_at_the_first_stop_sequence_as_the_reference_does()
    {
        var r = Run("tiny_qa.yaml", batch: 3);
        var e = Expected.GetProperty("tiny_qa");
        Assert.Equal(e.GetProperty("docs").EnumerateArray().Select(d => d.GetProperty("prediction").GetString()),
            r.Samples.Select(s => s["filtered_resps"]![0]!.GetValue<string>()));
        Assert.Equal(e.GetProperty("exact_match").GetDouble(), r.Metrics["exact_match"].Value);
        Assert.Equal(["exact_match", "rougeL", "bleu"], r.Metrics.Keys);
    }

    [Fact]
    public void Batching_and_padding_change_no_score()
    {
        foreach (var yaml in new[] { "arc_easy.yaml", "tiny_wikitext.yaml" })
        {
            var one = LogLikelihoods(Run(yaml, batch: 1));
            var eight = LogLikelihoods(Run(yaml, batch: 8));
            for (int i = 0; i < one.Length; i++) Assert.True(Math.Abs(one[i] - eight[i]) < 1e-5, $"{yaml} request {i}: {one[i]} vs {eight[i]}");
        }
    }

    [Fact]
    public void Rolling_windows_predict_every_token_once_as_lm_evals()
    {
        string Show(List<TokenRequest> w) => string.Join(" ", w.Select(x => $"[{string.Join(",", x.Context)}]→[{string.Join(",", x.Continuation)}]"));
        // Expected values printed by tests/reference/make_eval_fixtures.py's rolling_windows.
        Assert.Equal("[-1]→[0,1,2,3] [3]→[4,5,6,7] [5,6,7]→[8,9]", Show(LikelihoodScoring.RollingWindows([.. Enumerable.Range(0, 10)], -1, 4)));
        Assert.Equal("[-1]→[0,1,2]", Show(LikelihoodScoring.RollingWindows([0, 1, 2], -1, 4)));
        Assert.Equal("[-1]→[0,1,2,3] [0,1,2,3]→[4]", Show(LikelihoodScoring.RollingWindows([.. Enumerable.Range(0, 5)], -1, 4)));
    }

    [Fact]
    public void Few_shot_contexts_are_lm_evals_own_draws()
    {
        var r = Run("arc_easy.yaml", fewshot: 2, limit: 4);
        // random.Random(1234).sample per document, as the reference draws them; a drawn example equal to the document
        // itself is dropped (the first document keeps one example).
        var expected = Expected.GetProperty("arc_easy_2shot").GetProperty("contexts").EnumerateArray().Select(c => c.GetString()).ToList();
        Assert.Equal(expected, r.Samples.Select(s => s["arguments"]![0]![0]!.GetValue<string>()));
        Assert.Equal((4, 2), (r.Effective, r.NumFewshot));
    }

    [Fact]
    public void Python_random_draws_as_cpython_does()
    {
        // Printed by CPython 3.11: r = random.Random(1234); r.sample(range(10), 3), r.sample(range(100), 4),
        // r.sample(range(7), 7), r.sample(range(3000), 6), r.getrandbits(32).
        var r = new PythonRandom(1234);
        Assert.Equal([7, 1, 0], r.Sample(10, 3));
        Assert.Equal([11, 74, 4, 85], r.Sample(100, 4));
        Assert.Equal([5, 0, 6, 2, 4, 3, 1], r.Sample(7, 7));
        Assert.Equal([64, 1417, 2655, 2552, 1983, 2522], r.Sample(3000, 6));
        Assert.Equal(1990923381u, r.GetRandBits(32));
    }

    public static TheoryData<string, string, string> Refusals => new()
    {
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\noutput_type: multiple_choice\ndoc_to_choice: c\nprocess_docs: !function utils.process_docs\n", ":6: process_docs: not supported", "it calls Python" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\ndoc_to_text: !function utils.text\n", ":4: doc_to_text: '!function'", "Jinja" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\nbogus_key: 3\n", ":4: bogus_key: unknown key", "" },
        { "task: t\ndataset_path: allenai/ai2_arc\n", ":2: dataset_path: 'allenai/ai2_arc' is not a local folder", "dataset_kwargs.data_files" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\noutput_type: multiple_choice\ndoc_to_choice: c\nmetric_list:\n  - metric: f1\n", ":7: metric_list.metric: 'f1' is not one of", "" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\noutput_type: loglikelihood_rolling\nmetric_list:\n  - metric: acc\n", ":6: metric_list.metric: 'acc' is not computed for output_type loglikelihood_rolling", "" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\noutput_type: generate_until\nmetric_list:\n  - metric: exact_match\n    ignore_cases: true\n", ":7: metric_list.ignore_cases: unknown option of metric 'exact_match'", "" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\noutput_type: ranking\n", ":4: output_type: 'ranking' is not one of", "" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\ngeneration_kwargs:\n  until: [\"\\n\"]\n  num_beams: 4\n", ":6: generation_kwargs.num_beams: unknown key", "" },
        { "include: missing-base.yaml\ntask: t\n", ":1: include: missing-base.yaml", "no such task file" },
        { "task: t\ndataset_path: json\ndata_files: x.jsonl\nfilter_list:\n  - name: strict\n", ":4: filter_list: not supported", "" },
        { "task: t\ndataset_path: json\n  data_files: [\n", ":3: not valid YAML", "" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void A_task_file_fate_llm_cannot_run_is_refused_naming_file_line_and_key(string yaml, string expected, string why)
    {
        var dir = TestSupport.TempDir();
        var file = Path.Combine(dir, "task.yaml");
        File.WriteAllText(file, yaml);
        var e = Assert.Throws<TaskConfigException>(() => TaskYaml.Load(file));
        Assert.True(e.Message.Contains(file + expected), e.Message);
        Assert.Contains(why, e.Message);
    }

    [Fact]
    public void An_included_base_is_overridden_key_by_key_and_data_paths_resolve_beside_the_file_naming_them()
    {
        var dir = TestSupport.TempDir();
        Directory.CreateDirectory(Path.Combine(dir, "sub"));
        File.Copy(Fixture("arc-test.jsonl"), Path.Combine(dir, "arc-test.jsonl"));
        File.Copy(Fixture("arc_easy.yaml"), Path.Combine(dir, "arc_easy.yaml"));
        File.WriteAllLines(Path.Combine(dir, "sub", "two.jsonl"), File.ReadLines(Fixture("arc-test.jsonl")).Take(2));
        File.WriteAllText(Path.Combine(dir, "sub", "arc_two.yaml"), "include: ../arc_easy.yaml\ntask: arc_two\ndataset_kwargs:\n  data_files:\n    test: two.jsonl\nnum_fewshot: 0\n");
        var task = TaskYaml.Load(Path.Combine(dir, "sub", "arc_two.yaml"));
        Assert.Equal(("arc_two", OutputType.MultipleChoice, "Question: {{question}}\nAnswer:"), (task.Task, task.OutputType, ((DocField.Template)task.DocToText!).Source));
        Assert.Equal([Path.Combine(dir, "sub", "two.jsonl")], task.DataFiles["test"]);
        Assert.Equal(["acc", "acc_norm"], task.Metrics.Select(m => m.Name));
        Assert.Equal(2, new TaskDocuments(task).Split("test").Count);
        Assert.Equal(1.0, task.Version);
        Assert.Equal("ai2_arc", Assert.Single(task.Tags));
        var catalog = new TaskCatalog([dir]);
        Assert.Equal(["arc_easy", "arc_two"], catalog.Resolve(["ai2_arc"], 256).Select(t => t.Task).Order());
    }

    [Fact]
    public void A_document_whose_target_is_not_a_choice_is_refused_naming_the_file_and_line()
    {
        var dir = TestSupport.TempDir();
        File.WriteAllText(Path.Combine(dir, "d.jsonl"), "{\"q\": \"a\", \"c\": [\"x\", \"y\"], \"t\": \"x\"}\n{\"q\": \"b\", \"c\": [\"x\", \"y\"], \"t\": \"z\"}\n");
        File.WriteAllText(Path.Combine(dir, "t.yaml"), "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.jsonl\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: c\ndoc_to_target: t\n");
        using var served = ServedModel.Open(Fixture("model"));
        var e = Assert.Throws<TaskConfigException>(() => TaskEvaluation.Run(served.Model, served.Tokenizer, TaskYaml.Load(Path.Combine(dir, "t.yaml")), new HarnessOptions()));
        Assert.True(e.Message.Contains($"{Path.Combine(dir, "d.jsonl")}:2: task 't': doc_to_target 'z' is not one of the choices"), e.Message);
    }

    [Fact]
    public void The_wordnet_tasks_hold_the_experiments_test_synsets_with_four_choices_and_a_version_per_domain()
    {
        var synsets = WordNetCorpus.Read();
        var dir = TestSupport.TempDir();
        var names = WordNetTasks.Write(synsets, dir, new WordNetSplitOptions());
        var catalog = new TaskCatalog([dir]);
        var whole = catalog.Resolve([WordNetTasks.Tag], 256);
        Assert.Equal(["wordnet_gloss", "wordnet_gloss_ppl", "wordnet_kind", "wordnet_word"], whole.Select(t => t.Task).Order());
        var byDomain = catalog.Resolve([WordNetTasks.DomainTag], 256);
        Assert.Equal(4 * 6, byDomain.Count);
        Assert.Equal(names.Count, whole.Count + byDomain.Count);
        // The documents are the experiments' test set, in its order.
        var split = WordNetCorpus.Write(synsets, TestSupport.TempDir(), new WordNetSplitOptions());
        var gloss = whole.Single(t => t.Task == "wordnet_gloss");
        var docs = new TaskDocuments(gloss).Split("test");
        Assert.Equal(File.ReadLines(split.Test).Select(l => JsonNode.Parse(l)!["summary"]!.GetValue<string>()), docs.Select(d => d.Fields["gloss"]!.GetValue<string>()));
        var tasks = new TaskDocuments(gloss);
        foreach (var d in docs)
        {
            var choices = tasks.Choices(d);
            Assert.Equal(4, choices.Count);
            Assert.Equal(4, choices.Distinct().Count());
            Assert.Equal(d.Fields["gloss"]!.GetValue<string>(), choices[tasks.Gold(d, choices)[0]]);
        }
        var animal = byDomain.Single(t => t.Task == "wordnet_gloss_animal");
        Assert.All(new TaskDocuments(animal).Split("test"), d => Assert.Equal("animal", d.Fields["domain"]!.GetValue<string>()));
        Assert.Equal(gloss.DocToText, animal.DocToText);
        Assert.All(new TaskDocuments(whole.Single(t => t.Task == "wordnet_kind")).Split("test"), d => Assert.NotNull(d.Fields["kind"]));
    }

    [Fact]
    public void Task_scores_travel_as_update_metrics_and_aggregate_weighted_by_documents()
    {
        var a = new TaskScore("gloss", 30, new Dictionary<string, double> { ["acc"] = 0.5, ["acc_norm"] = 0.6 }, new Dictionary<string, double> { ["acc"] = 0.09 });
        var b = new TaskScore("gloss", 10, new Dictionary<string, double> { ["acc"] = 0.9, ["acc_norm"] = 0.2 }, new Dictionary<string, double> { ["acc"] = 0.1 });
        var ppl = new TaskScore("gloss_ppl", 5, new Dictionary<string, double> { ["bits_per_byte"] = 3.5 }, new Dictionary<string, double>());
        var back = TaskScore.FromMetrics(TaskScore.ToMetrics([a, ppl]));
        Assert.Equal(["gloss", "gloss_ppl"], back.Select(s => s.Task));
        Assert.Equal(30, back[0].Documents);
        Assert.Equal(a.Metrics.OrderBy(kv => kv.Key), back[0].Metrics.OrderBy(kv => kv.Key));
        Assert.Equal(a.StdErr.OrderBy(kv => kv.Key), back[0].StdErr.OrderBy(kv => kv.Key));
        Assert.Empty(back[1].StdErr);
        var all = TaskScore.Aggregate([a, b, ppl]);
        Assert.Equal(40, all[0].Documents);
        Assert.Equal((0.5 * 30 + 0.9 * 10) / 40, all[0].Metrics["acc"], 12);
        Assert.Equal((0.6 * 30 + 0.2 * 10) / 40, all[0].Metrics["acc_norm"], 12);
        Assert.Equal(Math.Sqrt(Math.Pow(0.75 * 0.09, 2) + Math.Pow(0.25 * 0.1, 2)), all[0].StdErr["acc"], 12);
        Assert.False(all[0].StdErr.ContainsKey("acc_norm")); // no party had one
        Assert.Empty(TaskScore.FromMetrics(new Dictionary<string, double> { ["loss.first"] = 1 }));
    }

    [Fact]
    public void Evaluation_in_rounds_is_refused_without_tasks_and_for_algorithms_whose_rounds_run_none()
    {
        var spec = Actors.Jobs.JobFile.Default("j", "model", [new PartySpec("a", "train", "dev")], "out");
        JobSpecException Refusal(JobSpec s) => Assert.Throws<JobSpecException>(() => JobSpecValidation.Validate(s, "job.conf", Training.Algorithms.AlgorithmCatalog.BuiltIn));
        Assert.Contains("job.conf: job.evaluation.every needs evaluation.tasks", Refusal(spec with { Evaluation = spec.Evaluation with { Every = 1 } }).Message);
        var kseed = spec with
        {
            Algorithm = new AlgorithmSpec("fedkseed", Actors.Jobs.JobFile.AlgorithmDefaults("fedkseed")),
            Evaluation = spec.Evaluation with { Every = 1, Tasks = ["wordnet"] },
        };
        Assert.Contains("job.conf: job.evaluation.every cannot apply: algorithm 'fedkseed' runs evaluation tasks only in the final evaluation", Refusal(kseed).Message);
        JobSpecValidation.Validate(spec with { Evaluation = spec.Evaluation with { Every = 2, Tasks = ["wordnet"] } }, "job.conf", Training.Algorithms.AlgorithmCatalog.BuiltIn);
    }

    [Fact]
    public void The_cli_writes_lm_evals_results_schema_and_samples()
    {
        var dir = TestSupport.TempDir();
        var results = Path.Combine(dir, "out", "results.json");
        var (o, e) = (new StringWriter(), new StringWriter());
        var code = CliApp.Run(["evaluate", "--model", Fixture("model"), "--tasks", "arc_easy,tiny_wikitext", "--include-path", TestSupport.FixturePath("eval"),
            "--limit", "4", "--output", results, "--log-samples", "--threads", "1"], o, e);
        Assert.True(code == 0, e.ToString());
        var json = JsonNode.Parse(File.ReadAllText(results))!;
        var arc = json["results"]!["arc_easy"]!;
        Assert.InRange(arc["acc,none"]!.GetValue<double>(), 0, 1);
        Assert.True(arc["acc_stderr,none"]!.GetValue<double>() >= 0);
        Assert.Equal("N/A", json["results"]!["tiny_wikitext"]!["word_perplexity_stderr,none"]!.GetValue<string>());
        Assert.Equal("multiple_choice", json["configs"]!["arc_easy"]!["output_type"]!.GetValue<string>());
        Assert.Equal(2.0, json["versions"]!["tiny_wikitext"]!.GetValue<double>());
        Assert.Equal((6, 4), (json["n-samples"]!["arc_easy"]!["original"]!.GetValue<int>(), json["n-samples"]!["arc_easy"]!["effective"]!.GetValue<int>()));
        Assert.True(json["higher_is_better"]!["arc_easy"]!["acc"]!.GetValue<bool>());
        Assert.Equal(4, File.ReadAllLines(Path.Combine(dir, "out", "samples_arc_easy.jsonl")).Length);
        Assert.Contains("arc_easy", o.ToString());

        e = new StringWriter();
        Assert.Equal(CliApp.RuntimeError, CliApp.Run(["evaluate", "--model", Fixture("model"), "--tasks", "no_such_task", "--include-path", TestSupport.FixturePath("eval")], new StringWriter(), e));
        Assert.Contains("error: task 'no_such_task' is not a YAML file, a task or a tag in the task folders (tasks: arc_easy, tiny_qa, tiny_wikitext)", e.ToString());
    }
}
