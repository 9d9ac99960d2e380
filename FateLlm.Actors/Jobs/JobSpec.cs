using Akka.Configuration;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;

namespace FateLlm.Actors.Jobs;

public sealed record PartySpec(string Org, string Dataset, string? EvalDataset);

/// <summary>Raised for a job file that cannot run; the message names the file and the field.</summary>
public sealed class JobSpecException(string message) : Exception(message);

/// <summary>A federated job as submitted (the HOCON job file), immutable and small enough to travel in control messages.</summary>
public sealed record JobSpec
{
    public required string JobId { get; init; }
    public required string ModelPath { get; init; }
    /// <summary>SHA-256 of the base model's weights, filled by the arbiter at submission; every party must match it.</summary>
    public string ModelDigest { get; init; } = "";
    public string PeftMethod { get; init; } = "lora";
    public int LoraR { get; init; } = 8;
    public double LoraAlpha { get; init; } = 16;
    public double LoraDropout { get; init; } = 0.05;
    public string[] LoraTargets { get; init; } = [];
    public int NumVirtualTokens { get; init; } = 16;
    public bool PrefixProjection { get; init; }
    public required PartySpec[] Parties { get; init; }
    public int Rounds { get; init; } = 3;
    public int LocalEpochs { get; init; } = 1;
    public int LocalSteps { get; init; }
    public int BatchSize { get; init; } = 8;
    public double LearningRate { get; init; } = 2e-3;
    public string Schedule { get; init; } = "constant";
    public double WarmupRatio { get; init; }
    public double FedProxMu { get; init; }
    public int Threads { get; init; } = 1;
    public string Aggregation { get; init; } = "fedavg";
    /// <summary>Server learning rate, optimizer betas/τ/momentum and the robust rules' parameters.</summary>
    public ServerOptimizerOptions Server { get; init; } = new();
    public int Quorum { get; init; } = 1;
    public double RoundDeadlineSeconds { get; init; } = 300;
    public int MaxRoundAttempts { get; init; } = 3;
    /// <summary>Columns, template and length caps every party applies to its data.</summary>
    public DataOptions Data { get; init; } = new() { MaxPromptTokens = 128, MaxResponseTokens = 128, MaxTotalTokens = 256 };
    public int EvalLimit { get; init; } = 32;
    public int EvalMaxNewTokens { get; init; } = 32;
    public string OutputDir { get; init; } = "";
    public long Seed { get; init; } = 42;

    public TimeSpan RoundDeadline => TimeSpan.FromSeconds(RoundDeadlineSeconds);

    public FederatedTask ToTask(string? localModelPath = null) => new()
    {
        ModelPath = localModelPath ?? ModelPath,
        ModelDigest = ModelDigest,
        Peft = new PeftConfig
        {
            Method = PeftConfig.ParseMethod(PeftMethod), LoraR = LoraR, LoraAlpha = LoraAlpha, LoraDropout = LoraDropout,
            LoraTargets = LoraTargets, NumVirtualTokens = NumVirtualTokens, PrefixProjection = PrefixProjection,
        },
        LocalEpochs = LocalEpochs, LocalSteps = LocalSteps > 0 ? LocalSteps : null, BatchSize = BatchSize, LearningRate = LearningRate,
        Schedule = TrainOptions.ParseSchedule(Schedule), WarmupRatio = WarmupRatio, ProximalMu = FedProxMu, Seed = Seed, Threads = Threads,
        Data = Data,
    };

    public IAggregationStrategy Strategy() => AggregationStrategies.Create(Aggregation, Server);

