using Akka.Configuration;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Trainer;

namespace FateLlm.Actors.Jobs;

public sealed record PartySpec(string Org, string Dataset, string? EvalDataset);

/// <summary>SecAgg+ settings of a job; threshold and degree 0 mean "derive from the party count".</summary>
public sealed record SecureAggregationOptions
{
    public bool Enabled { get; init; }
    public int Threshold { get; init; }
    public int Degree { get; init; }
    /// <summary>Each coordinate of a (weighted) update is clipped to [−r, r] before quantization.</summary>
    public double ClipRange { get; init; } = 0.5;
    /// <summary>Without DP a party weighs its update by min(samples, cap) / cap, so weights stay in [0, 1].</summary>
    public long SampleCap { get; init; } = 10_000;
    public double PhaseTimeoutSeconds { get; init; } = 60;

    public int ThresholdFor(int parties) => Threshold > 0 ? Threshold : Math.Max(2, (Math.Min(DegreeFor(parties), parties - 1) + 1) / 2 + 1);
    public int DegreeFor(int parties) => Degree > 0 ? Math.Min(Degree, parties - 1) : Training.Privacy.SecureAggregation.SecAggSession.DefaultDegree(parties, 2);
}

/// <summary>What an update must satisfy before it touches the aggregate.</summary>
public sealed record UpdateLimits
{
    /// <summary>Largest L2 norm of one party's delta.</summary>
    public double MaxNorm { get; init; } = 1e4;
    /// <summary>Largest upload (safetensors bytes) of one party's delta.</summary>
    public long MaxBytes { get; init; } = 1L << 30;
}

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
    public SecureAggregationOptions SecureAggregation { get; init; } = new();
    public DpOptions Dp { get; init; } = new();
    public UpdateLimits Limits { get; init; } = new();
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
            // `secure-aggregation = on`, or a block `secure-aggregation { enabled = on, threshold = 3, … }`.
            SecureAggregation = !c.HasPath("secure-aggregation") ? new SecureAggregationOptions()
                : !c.GetValue("secure-aggregation").IsObject() ? new SecureAggregationOptions { Enabled = Get("secure-aggregation", false, k => c.GetBoolean(k)) }
                : new SecureAggregationOptions
                {
                    Enabled = Get("secure-aggregation.enabled", true, k => c.GetBoolean(k)),
                    Threshold = Get("secure-aggregation.threshold", 0, k => c.GetInt(k)),
                    Degree = Get("secure-aggregation.degree", 0, k => c.GetInt(k)),
                    ClipRange = Get("secure-aggregation.clip-range", 0.5, k => c.GetDouble(k)),
                    SampleCap = Get("secure-aggregation.sample-cap", 10_000L, k => c.GetLong(k)),
                    PhaseTimeoutSeconds = Get("secure-aggregation.phase-timeout", TimeSpan.FromSeconds(60), k => c.GetTimeSpan(k)).TotalSeconds,
                },
            Dp = new DpOptions
            {
                Mode = Get("dp.mode", DpMode.Off, k => ParseDpMode(c.GetString(k))),
                ClipNorm = Get("dp.clip-norm", 1.0, k => c.GetDouble(k)),
                NoiseMultiplier = Get("dp.noise-multiplier", 1.0, k => c.GetDouble(k)),
                Delta = Get("dp.delta", 1e-5, k => c.GetDouble(k)),
                EpsilonBudget = Get<double?>("dp.epsilon-budget", null, k => c.GetDouble(k)),
                Population = Get<int?>("dp.population", null, k => c.GetInt(k)),
                AdaptiveClip = Get("dp.adaptive-clip", false, k => c.GetBoolean(k)),
                TargetQuantile = Get("dp.target-quantile", 0.5, k => c.GetDouble(k)),
                ClipLearningRate = Get("dp.clip-learning-rate", 0.2, k => c.GetDouble(k)),
                ClipCountNoise = Get("dp.clip-count-noise", 0.05, k => c.GetDouble(k)),
            },
            Limits = new UpdateLimits
            {
                MaxNorm = Get("validation.max-update-norm", 1e4, k => c.GetDouble(k)),
                MaxBytes = Get("validation.max-update-bytes", 1L << 30, k => c.GetByteSize(k) ?? throw new JobSpecException($"{Field(k)}: not a size")),
            },
            EvalLimit = Get("evaluation.limit", 32, k => c.GetInt(k)),
            EvalMaxNewTokens = Get("evaluation.max-new-tokens", 32, k => c.GetInt(k)),
            OutputDir = Resolve(Get("output", "runs/" + (string.IsNullOrWhiteSpace(jobId) ? "job" : jobId), k => c.GetString(k))),
            Seed = Get("seed", 42L, k => c.GetLong(k)),
        };
        spec.Validate(origin);
        return spec;
    }

    static DpMode ParseDpMode(string s) => s.ToLowerInvariant() switch
    {
        "off" or "none" or "false" => DpMode.Off,
        "central" => DpMode.Central,
        "distributed" => DpMode.Distributed,
        _ => throw new ArgumentException($"'{s}' is not one of off, central, distributed"),
    };

    static readonly string[] RobustRules = ["median", "trimmed-mean", "krum", "multi-krum", "norm-bound"];

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
        Check(Limits.MaxNorm > 0, "validation.max-update-norm", "must be > 0");
        Check(Limits.MaxBytes > 0, "validation.max-update-bytes", "must be > 0");
        try { Dp.Validate(); } catch (ArgumentException e) { Check(false, "dp", e.Message); }
        Check(Dp.Population is null || Dp.Population >= Parties.Length, "dp.population", $"must be at least the {Parties.Length} parties of the job");
        var robust = RobustRules.Contains(Aggregation.ToLowerInvariant());
        Check(!(Dp.Enabled && robust), "aggregation.algorithm", $"'{Aggregation}' needs individual updates; it cannot be combined with DP (use fedavg, fedavgm, fedadam, fedadagrad or fedyogi)");
        Check(!(Dp.Mode == DpMode.Distributed && !SecureAggregation.Enabled), "dp.mode", "'distributed' adds noise at the parties and needs secure-aggregation = on");
        if (SecureAggregation.Enabled)
        {
            var sa = SecureAggregation;
            Check(Parties.Length >= 3, "secure-aggregation", $"needs at least 3 parties (the job has {Parties.Length}): with 2 the sum reveals the other's update");
            Check(!robust, "aggregation.algorithm", $"'{Aggregation}' needs individual updates; secure aggregation only reveals their sum");
            Check(Dp.Mode != DpMode.Central, "dp.mode", "'central' needs the arbiter to see individual updates; with secure aggregation use 'distributed'");
            var k = sa.DegreeFor(Parties.Length);
            var t = sa.ThresholdFor(Parties.Length);
            Check(t >= 2 && t <= k + 1, "secure-aggregation.threshold", $"{t} must be between 2 and {k + 1} (neighbours + self)");
            Check(Quorum >= t, "quorum", $"{Quorum} must be at least the secure-aggregation threshold {t}");
            Check(sa.ClipRange > 0, "secure-aggregation.clip-range", "must be > 0");
            Check(sa.SampleCap > 0, "secure-aggregation.sample-cap", "must be > 0");
            Check(sa.PhaseTimeoutSeconds > 0, "secure-aggregation.phase-timeout", "must be positive");
        }
    }
}
