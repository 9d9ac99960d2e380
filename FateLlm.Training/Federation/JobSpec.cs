using System.Text.Json;
using System.Text.Json.Serialization;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Federation;

/// <summary>
/// A federated job as submitted: typed, immutable, small enough for control messages and the journal. Every section
/// is required; the defaults live in one place, the <c>fate-llm.job-defaults</c> block of the actors'
/// <c>reference.conf</c>, which the job-file loader falls back to.
/// </summary>
public sealed record JobSpec
{
    /// <summary>Bumped when a persisted field changes meaning; the journal's upcaster maps older versions.</summary>
    public const int SchemaVersion = 2;

    public required string JobId { get; init; }
    /// <summary>Base model folder as the job file names it (each node may resolve it under its models root).</summary>
    public required string ModelPath { get; init; }
    /// <summary>The content digest of the base model's weights (SHA-256 in jobs journaled before BLAKE3), filled by the arbiter at preparation when the algorithm needs one.</summary>
    public string ModelDigest { get; init; } = "";
    public required PartySpec[] Parties { get; init; }
    public required AlgorithmSpec Algorithm { get; init; }
    public required PeftConfig Peft { get; init; }
    public required LocalTraining Local { get; init; }
    public required AggregationSpec Aggregation { get; init; }
    public required int Rounds { get; init; }
    public required RoundPolicy Round { get; init; }
    public required DataOptions Data { get; init; }
    public required SecureAggregationOptions SecureAggregation { get; init; }
    public required DpOptions Dp { get; init; }
    public required UpdateLimits Validation { get; init; }
    public required EvaluationOptions Evaluation { get; init; }
    public required string OutputDir { get; init; }
    public required long Seed { get; init; }
    /// <summary>FedIPR watermarks; off in jobs written before it existed.</summary>
    public Ipr.IprOptions Ipr { get; init; } = FateLlm.Training.Ipr.IprOptions.Off;
    /// <summary>What the export writes besides the adapter; jobs written before it existed merged always.</summary>
    public ExportOptions Export { get; init; } = ExportOptions.Always;
    /// <summary>How summable updates travel; fp32 both ways in jobs written before it existed.</summary>
    public Compression.CompressionOptions Compression { get; init; } = FateLlm.Training.Compression.CompressionOptions.Off;
    /// <summary>Synchronous rounds or buffered asynchronous flushes; sync in jobs written before schedules existed.</summary>
    public ScheduleSpec Schedule { get; init; } = ScheduleSpec.Synchronous;

    /// <summary>The server rule; a buffered schedule's own η_g, when it sets one, replaces the aggregation's.</summary>
    public IAggregationStrategy Strategy() => AggregationStrategies.Create(Aggregation.Algorithm,
        Schedule is { Buffered: true, ServerLearningRate: { } eta } ? Aggregation.Server with { LearningRate = eta } : Aggregation.Server);

    /// <summary>How many parties a round asks: every party, or the sample <see cref="RoundPolicy.Sampling"/> draws.</summary>
    [JsonIgnore] public int CohortSize => Round.Sampling.SizeOf(Parties.Length);

    static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals, Converters = { new JsonStringEnumConverter() },
    };

    public byte[] ToJson() => JsonSerializer.SerializeToUtf8Bytes(this, Json);

    public static JobSpec FromJson(byte[] json, string origin)
    {
        try { return JsonSerializer.Deserialize<JobSpec>(json, Json) ?? throw new JobSpecException($"{origin}: empty job specification"); }
        catch (JsonException e) { throw new JobSpecException($"{origin}: not a job specification ({e.Message})"); }
    }

    public static JsonSerializerOptions JsonOptions => Json;
}

public sealed record PartySpec(string Org, string Dataset, string? EvalDataset)
{
    /// <summary>This party's own LoRA rank (<c>parties[i].peft</c>); null: the job's <c>peft.r</c>.</summary>
    public PartyPeft? Peft { get; init; }
}

/// <param name="Alpha">Null: the rank times the job's α/r (what the arbiter writes out when it prepares the job).</param>
public sealed record PartyPeft(int R, double? Alpha);

/// <summary>
/// <c>job.algorithm { name = ..., ... }</c>: the registered plug-in and its own block as flat dotted keys
/// (<c>distill.steps</c> → <c>"100"</c>; lists as JSON arrays), read through <see cref="AlgorithmSettings"/>.
/// </summary>
public sealed record AlgorithmSpec(string Name, IReadOnlyDictionary<string, string> Settings)
{
    public AlgorithmSettings Read() => new(Name, Settings);
}

public sealed record LocalTraining
{
    public required int Epochs { get; init; }
    /// <summary>&gt; 0: exactly this many optimizer steps per round instead of epochs.</summary>
    public required int Steps { get; init; }
    public required int BatchSize { get; init; }
    public required double LearningRate { get; init; }
    public required LrSchedule Schedule { get; init; }
    public required double WarmupRatio { get; init; }
    public required double FedProxMu { get; init; }
    /// <summary>Torch threads per party.</summary>
    public required int Threads { get; init; }
    /// <summary>Dev examples (the first ones) each round's dev loss is taken on; 0: all (what journals before it did).</summary>
    public int DevLimit { get; init; }
    /// <summary>&gt; 0: a party checkpoints its local round every this many steps and resumes from it after a crash.</summary>
    public int CheckpointEvery { get; init; }
    /// <summary>Example-level DP in every party's local training; off in jobs written before it existed.</summary>
    public Privacy.DpSgdOptions DpSgd { get; init; } = Privacy.DpSgdOptions.Off;
}