    public static JobSpec Load(string path)
    {
        if (!File.Exists(path)) throw new JobSpecException($"{path}: job file not found");
        Config root;
        try { root = ConfigurationFactory.ParseString(File.ReadAllText(path)); }
        catch (Exception e) { throw new JobSpecException($"{path}: not valid HOCON ({e.Message})"); }
        return FromConfig(root, path, Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    /// <summary>Reads the <c>job { }</c> block; relative paths are resolved against <paramref name="baseDir"/>.</summary>
    public static JobSpec FromConfig(Config root, string origin, string baseDir)
    {
        var c = root.GetConfig("job") ?? throw new JobSpecException($"{origin}: no 'job' block");
        string Field(string f) => $"{origin}: job.{f}";
        T Get<T>(string key, T fallback, Func<string, T> read)
        {
            if (!c.HasPath(key)) return fallback;
            try { return read(key); }
            catch (Exception e) when (e is not JobSpecException) { throw new JobSpecException($"{Field(key)}: {e.Message}"); }
        }
        string Resolve(string p) => Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(baseDir, p));
        var model = Get("model", "", k => c.GetString(k));
        if (string.IsNullOrWhiteSpace(model)) throw new JobSpecException($"{Field("model")} is required (the base model folder)");
        if (!c.HasPath("parties")) throw new JobSpecException($"{Field("parties")} is required");
        var parties = c.GetValue("parties").GetArray().Select((v, i) =>
        {
            var o = v.GetObject() ?? throw new JobSpecException($"{Field($"parties[{i}]")} must be an object {{ org, data, eval }}");
            string? S(string k) => o.Items.TryGetValue(k, out var x) ? x.GetString() : null;
            return new PartySpec(S("org") ?? throw new JobSpecException($"{Field($"parties[{i}].org")} is required"),
                S("data") ?? "train", S("eval"));
        }).ToArray();
        var jobId = Get("id", "", k => c.GetString(k));
        var spec = new JobSpec
        {
            JobId = string.IsNullOrWhiteSpace(jobId) ? $"job-{DateTime.UtcNow:yyyyMMdd-HHmmss}" : jobId,
            ModelPath = Resolve(model),
            PeftMethod = Get("peft.method", "lora", k => c.GetString(k)),
            LoraR = Get("peft.r", 8, k => c.GetInt(k)),
            LoraAlpha = Get("peft.alpha", 16.0, k => c.GetDouble(k)),
            LoraDropout = Get("peft.dropout", 0.05, k => c.GetDouble(k)),
            LoraTargets = Get("peft.targets", Array.Empty<string>(), k => c.GetStringList(k).ToArray()),
            NumVirtualTokens = Get("peft.num-virtual-tokens", 16, k => c.GetInt(k)),
            PrefixProjection = Get("peft.prefix-projection", false, k => c.GetBoolean(k)),
            Parties = parties,
            Rounds = Get("rounds", 3, k => c.GetInt(k)),
            LocalEpochs = Get("local.epochs", 1, k => c.GetInt(k)),
            LocalSteps = Get("local.steps", 0, k => c.GetInt(k)),
            BatchSize = Get("local.batch-size", 8, k => c.GetInt(k)),
            LearningRate = Get("local.learning-rate", 2e-3, k => c.GetDouble(k)),
            Schedule = Get("local.schedule", "constant", k => c.GetString(k)),
            WarmupRatio = Get("local.warmup-ratio", 0.0, k => c.GetDouble(k)),
            FedProxMu = Get("local.fedprox-mu", 0.0, k => c.GetDouble(k)),
            Threads = Get("local.threads", 1, k => c.GetInt(k)),
            Aggregation = Get("aggregation.algorithm", "fedavg", k => c.GetString(k)),
            Server = new ServerOptimizerOptions
            {
                LearningRate = Get("aggregation.server-learning-rate", 1.0, k => c.GetDouble(k)),
                Beta1 = Get("aggregation.beta1", 0.9, k => c.GetDouble(k)),
                Beta2 = Get("aggregation.beta2", 0.99, k => c.GetDouble(k)),
                Tau = Get("aggregation.tau", 1e-3, k => c.GetDouble(k)),
                Momentum = Get("aggregation.momentum", 0.9, k => c.GetDouble(k)),
                TrimFraction = Get("aggregation.trim-fraction", 0.2, k => c.GetDouble(k)),
                Byzantine = Get("aggregation.byzantine", 1, k => c.GetInt(k)),
                KrumSelect = Get("aggregation.krum-select", 3, k => c.GetInt(k)),
                NormBound = Get("aggregation.norm-bound", 1.0, k => c.GetDouble(k)),
            },
            Quorum = Get("quorum", parties.Length, k => c.GetInt(k)),
            RoundDeadlineSeconds = Get("round-deadline", TimeSpan.FromMinutes(5), k => c.GetTimeSpan(k)).TotalSeconds,
            MaxRoundAttempts = Get("max-round-attempts", 3, k => c.GetInt(k)),
            Data = new DataOptions
            {
                PromptColumn = Get("data.prompt-column", "content", k => c.GetString(k)),
                ResponseColumn = Get("data.response-column", "summary", k => c.GetString(k)),
                Template = Get("data.template", "{prompt}\n", k => c.GetString(k)),
                MaxPromptTokens = Get("data.max-prompt-tokens", 128, k => c.GetInt(k)),
                MaxResponseTokens = Get("data.max-response-tokens", 128, k => c.GetInt(k)),
                MaxTotalTokens = Get("data.max-tokens", 256, k => c.GetInt(k)),
            },
            EvalLimit = Get("evaluation.limit", 32, k => c.GetInt(k)),
            EvalMaxNewTokens = Get("evaluation.max-new-tokens", 32, k => c.GetInt(k)),
            OutputDir = Resolve(Get("output", "runs/" + (string.IsNullOrWhiteSpace(jobId) ? "job" : jobId), k => c.GetString(k))),
            Seed = Get("seed", 42L, k => c.GetLong(k)),
        };
        spec.Validate(origin);
        return spec;
    }

    public void Validate(string origin)
    {
        void Check(bool ok, string field, string message)
        {
            if (!ok) throw new JobSpecException($"{origin}: job.{field} {message}");
        }
        Check(Parties.Length > 0, "parties", "must name at least one party");
        var dup = Parties.GroupBy(p => p.Org).FirstOrDefault(g => g.Count() > 1);
        Check(dup is null, "parties", $"names organization '{dup?.Key}' twice");
        Check(Parties.All(p => System.Text.RegularExpressions.Regex.IsMatch(p.Org, "^[A-Za-z0-9_-]+$")), "parties", "org ids may use letters, digits, '-' and '_' only");
        Check(Rounds >= 1, "rounds", $"must be ≥ 1, got {Rounds}");
        Check(Quorum >= 1 && Quorum <= Parties.Length, "quorum", $"must be between 1 and {Parties.Length} parties, got {Quorum}");
        Check(MaxRoundAttempts >= 1, "max-round-attempts", "must be ≥ 1");
        Check(RoundDeadlineSeconds > 0, "round-deadline", "must be positive");
        Check(BatchSize >= 1 && LocalEpochs >= 1 && LocalSteps >= 0, "local", "needs batch-size ≥ 1, epochs ≥ 1, steps ≥ 0");
        Check(AggregationStrategies.Names.Contains(Aggregation.ToLowerInvariant()), "aggregation.algorithm", $"'{Aggregation}' is not one of {string.Join(", ", AggregationStrategies.Names)}");
        try { PeftConfig.ParseMethod(PeftMethod); } catch (ArgumentException e) { Check(false, "peft.method", e.Message); }
        try { TrainOptions.ParseSchedule(Schedule); } catch (ArgumentException e) { Check(false, "local.schedule", e.Message); }
        Check(Data.Template.Contains("{prompt}"), "data.template", "must contain {prompt}");
    }
}
