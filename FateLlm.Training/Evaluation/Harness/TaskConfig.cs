using System.Text.Json.Nodes;

namespace FateLlm.Training.Evaluation.Harness;

/// <summary>lm-eval's request kinds (its <c>output_type</c>).</summary>
public enum OutputType { MultipleChoice, Loglikelihood, LoglikelihoodRolling, GenerateUntil }

/// <summary>A bad task description, named as lm-eval users find it: file, line and key.</summary>
public sealed class TaskConfigException(string message) : Exception(message);

/// <summary>
/// How a document field is produced (lm-eval's <c>doc_to_text</c>, <c>doc_to_target</c>, <c>doc_to_choice</c>): a
/// column name, a Jinja template, a literal number, or a list of templates.
/// </summary>
public abstract record DocField
{
    public sealed record Template(string Source) : DocField;
    public sealed record Number(long Value) : DocField;
    public sealed record Items(IReadOnlyList<string> Templates) : DocField;
}

/// <param name="Name">acc, acc_norm, perplexity, word_perplexity, byte_perplexity, bits_per_byte, exact_match, rougeL, bleu</param>
/// <param name="Options">exact_match's ignore_case, ignore_punctuation and regexes_to_ignore.</param>
public sealed record MetricSpec(string Name, string Aggregation, bool HigherIsBetter, IReadOnlyDictionary<string, JsonNode?> Options);

/// <summary>lm-eval's generation_kwargs: stop sequences, a token budget, greedy or sampled decoding.</summary>
public sealed record GenerationSpec(IReadOnlyList<string> Until, int MaxGenToks, bool DoSample, double Temperature, int TopK, double TopP);

/// <summary>
/// One evaluation task as lm-eval's YAML describes it (the subset FateLlm runs), after its <c>include</c>s are merged.
/// <see cref="Config"/> is the merged configuration as JSON, for the results' <c>configs</c> entry.
/// </summary>
public sealed record TaskConfig
{
    public required string Task { get; init; }
    public required string Source { get; init; }
    public required OutputType OutputType { get; init; }
    /// <summary>Split name → local JSON or JSONL files, read in order.</summary>
    public required IReadOnlyDictionary<string, IReadOnlyList<string>> DataFiles { get; init; }
    public string? TrainingSplit { get; init; }
    public string? ValidationSplit { get; init; }
    public string? TestSplit { get; init; }
    public string? FewshotSplit { get; init; }
    public DocField? DocToText { get; init; }
    public DocField? DocToTarget { get; init; }
    public DocField? DocToChoice { get; init; }
    public string Description { get; init; } = "";
    public string TargetDelimiter { get; init; } = " ";
    public string FewshotDelimiter { get; init; } = "\n\n";
    public int? NumFewshot { get; init; }
    public required IReadOnlyList<MetricSpec> Metrics { get; init; }
    public GenerationSpec? Generation { get; init; }
    public IReadOnlyList<string> Tags { get; init; } = [];
    public string? Alias { get; init; }
    public double Version { get; init; }
    public required JsonObject Config { get; init; }

    /// <summary>The split scored: test, else validation, else training (lm-eval's order).</summary>
    public string EvalSplit => TestSplit ?? ValidationSplit ?? TrainingSplit
        ?? throw new TaskConfigException($"{Source}: task '{Task}' names no test_split, validation_split or training_split");

    /// <summary>Where few-shot examples come from: fewshot_split, else training, else validation, else the scored split itself.</summary>
    public string ShotSplit => FewshotSplit ?? TrainingSplit ?? ValidationSplit ?? EvalSplit;
}