public sealed record AggregationSpec(string Algorithm, ServerOptimizerOptions Server)
{
    /// <summary>How parties of different LoRA ranks form the global adapter; zero-pad in jobs written before ranks could differ.</summary>
    public Peft.LoraRankRule LoraRanks { get; init; } = Peft.LoraRankRule.ZeroPad;
    /// <summary>HetLoRA's self-pruning threshold under zero-pad (0: off): see <see cref="Peft.LoraRanks.Pruned"/>.</summary>
    public double RankPruning { get; init; }
}

/// <summary>When a round may aggregate, how long it waits, how often it is retried, and whom it asks.</summary>
public sealed record RoundPolicy
{
    /// <summary>Minimum parties whose updates a round (each of its exchanges) needs.</summary>
    public required int Quorum { get; init; }
    /// <summary>
    /// How long one exchange of a round waits for its parties: round 1's deadline, and the outer bound of every later one
    /// when <see cref="DeadlineFactor"/> derives it.
    /// </summary>
    public required double DeadlineSeconds { get; init; }
    /// <summary>
    /// From round 2 on an exchange waits this many times round 1's measured wall time (its slowest party's load, steps and
    /// transfers), within [<see cref="DeadlineFloorSeconds"/>, <see cref="DeadlineSeconds"/>]; 0 (jobs written before it):
    /// always <see cref="DeadlineSeconds"/>.
    /// </summary>
    public double DeadlineFactor { get; init; }
    public double DeadlineFloorSeconds { get; init; }
    /// <summary>A party whose work shows no progress this long is dropped from the exchange; 0 (jobs written before it): never.</summary>
    public double InactivitySeconds { get; init; }
    public required int MaxAttempts { get; init; }
    public required PartySampling Sampling { get; init; }

    [JsonIgnore] public TimeSpan Deadline => TimeSpan.FromSeconds(DeadlineSeconds);

    /// <summary>The deadline of a round's exchanges, given round 1's wall seconds once it completed (null before).</summary>
    public TimeSpan DeadlineAfter(double? firstRoundSeconds) => DeadlineFactor > 0 && firstRoundSeconds is > 0 and var s
        ? TimeSpan.FromSeconds(Math.Min(DeadlineSeconds, Math.Max(DeadlineFloorSeconds, DeadlineFactor * s)))
        : Deadline;
    [JsonIgnore] public TimeSpan? Inactivity => InactivitySeconds > 0 ? TimeSpan.FromSeconds(InactivitySeconds) : null;
}

/// <summary>Parties asked per round: <see cref="Count"/> when &gt; 0, else ⌈fraction · parties⌉ (1.0: everyone).</summary>
public sealed record PartySampling(double Fraction, int Count)
{
    public int SizeOf(int parties) => parties == 0 ? 0 : Count > 0 ? Math.Min(Count, parties) : Math.Clamp((int)Math.Ceiling(Fraction * parties - 1e-9), 1, parties);
    public bool SamplesAll(int parties) => SizeOf(parties) == parties;
}

/// <summary>What an update must satisfy before it touches the aggregate.</summary>
public sealed record UpdateLimits
{
    /// <summary>Largest L2 norm of one party's delta.</summary>
    public required double MaxNorm { get; init; }
    /// <summary>Largest upload of one party, checked before it is pulled.</summary>
    public required long MaxBytes { get; init; }
}

/// <param name="Limit">Dev examples of the generation scores (0: all).</param>
public sealed record EvaluationOptions(int Limit, int MaxNewTokens)
{
    /// <summary>lm-eval-style tasks each party runs on its own data (names, tags or YAML files its node resolves); none before they existed.</summary>
    public IReadOnlyList<string> Tasks { get; init; } = [];
    /// <summary>Also run the tasks on the global state every this many rounds (0: only the final evaluation).</summary>
    public int Every { get; init; }
    /// <summary>Documents per task (0: all).</summary>
    public int TaskLimit { get; init; }
}

/// <summary>Raised for a job that cannot run; the message names the origin and the field.</summary>
public sealed class JobSpecException(string message) : Exception(message);

public enum MergedExport { Auto, On, Off }

/// <summary>
/// Whether a LoRA job's export also writes the adapter merged into the base (a plain HF checkpoint, streamed one shard
/// at a time): <see cref="MergedExport.Auto"/> does when the base's weights are at most <see cref="MergedAutoLimitBytes"/>.
/// </summary>
public sealed record ExportOptions(MergedExport Merged, long MergedAutoLimitBytes)
{
    public static readonly ExportOptions Always = new(MergedExport.On, 0);

