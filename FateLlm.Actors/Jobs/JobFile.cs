using System.Text.Json;
using Akka.Configuration;
using Akka.Configuration.Hocon;
using FateLlm.Actors.Configuration;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Ipr;
using FateLlm.Training.Compression;
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

    /// <param name="algorithms">The plug-ins the job is checked against (the product's own unless given).</param>
    public static JobSpec Load(string path, AlgorithmCatalog? algorithms = null)
    {
        if (!File.Exists(path)) throw new JobSpecException($"{path}: job file not found");
        return Parse(File.ReadAllText(path), path, Path.GetDirectoryName(Path.GetFullPath(path))!, algorithms);
    }

    /// <summary>A job file's text: its syntax checked strictly (file, line, column), then read against the defaults.</summary>
    public static JobSpec Parse(string text, string origin, string baseDir, AlgorithmCatalog? algorithms = null)
    {
        try { HoconSyntax.Check(text, origin); }
        catch (HoconSyntaxException e) { throw new JobSpecException(e.Message); }
        Config root;
        try { root = ConfigurationFactory.ParseString(text); }
        catch (Exception e) { throw new JobSpecException($"{origin}: not valid HOCON ({e.Message})"); }
        return FromConfig(root, origin, baseDir, algorithms: algorithms ?? AlgorithmCatalog.BuiltIn);
    }

    /// <summary>A job with every default, for code that builds jobs (experiments, benchmarks, specs).</summary>
    public static JobSpec Default(string jobId, string modelPath, PartySpec[] parties, string outputDir)
    {
        var c = ConfigurationFactory.ParseString($$"""
            job { id = {{Quote(jobId)}}, model = {{Quote(modelPath)}}, output = {{Quote(outputDir)}}, parties = [{ org = placeholder }] }
            """);
        var spec = FromConfig(c, "defaults", Directory.GetCurrentDirectory(), algorithms: null) with { Parties = parties };
        return spec with { Round = spec.Round with { Quorum = spec.CohortSize } };
    }

    static string Quote(string s) => JsonSerializer.Serialize(s);

    /// <summary>Every setting a job file may carry (leaf paths), besides the algorithm's own block and the party list.</summary>
    static readonly Lazy<string[]> Known = new(() =>
        LeafPaths(Defaults.Root, "").Concat(["id", "model", "output", "parties", "secure-aggregation", "dp.epsilon-budget"]).Distinct().Order(StringComparer.Ordinal).ToArray());

    static readonly string[] PartyKeys = ["org", "data", "eval", "peft"];

    /// <summary>A list, the empty one included (Akka's IsArray says false for <c>[]</c>).</summary>
    static bool IsList(HoconValue v) =>
        v.IsArray() || (v.Values.Any(x => x is HoconArray) && v.Values.All(x => x is HoconArray || string.IsNullOrWhiteSpace(x.GetString())));

    static IEnumerable<string> LeafPaths(HoconValue v, string prefix) =>
        v.IsObject()
            ? v.GetObject().Items.SelectMany(kv => LeafPaths(kv.Value, prefix.Length == 0 ? kv.Key : $"{prefix}.{kv.Key}"))
            : [prefix];

    /// <summary>Refuses a key the job does not know, naming the nearest one it does (the algorithm's block is its plug-in's to check).</summary>
    static void RefuseUnknown(Config job, string origin)
    {
        foreach (var path in LeafPaths(job.Root, ""))
        {
            if (path == "algorithm" || path.StartsWith("algorithm.") || Known.Value.Contains(path)) continue;
            if (path.StartsWith("secure-aggregation") && job.HasPath("secure-aggregation") && !job.GetValue("secure-aggregation").IsObject()) continue;
            throw new JobSpecException($"{origin}: job.{path} is not a job setting (did you mean 'job.{Spelling.Nearest(path, Known.Value)}'?)");
        }
    }

    /// <summary>Typed reads of the merged job block; a value of the wrong type names the key and what was expected.</summary>
    sealed class Reader(Config c, string origin)
    {
        public string Field(string key) => $"{origin}: job.{key}";

        string Raw(string key)
        {
            var v = c.GetValue(key) ?? throw new JobSpecException($"{Field(key)} is required");
            if (v.IsObject()) throw new JobSpecException($"{Field(key)} must be a value, not a block {{ }}");
            if (v.IsArray()) throw new JobSpecException($"{Field(key)} must be a value, not a list [ ]");
            return v.GetString();
        }

        JobSpecException Wrong(string key, string type) => new($"{Field(key)} = '{Raw(key)}' is not {type}");

        public string String(string key) => Raw(key);
        /// <summary>A string exactly as written (see <see cref="ExactString"/>).</summary>
        public string Exact(string key)
        {
            Raw(key);
            return ExactString(c, key);
        }
        public int Int(string key) => int.TryParse(Raw(key), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : throw Wrong(key, "an integer");
        public long Long(string key) => long.TryParse(Raw(key), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : throw Wrong(key, "an integer");
        public double Double(string key) => double.TryParse(Raw(key), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : throw Wrong(key, "a number");
        public bool Bool(string key) => Switch.TryParse(Raw(key), out var v) ? v : throw Wrong(key, $"on or off ({Switch.Accepted})");
        public TimeSpan Duration(string key)
        {
            Raw(key);
            try { return c.GetTimeSpan(key); }
            catch (Exception) { throw Wrong(key, "a duration such as 90s, 5m or 1h"); }
        }
        public long Size(string key)
        {
            Raw(key);
            try { return c.GetByteSize(key) ?? throw Wrong(key, "a size such as 512KiB or 1GiB"); }
            catch (Exception e) when (e is not JobSpecException) { throw Wrong(key, "a size such as 512KiB or 1GiB"); }
        }
        public string[] Strings(string key)
        {
            var v = c.GetValue(key);
            if (v is null || !IsList(v)) throw new JobSpecException($"{Field(key)} must be a list such as [q_proj, v_proj]");
            return v.GetArray().Select(x => x.GetString()).ToArray();
        }
        public T Parsed<T>(string key, Func<string, T> parse)
        {
            try { return parse(Raw(key)); }
            catch (ArgumentException e) { throw new JobSpecException($"{Field(key)}: {e.Message}"); }
        }
    }

    /// <summary>Reads the <c>job { }</c> block; relative paths are resolved against <paramref name="baseDir"/>.</summary>
    /// <param name="algorithms">What the job is validated against; null: not validated (a template built in code).</param>
    public static JobSpec FromConfig(Config root, string origin, string baseDir, AlgorithmCatalog? algorithms)
    {
        var job = root.GetConfig("job") ?? throw new JobSpecException($"{origin}: no 'job' block");
        if (job.HasPath("dp.population"))
            throw new JobSpecException($"{origin}: job.dp.population was removed: rounds sample parties for real with job.sampling (q = sampled ÷ parties)");
        RefuseUnknown(job, origin);
        var c = job.WithFallback(Defaults);
        var r = new Reader(c, origin);
        string Resolve(string p) => Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(baseDir, p));

        var model = job.HasPath("model") ? r.String("model") : "";
        if (string.IsNullOrWhiteSpace(model)) throw new JobSpecException($"{r.Field("model")} is required (the base model folder)");
        if (!job.HasPath("parties")) throw new JobSpecException($"{r.Field("parties")} is required");
        if (!IsList(c.GetValue("parties"))) throw new JobSpecException($"{r.Field("parties")} must be a list [ {{ org = ..., data = ..., eval = ... }} ]");
        var parties = c.GetValue("parties").GetArray().Select((v, i) =>
        {
            var o = v.IsObject() ? v.GetObject() : throw new JobSpecException($"{r.Field($"parties[{i}]")} must be an object {{ org, data, eval }}");
            foreach (var key in o.Items.Keys.Where(k => !PartyKeys.Contains(k)))
                throw new JobSpecException($"{r.Field($"parties[{i}].{key}")} is not a party setting (did you mean '{Spelling.Nearest(key, PartyKeys)}'?)");
            string? S(string k) => o.Items.TryGetValue(k, out var x) ? x.GetString() : null;
            return new PartySpec(S("org") ?? throw new JobSpecException($"{r.Field($"parties[{i}].org")} is required"), S("data") ?? "train", S("eval"))
            {
                Peft = o.Items.TryGetValue("peft", out var peft) ? PartyPeftOf(peft, $"parties[{i}].peft", r.Field) : null,
            };
        }).ToArray();
        var jobId = job.HasPath("id") ? r.String("id") : "";
        jobId = string.IsNullOrWhiteSpace(jobId) ? $"job-{DateTime.UtcNow:yyyyMMdd-HHmmss}" : jobId;
        var sampling = new PartySampling(r.Double("sampling.fraction"), r.Int("sampling.count"));
        var cohort = sampling.SizeOf(parties.Length);
        // `secure-aggregation = on` replaces the defaults' block in the merge; its other settings then come from the defaults.
        var shorthand = !c.GetValue("secure-aggregation").IsObject();
        var sa = shorthand ? new Reader(Defaults, origin) : r;
        if (r.String("local.dp-sgd.sampling") is var dpSampling && dpSampling != "poisson")
            throw new JobSpecException($"{r.Field("local.dp-sgd.sampling")} = '{dpSampling}': only poisson sampling is accounted for (the RDP accountant's sampled Gaussian mechanism)");
        var spec = new JobSpec
        {
            JobId = jobId,
            ModelPath = Resolve(model),
            Parties = parties,
            Algorithm = ReadAlgorithm(c, r.Field),
            Peft = new PeftConfig
            {
                Method = r.Parsed("peft.method", PeftConfig.ParseMethod),
                LoraR = r.Int("peft.r"),
                LoraAlpha = r.Double("peft.alpha"),
                LoraDropout = r.Double("peft.dropout"),
                LoraTargets = r.Strings("peft.targets"),
                NumVirtualTokens = r.Int("peft.num-virtual-tokens"),
                PrefixProjection = r.Bool("peft.prefix-projection"),
                BaseDtype = r.Parsed("peft.base-dtype", PeftConfig.ParseDtype),
            },
            Rounds = r.Int("rounds"),
            Local = new LocalTraining
            {
                Epochs = r.Int("local.epochs"),
                Steps = r.Int("local.steps"),
                BatchSize = r.Int("local.batch-size"),
                LearningRate = r.Double("local.learning-rate"),
                Schedule = r.Parsed("local.schedule", TrainOptions.ParseSchedule),
                WarmupRatio = r.Double("local.warmup-ratio"),
                FedProxMu = r.Double("local.fedprox-mu"),
                Threads = r.Int("local.threads"),
                DevLimit = r.Int("local.dev-limit"),
                CheckpointEvery = r.Int("local.checkpoint-every"),
                DpSgd = new DpSgdOptions
                {
                    Enabled = r.Bool("local.dp-sgd.enabled"),
                    NoiseMultiplier = r.Double("local.dp-sgd.noise-multiplier"),
                    TargetEpsilon = r.String("local.dp-sgd.target-epsilon") is "none" or "off" ? null : r.Double("local.dp-sgd.target-epsilon"),
                    ClipNorm = r.Double("local.dp-sgd.clip-norm"),
                    Delta = r.Double("local.dp-sgd.delta"),
                    Microbatch = r.Int("local.dp-sgd.microbatch"),
                },
            },
            Aggregation = new AggregationSpec(r.String("aggregation.algorithm"), new ServerOptimizerOptions
            {
                LearningRate = r.Double("aggregation.server-learning-rate"),
                Beta1 = r.Double("aggregation.beta1"),
                Beta2 = r.Double("aggregation.beta2"),
                Tau = r.Double("aggregation.tau"),
                Momentum = r.Double("aggregation.momentum"),
                TrimFraction = r.Double("aggregation.trim-fraction"),
                Byzantine = r.Int("aggregation.byzantine"),
                KrumSelect = r.Int("aggregation.krum-select"),
                NormBound = r.Double("aggregation.norm-bound"),
            })
            {
                LoraRanks = r.Parsed("aggregation.lora-ranks", ParseRankRule),
                RankPruning = r.Double("aggregation.rank-pruning"),
            },
            Round = new RoundPolicy
            {
                // `quorum = all`: every party a round asks.
                Quorum = r.String("quorum") == "all" ? cohort : r.Int("quorum"),
                DeadlineSeconds = r.Duration("round-deadline").TotalSeconds,
                DeadlineFactor = r.Double("round-deadline-factor"),
                DeadlineFloorSeconds = r.Duration("round-deadline-floor").TotalSeconds,
                InactivitySeconds = r.Duration("round-inactivity").TotalSeconds,
                MaxAttempts = r.Int("max-round-attempts"),
                Sampling = sampling,
            },
            Data = new DataOptions
            {
                PromptColumn = r.String("data.prompt-column"),
                ResponseColumn = r.String("data.response-column"),
                Template = r.Exact("data.template"),
                MaxPromptTokens = r.Int("data.max-prompt-tokens"),
                MaxResponseTokens = r.Int("data.max-response-tokens"),
                MaxTotalTokens = r.Int("data.max-tokens"),
            },
            SecureAggregation = new SecureAggregationOptions
            {
                Enabled = shorthand ? r.Bool("secure-aggregation") : r.Bool("secure-aggregation.enabled"),
                Threshold = sa.Int("secure-aggregation.threshold"),
                Degree = sa.Int("secure-aggregation.degree"),
                ClipRange = sa.Double("secure-aggregation.clip-range"),
                SampleCap = sa.Long("secure-aggregation.sample-cap"),
                PhaseTimeoutSeconds = sa.Duration("secure-aggregation.phase-timeout").TotalSeconds,
            },
            Dp = new DpOptions
            {
                Mode = r.Parsed("dp.mode", ParseDpMode),
                ClipNorm = r.Double("dp.clip-norm"),
                NoiseMultiplier = r.Double("dp.noise-multiplier"),
                Delta = r.Double("dp.delta"),
                EpsilonBudget = c.HasPath("dp.epsilon-budget") ? r.Double("dp.epsilon-budget") : null,
                AdaptiveClip = r.Bool("dp.adaptive-clip"),
                TargetQuantile = r.Double("dp.target-quantile"),
                ClipLearningRate = r.Double("dp.clip-learning-rate"),
                ClipCountNoise = r.Double("dp.clip-count-noise"),
            },
            Validation = new UpdateLimits { MaxNorm = r.Double("validation.max-update-norm"), MaxBytes = r.Size("validation.max-update-bytes") },
            Evaluation = new EvaluationOptions(r.Int("evaluation.limit"), r.Int("evaluation.max-new-tokens"))
            {
                Tasks = r.Strings("evaluation.tasks"), Every = r.Int("evaluation.every"), TaskLimit = r.Int("evaluation.task-limit"),
            },
            OutputDir = Resolve(job.HasPath("output") ? r.String("output") : "runs/" + jobId),
            Seed = r.Long("seed"),
            Export = new ExportOptions(r.Parsed("export.merged", ExportOptions.Parse), r.Size("export.merged-auto-limit")),
            Compression = new CompressionOptions
            {
                Up = r.Parsed("compression.up", CompressionOptions.Parse),
                Down = r.Parsed("compression.down", CompressionOptions.Parse),
                BlockSize = r.Int("compression.block-size"),
                TopKFraction = r.Double("compression.topk-fraction"),
                ErrorFeedback = r.Bool("compression.error-feedback"),
            },
            Schedule = new ScheduleSpec
            {
                Mode = r.Parsed("schedule", ScheduleSpec.ParseMode),
                Buffer = r.Int("buffered.buffer"),
                MaxStaleness = r.Int("buffered.max-staleness"),
                Weighting = r.Parsed("buffered.staleness-weight", ScheduleSpec.ParseWeighting),
                Exponent = r.Double("buffered.a"),
                Concurrency = r.Int("buffered.concurrency"),
                ServerLearningRate = r.String("buffered.server-learning-rate") == "inherit" ? null : r.Double("buffered.server-learning-rate"),
            },
            Ipr = new IprOptions
            {
                Enabled = r.Bool("ipr.enabled"),
                Blocks = r.Int("ipr.blocks"),
                Bits = r.String("ipr.bits") == "auto" ? 0 : r.Int("ipr.bits"),
                Margin = r.Double("ipr.margin"),
                LearningRate = r.Double("ipr.learning-rate"),
                Triggers = r.Int("ipr.triggers"),
                TriggersPerBatch = r.Int("ipr.triggers-per-batch"),
            },
        };
        if (algorithms is not null) JobSpecValidation.Validate(spec, origin, algorithms);
        return spec;
    }

    /// <summary><c>algorithm = name</c> or <c>algorithm { name = ..., its block }</c>, over the plug-in's reference defaults.</summary>
    static AlgorithmSpec ReadAlgorithm(Config c, Func<string, string> field)
    {
        var value = c.GetValue("algorithm");
        Config block = value.IsObject() ? c.GetConfig("algorithm") : ConfigurationFactory.ParseString($"name = {Quote(value.GetString())}");
        var name = block.GetString("name");
        if (string.IsNullOrWhiteSpace(name)) throw new JobSpecException($"{field("algorithm.name")} is required (for example {AlgorithmCatalog.DefaultName})");
        var settings = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Flatten(block.Root, "", settings);
        settings.Remove("name");
        return Algorithm(name, settings);
    }

    /// <summary>
    /// The algorithm <paramref name="name"/> with <paramref name="settings"/> (flat dotted keys) over its defaults in
    /// <c>fate-llm.algorithms.&lt;name&gt;</c>, the only place they live: for code that builds jobs (experiments, specs).
    /// </summary>
    public static AlgorithmSpec Algorithm(string name, IReadOnlyDictionary<string, string>? settings = null)
    {
        var merged = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, v) in AlgorithmDefaults(name)) merged[key] = v;
        foreach (var (key, v) in settings ?? new Dictionary<string, string>()) merged[key] = v;
        return new AlgorithmSpec(name, merged);
    }

    /// <summary>
    /// A spec read from a journal written before a plug-in setting existed gets that setting's default; what the journal
    /// holds is kept as it was.
    /// </summary>
    public static JobSpec WithAlgorithmDefaults(JobSpec spec)
    {
        var defaults = AlgorithmDefaults(spec.Algorithm.Name);
        return defaults.Keys.All(spec.Algorithm.Settings.ContainsKey) ? spec
            : spec with { Algorithm = Algorithm(spec.Algorithm.Name, spec.Algorithm.Settings) };
    }

    /// <summary>An algorithm's reference block as flat dotted keys (empty for a plug-in without one).</summary>
    public static IReadOnlyDictionary<string, string> AlgorithmDefaults(string name)
    {
        var path = $"{AlgorithmsPath}.{name}";
        var flat = new SortedDictionary<string, string>(StringComparer.Ordinal);
        if (Reference.Value.HasPath(path)) Flatten(Reference.Value.GetConfig(path).Root, "", flat);
        return flat;
    }

    static void Flatten(HoconValue v, string prefix, IDictionary<string, string> into)
    {
        if (v.IsObject())
            foreach (var (key, child) in v.GetObject().Items) Flatten(child, prefix.Length == 0 ? key : $"{prefix}.{key}", into);
        else if (IsList(v)) into[prefix] = JsonSerializer.Serialize(v.Values.OfType<HoconArray>().SelectMany(a => a.GetArray()).Select(x => x.GetString()).ToArray());
        else into[prefix] = Exact(v);
    }

    /// <summary>
    /// A string value exactly as written. Akka's <c>GetString</c> trims every value, which turns the template
    /// <c>"{prompt}\n"</c> into <c>"{prompt}"</c> and silently changes the prompt format; a quoted value is one literal,
    /// while an unquoted one also carries the whitespace tokens around it, which are dropped here.
    /// </summary>
    public static string ExactString(Config c, string key) => Exact(c.GetValue(key));

    static string Exact(HoconValue value)
    {
        var parts = value.Values.Select(e => e.GetString()).ToList();
        if (parts.Count > 1)
        {
            while (parts.Count > 0 && string.IsNullOrWhiteSpace(parts[0])) parts.RemoveAt(0);
            while (parts.Count > 0 && string.IsNullOrWhiteSpace(parts[^1])) parts.RemoveAt(parts.Count - 1);
        }
        return string.Concat(parts);
    }

    /// <summary><c>parties[i].peft { r, alpha }</c>: a party's own LoRA rank (alpha optional).</summary>
    static PartyPeft PartyPeftOf(HoconValue value, string path, Func<string, string> field)
    {
        var o = value.IsObject() ? value.GetObject() : throw new JobSpecException($"{field(path)} must be an object {{ r, alpha }}");
        foreach (var key in o.Items.Keys.Where(k => k is not ("r" or "alpha")))
            throw new JobSpecException($"{field($"{path}.{key}")} is not a party's PEFT setting (r, alpha)");
        int? r = o.Items.TryGetValue("r", out var rv) && int.TryParse(rv.GetString(), out var rank) ? rank : null;
        if (r is not >= 1) throw new JobSpecException($"{field($"{path}.r")} must be an integer ≥ 1{(rv is null ? " (it is required)" : $", got '{rv.GetString()}'")}");
        double? alpha = null;
        if (o.Items.TryGetValue("alpha", out var av))
            alpha = double.TryParse(av.GetString(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var a) && a > 0 && double.IsFinite(a)
                ? a : throw new JobSpecException($"{field($"{path}.alpha")} must be a positive number, got '{av.GetString()}'");
        return new PartyPeft(r.Value, alpha);
    }

    static LoraRankRule ParseRankRule(string s) => s.ToLowerInvariant() switch
    {
        "zero-pad" or "zeropad" => LoraRankRule.ZeroPad,
        "stack" => LoraRankRule.Stack,
        "svd" => LoraRankRule.Svd,
        _ => throw new ArgumentException($"'{s}' is not one of zero-pad, stack, svd"),
    };

    static DpMode ParseDpMode(string s) => s.ToLowerInvariant() switch
    {
        "off" or "none" or "false" => DpMode.Off,
        "central" => DpMode.Central,
        "distributed" => DpMode.Distributed,
        _ => throw new ArgumentException($"'{s}' is not one of off, central, distributed"),
    };
}
