using System.Text.Json;
using Akka.Configuration;
using Akka.Configuration.Hocon;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using FateLlm.Training.Trainer;

namespace FateLlm.Actors.Jobs;

/// <summary>
/// Reads a job file (HOCON <c>job { }</c>) into a typed <see cref="JobSpec"/>. Every key falls back to the
/// <c>fate-llm.job-defaults</c> block of reference.conf — the one place job defaults live — and an algorithm's own
/// block to <c>fate-llm.algorithms.&lt;name&gt;</c>. Relative paths are resolved against the file's folder.
/// </summary>
public static class JobFile
{
    const string DefaultsPath = "fate-llm.job-defaults", AlgorithmsPath = "fate-llm.algorithms";

    static readonly Lazy<Config> Reference = new(FederationNode.Reference);

    /// <summary>The job defaults of reference.conf (shared with the <c>train</c> command's defaults).</summary>
    public static Config Defaults => Reference.Value.GetConfig(DefaultsPath);

    public static JobSpec Load(string path)
    {
        if (!File.Exists(path)) throw new JobSpecException($"{path}: job file not found");
        Config root;
        try { root = ConfigurationFactory.ParseString(File.ReadAllText(path)); }
        catch (Exception e) { throw new JobSpecException($"{path}: not valid HOCON ({e.Message})"); }
        return FromConfig(root, path, Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    /// <summary>A job with every default, for code that builds jobs (experiments, benchmarks, specs).</summary>
    public static JobSpec Default(string jobId, string modelPath, PartySpec[] parties, string outputDir)
    {
        var c = ConfigurationFactory.ParseString($$"""
            job { id = {{Quote(jobId)}}, model = {{Quote(modelPath)}}, output = {{Quote(outputDir)}}, parties = [] }
            """);
        var spec = FromConfig(c, "defaults", Directory.GetCurrentDirectory(), validate: false) with { Parties = parties };
        return spec with { Round = spec.Round with { Quorum = spec.CohortSize } };
    }

    static string Quote(string s) => JsonSerializer.Serialize(s);

    /// <summary>Reads the <c>job { }</c> block; relative paths are resolved against <paramref name="baseDir"/>.</summary>
    public static JobSpec FromConfig(Config root, string origin, string baseDir, bool validate = true)
    {
        var job = root.GetConfig("job") ?? throw new JobSpecException($"{origin}: no 'job' block");
        if (job.HasPath("dp.population"))
            throw new JobSpecException($"{origin}: job.dp.population was removed: rounds sample parties for real with job.sampling (q = sampled ÷ parties)");
        var c = job.WithFallback(Defaults);
        string Field(string f) => $"{origin}: job.{f}";
        T Get<T>(string key, Func<string, T> read)
        {
            try { return read(key); }
            catch (Exception e) when (e is not JobSpecException) { throw new JobSpecException($"{Field(key)}: {e.Message}"); }
        }
        string Resolve(string p) => Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(baseDir, p));

        var model = job.HasPath("model") ? Get("model", k => c.GetString(k)) : "";
        if (string.IsNullOrWhiteSpace(model)) throw new JobSpecException($"{Field("model")} is required (the base model folder)");
        if (!job.HasPath("parties")) throw new JobSpecException($"{Field("parties")} is required");
        var parties = c.GetValue("parties").GetArray().Select((v, i) =>
        {
            var o = v.GetObject() ?? throw new JobSpecException($"{Field($"parties[{i}]")} must be an object {{ org, data, eval }}");
            string? S(string k) => o.Items.TryGetValue(k, out var x) ? x.GetString() : null;
            return new PartySpec(S("org") ?? throw new JobSpecException($"{Field($"parties[{i}].org")} is required"), S("data") ?? "train", S("eval"));
        }).ToArray();
        var jobId = job.HasPath("id") ? Get("id", k => c.GetString(k)) : "";
        jobId = string.IsNullOrWhiteSpace(jobId) ? $"job-{DateTime.UtcNow:yyyyMMdd-HHmmss}" : jobId;
        var sampling = new PartySampling(Get("sampling.fraction", k => c.GetDouble(k)), Get("sampling.count", k => c.GetInt(k)));
        var cohort = sampling.SizeOf(parties.Length);
        // `secure-aggregation = on` replaces the defaults' block in the merge; its other settings then come from the defaults.
        var saBlock = c.GetValue("secure-aggregation").IsObject() ? c : Defaults;
        var spec = new JobSpec
        {
            JobId = jobId,
            ModelPath = Resolve(model),
            Parties = parties,
            Algorithm = ReadAlgorithm(c, Field),
            Peft = new PeftConfig
            {
                Method = Get("peft.method", k => PeftConfig.ParseMethod(c.GetString(k))),
                LoraR = Get("peft.r", k => c.GetInt(k)),
                LoraAlpha = Get("peft.alpha", k => c.GetDouble(k)),
                LoraDropout = Get("peft.dropout", k => c.GetDouble(k)),
                LoraTargets = Get("peft.targets", k => c.GetStringList(k).ToArray()),
                NumVirtualTokens = Get("peft.num-virtual-tokens", k => c.GetInt(k)),
                PrefixProjection = Get("peft.prefix-projection", k => c.GetBoolean(k)),
            },
            Rounds = Get("rounds", k => c.GetInt(k)),
            Local = new LocalTraining
            {
                Epochs = Get("local.epochs", k => c.GetInt(k)),
                Steps = Get("local.steps", k => c.GetInt(k)),
                BatchSize = Get("local.batch-size", k => c.GetInt(k)),
                LearningRate = Get("local.learning-rate", k => c.GetDouble(k)),
                Schedule = Get("local.schedule", k => TrainOptions.ParseSchedule(c.GetString(k))),
                WarmupRatio = Get("local.warmup-ratio", k => c.GetDouble(k)),
                FedProxMu = Get("local.fedprox-mu", k => c.GetDouble(k)),
                Threads = Get("local.threads", k => c.GetInt(k)),
            },
            Aggregation = new AggregationSpec(Get("aggregation.algorithm", k => c.GetString(k)), new ServerOptimizerOptions
            {
                LearningRate = Get("aggregation.server-learning-rate", k => c.GetDouble(k)),
                Beta1 = Get("aggregation.beta1", k => c.GetDouble(k)),
                Beta2 = Get("aggregation.beta2", k => c.GetDouble(k)),
                Tau = Get("aggregation.tau", k => c.GetDouble(k)),
                Momentum = Get("aggregation.momentum", k => c.GetDouble(k)),
                TrimFraction = Get("aggregation.trim-fraction", k => c.GetDouble(k)),
                Byzantine = Get("aggregation.byzantine", k => c.GetInt(k)),
                KrumSelect = Get("aggregation.krum-select", k => c.GetInt(k)),
                NormBound = Get("aggregation.norm-bound", k => c.GetDouble(k)),
            }),
            Round = new RoundPolicy
            {
                // `quorum = all`: every party a round asks.
                Quorum = Get("quorum", k => c.GetString(k) == "all" ? cohort : c.GetInt(k)),
                DeadlineSeconds = Get("round-deadline", k => c.GetTimeSpan(k)).TotalSeconds,
                MaxAttempts = Get("max-round-attempts", k => c.GetInt(k)),
                Sampling = sampling,
            },
            Data = new DataOptions
            {
                PromptColumn = Get("data.prompt-column", k => c.GetString(k)),
                ResponseColumn = Get("data.response-column", k => c.GetString(k)),
                Template = Get("data.template", k => ExactString(c, k)),
                MaxPromptTokens = Get("data.max-prompt-tokens", k => c.GetInt(k)),
                MaxResponseTokens = Get("data.max-response-tokens", k => c.GetInt(k)),
                MaxTotalTokens = Get("data.max-tokens", k => c.GetInt(k)),
            },
            // `secure-aggregation = on`, or a block `secure-aggregation { enabled = on, threshold = 3, … }`.
            SecureAggregation = new SecureAggregationOptions
            {
                Enabled = Get("secure-aggregation", k => c.GetValue(k).IsObject() ? c.GetBoolean(k + ".enabled") : c.GetBoolean(k)),
                Threshold = Get("secure-aggregation.threshold", k => saBlock.GetInt(k)),
                Degree = Get("secure-aggregation.degree", k => saBlock.GetInt(k)),
                ClipRange = Get("secure-aggregation.clip-range", k => saBlock.GetDouble(k)),
                SampleCap = Get("secure-aggregation.sample-cap", k => saBlock.GetLong(k)),
                PhaseTimeoutSeconds = Get("secure-aggregation.phase-timeout", k => saBlock.GetTimeSpan(k)).TotalSeconds,
            },
            Dp = new DpOptions
            {
                Mode = Get("dp.mode", k => ParseDpMode(c.GetString(k))),
                ClipNorm = Get("dp.clip-norm", k => c.GetDouble(k)),
                NoiseMultiplier = Get("dp.noise-multiplier", k => c.GetDouble(k)),
                Delta = Get("dp.delta", k => c.GetDouble(k)),
                EpsilonBudget = c.HasPath("dp.epsilon-budget") ? Get("dp.epsilon-budget", k => c.GetDouble(k)) : null,
                AdaptiveClip = Get("dp.adaptive-clip", k => c.GetBoolean(k)),
                TargetQuantile = Get("dp.target-quantile", k => c.GetDouble(k)),
                ClipLearningRate = Get("dp.clip-learning-rate", k => c.GetDouble(k)),
                ClipCountNoise = Get("dp.clip-count-noise", k => c.GetDouble(k)),
            },
            Validation = new UpdateLimits
            {
                MaxNorm = Get("validation.max-update-norm", k => c.GetDouble(k)),
                MaxBytes = Get("validation.max-update-bytes", k => c.GetByteSize(k) ?? throw new JobSpecException($"{Field(k)}: not a size")),
            },
            Evaluation = new EvaluationOptions(Get("evaluation.limit", k => c.GetInt(k)), Get("evaluation.max-new-tokens", k => c.GetInt(k))),
            OutputDir = Resolve(job.HasPath("output") ? Get("output", k => c.GetString(k)) : "runs/" + jobId),
            Seed = Get("seed", k => c.GetLong(k)),
        };
        if (validate) JobSpecValidation.Validate(spec, origin);
        return spec;
    }

    /// <summary><c>algorithm = name</c> or <c>algorithm { name = ..., its block }</c>, over the plug-in's reference defaults.</summary>
    static AlgorithmSpec ReadAlgorithm(Config c, Func<string, string> field)
    {
        var value = c.GetValue("algorithm");
        Config block = value.IsObject() ? c.GetConfig("algorithm") : ConfigurationFactory.ParseString($"name = {Quote(value.GetString())}");
        var name = block.GetString("name");
        if (string.IsNullOrWhiteSpace(name)) throw new JobSpecException($"{field("algorithm.name")} is required (known: {string.Join(", ", AlgorithmCatalog.Names)})");
        var defaults = Reference.Value.HasPath($"{AlgorithmsPath}.{name}") ? Reference.Value.GetConfig($"{AlgorithmsPath}.{name}") : Config.Empty;
        var settings = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Flatten(block.WithFallback(defaults).Root, "", settings);
        settings.Remove("name");
        return new AlgorithmSpec(name, settings);
    }

    static void Flatten(HoconValue v, string prefix, IDictionary<string, string> into)
    {
        if (v.IsObject())
            foreach (var (key, child) in v.GetObject().Items) Flatten(child, prefix.Length == 0 ? key : $"{prefix}.{key}", into);
        else if (v.IsArray()) into[prefix] = JsonSerializer.Serialize(v.GetArray().Select(x => x.GetString()).ToArray());
        else into[prefix] = v.GetString();
    }

    /// <summary>
    /// A string value exactly as written. Akka's <c>GetString</c> trims every value, which turns the template
    /// <c>"{prompt}\n"</c> into <c>"{prompt}"</c> and silently changes the prompt format; a quoted value is one literal,
    /// while an unquoted one also carries the whitespace tokens around it, which are dropped here.
    /// </summary>
    public static string ExactString(Config c, string key)
    {
        var parts = c.GetValue(key).Values.Select(e => e.GetString()).ToList();
        if (parts.Count > 1)
        {
            while (parts.Count > 0 && string.IsNullOrWhiteSpace(parts[0])) parts.RemoveAt(0);
            while (parts.Count > 0 && string.IsNullOrWhiteSpace(parts[^1])) parts.RemoveAt(parts.Count - 1);
        }
        return string.Concat(parts);
    }

    static DpMode ParseDpMode(string s) => s.ToLowerInvariant() switch
    {
        "off" or "none" or "false" => DpMode.Off,
        "central" => DpMode.Central,
        "distributed" => DpMode.Distributed,
        _ => throw new ArgumentException($"'{s}' is not one of off, central, distributed"),
    };
}