    public bool WritesMerged(string modelFolder) => Merged switch
    {
        MergedExport.On => true,
        MergedExport.Off => false,
        _ => Models.HfCheckpoint.WeightFiles(modelFolder).Sum(f => new FileInfo(f).Length) <= MergedAutoLimitBytes,
    };

    public static MergedExport Parse(string s) => s.ToLowerInvariant() switch
    {
        "auto" => MergedExport.Auto,
        _ when Switch.TryParse(s, out var on) => on ? MergedExport.On : MergedExport.Off,
        _ => throw new ArgumentException($"'{s}' is not one of auto, on, off"),
    };
}

/// <summary>A party's local round: its delta, what it trained on, and where its seconds went (the whole round in <paramref name="Seconds"/>).</summary>
public sealed record LocalRoundResult(byte[] Delta, long Samples, int Steps, double FirstLoss, double LastLoss, double? EvalLoss, double Seconds)
{
    public double LoadSeconds { get; init; }
    public double EvalSeconds { get; init; }
    public double TrainSeconds { get; init; }
    /// <summary>The job's evaluation tasks on the global state, in the rounds <c>evaluation.every</c> names.</summary>
    public IReadOnlyList<TaskScore> Tasks { get; init; } = [];
    /// <summary>Under <c>local.dp-sgd</c>: the party's example-level ε after this round, and the mechanism behind it.</summary>
    public Privacy.DpSgdSpent? Privacy { get; init; }
}

public sealed record EvaluationResult(double Loss, double Perplexity, double? Rouge1, double? Rouge2, double? RougeL, double? Bleu4, int Samples)
{
    /// <summary>The job's evaluation tasks as this party scored them.</summary>
    public IReadOnlyList<TaskScore> Tasks { get; init; } = [];
}

/// <summary>One task's figures at one party over <paramref name="Documents"/>: each metric's value, and its standard error where it has one.</summary>
public sealed record TaskScore(string Task, int Documents, IReadOnlyDictionary<string, double> Metrics, IReadOnlyDictionary<string, double> StdErr)
{
    /// <summary>Each task's document-weighted mean of every metric over the parties that scored it (lm-eval's size-weighted group mean).</summary>
    public static IReadOnlyList<TaskScore> Aggregate(IEnumerable<TaskScore> scores) => scores.GroupBy(s => s.Task).Select(g =>
    {
        var n = g.Sum(s => s.Documents);
        var metrics = g.SelectMany(s => s.Metrics.Keys).Distinct().ToDictionary(m => m, m => g.Where(s => s.Metrics.ContainsKey(m)).Sum(s => s.Metrics[m] * s.Documents)
            / Math.Max(1, g.Where(s => s.Metrics.ContainsKey(m)).Sum(s => s.Documents)));
        // Pooled standard error of a weighted mean of independent parts: sqrt(Σ (n_i/N)² se_i²).
        var stderr = metrics.Keys.Where(m => g.All(s => s.StdErr.ContainsKey(m)))
            .ToDictionary(m => m, m => Math.Sqrt(g.Sum(s => Math.Pow(s.Documents / (double)n * s.StdErr[m], 2))));
        return new TaskScore(g.Key, n, metrics, stderr);
    }).ToList();

    const string Prefix = "task/";

    /// <summary>Task scores as an update's flat metrics (<c>task/NAME/METRIC</c>, <c>…/METRIC/stderr</c>, <c>task/NAME/documents</c>).</summary>
    public static Dictionary<string, double> ToMetrics(IEnumerable<TaskScore> scores)
    {
        var metrics = new Dictionary<string, double>();
        foreach (var s in scores)
        {
            metrics[$"{Prefix}{s.Task}/documents"] = s.Documents;
            foreach (var (m, v) in s.Metrics) metrics[$"{Prefix}{s.Task}/{m}"] = v;
            foreach (var (m, v) in s.StdErr) metrics[$"{Prefix}{s.Task}/{m}/stderr"] = v;
        }
        return metrics;
    }

    /// <summary>The task scores among an update's metrics (none when its round ran no tasks).</summary>
    public static List<TaskScore> FromMetrics(IReadOnlyDictionary<string, double> metrics) =>
        metrics.Keys.Where(k => k.StartsWith(Prefix, StringComparison.Ordinal) && k.EndsWith("/documents", StringComparison.Ordinal))
            .Select(k => k[Prefix.Length..^"/documents".Length]).Order(StringComparer.Ordinal).Select(task =>
            {
                var head = $"{Prefix}{task}/";
                var own = metrics.Where(kv => kv.Key.StartsWith(head, StringComparison.Ordinal)).ToDictionary(kv => kv.Key[head.Length..], kv => kv.Value);
                return new TaskScore(task, (int)own["documents"],
                    own.Where(kv => kv.Key != "documents" && !kv.Key.Contains('/')).ToDictionary(kv => kv.Key, kv => kv.Value),
                    own.Where(kv => kv.Key.EndsWith("/stderr", StringComparison.Ordinal)).ToDictionary(kv => kv.Key[..^"/stderr".Length], kv => kv.Value));
            }).ToList();
}
