using FateLlm.Training.Algorithms;
using FateLlm.Training.Compression;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;

namespace FateLlm.Training.Federation;

/// <summary>
/// Whether a job can run, checked where it is loaded and again where the arbiter accepts it: the framework's rules
/// (parties, rounds, quorum, sampling, secure aggregation, DP), then the algorithm's own.
/// </summary>
public static class JobSpecValidation
{
    public static void Validate(JobSpec spec, string origin, AlgorithmCatalog algorithms)
    {
        void Check(bool ok, string field, string message)
        {
            if (!ok) throw new JobSpecException($"{origin}: job.{field} {message}");
        }
        Check(JobIds.IsValid(spec.JobId), "id", $"'{spec.JobId}' {JobIds.Rule}");
        Check(!File.Exists(spec.OutputDir), "output", $"'{spec.OutputDir}' is a file; the job writes a folder there");
        var parties = spec.Parties;
        Check(parties.Length > 0, "parties", "must name at least one party");
        var dup = parties.GroupBy(p => p.Org).FirstOrDefault(g => g.Count() > 1);
        Check(dup is null, "parties", $"names organization '{dup?.Key}' twice");
        Check(parties.All(p => System.Text.RegularExpressions.Regex.IsMatch(p.Org, "^[A-Za-z0-9_-]+$")), "parties", "org ids may use letters, digits, '-' and '_' only");
        Check(spec.Rounds >= 1, "rounds", $"must be ≥ 1, got {spec.Rounds}");
        var sampling = spec.Round.Sampling;
        Check(sampling.Count >= 0, "sampling.count", $"must be ≥ 0, got {sampling.Count}");
        Check(sampling.Fraction is > 0 and <= 1, "sampling.fraction", $"must be in (0, 1], got {sampling.Fraction}");
        var cohort = spec.CohortSize;
        Check(spec.Round.Quorum >= 1 && spec.Round.Quorum <= cohort, "quorum",
            $"must be between 1 and the {cohort} parties a round asks{(cohort < parties.Length ? " (after sampling)" : "")}, got {spec.Round.Quorum}");
        Check(spec.Round.MaxAttempts >= 1, "max-round-attempts", "must be ≥ 1");
        Check(spec.Round.DeadlineSeconds > 0, "round-deadline", "must be positive");
        Check(spec.Round.DeadlineFactor >= 0 && double.IsFinite(spec.Round.DeadlineFactor), "round-deadline-factor", $"must be ≥ 0 (0: a fixed deadline), got {spec.Round.DeadlineFactor}");
        Check(spec.Round.DeadlineFloorSeconds >= 0, "round-deadline-floor", "must not be negative");
        var local = spec.Local;
        Check(local.BatchSize >= 1 && local.Epochs >= 1 && local.Steps >= 0 && local.Threads >= 1, "local", "needs batch-size ≥ 1, epochs ≥ 1, steps ≥ 0, threads ≥ 1");
        Check(local.LearningRate > 0 && double.IsFinite(local.LearningRate), "local.learning-rate", $"must be a positive number, got {local.LearningRate}");
        Check(local.WarmupRatio is >= 0 and < 1, "local.warmup-ratio", $"must be in [0, 1), got {local.WarmupRatio}");
        Check(local.FedProxMu >= 0 && double.IsFinite(local.FedProxMu), "local.fedprox-mu", $"must be ≥ 0, got {local.FedProxMu}");
        try { local.DpSgd.Validate(); } catch (ArgumentException e) { Check(false, "local.dp-sgd", e.Message); }
        var peft = spec.Peft;
        Check(peft.LoraR >= 1, "peft.r", $"must be ≥ 1, got {peft.LoraR}");
        Check(peft.LoraAlpha > 0 && double.IsFinite(peft.LoraAlpha), "peft.alpha", $"must be a positive number, got {peft.LoraAlpha}");
        Check(peft.LoraDropout is >= 0 and < 1, "peft.dropout", $"must be in [0, 1), got {peft.LoraDropout}");
        Check(peft.NumVirtualTokens >= 1, "peft.num-virtual-tokens", $"must be ≥ 1, got {peft.NumVirtualTokens}");
        var data = spec.Data;
        Check(data.MaxPromptTokens >= 1 && data.MaxResponseTokens >= 1 && data.MaxTotalTokens >= 3, "data",
            $"needs max-prompt-tokens ≥ 1, max-response-tokens ≥ 1 and max-tokens ≥ 3 (bos, a token, eos), got {data.MaxPromptTokens}, {data.MaxResponseTokens}, {data.MaxTotalTokens}");
        Check(spec.Evaluation.Limit >= 0, "evaluation.limit", $"must be ≥ 0, got {spec.Evaluation.Limit}");
        Check(spec.Evaluation.MaxNewTokens >= 1, "evaluation.max-new-tokens", $"must be ≥ 1, got {spec.Evaluation.MaxNewTokens}");
        Check(spec.Evaluation.Every >= 0, "evaluation.every", $"must be ≥ 0, got {spec.Evaluation.Every}");
        Check(spec.Evaluation.TaskLimit >= 0, "evaluation.task-limit", $"must be ≥ 0, got {spec.Evaluation.TaskLimit}");
        Check(spec.Evaluation.Every == 0 || spec.Evaluation.Tasks.Count > 0, "evaluation.every", "needs evaluation.tasks");
        Check(spec.Data.Template.Contains("{prompt}"), "data.template", "must contain {prompt}");
        Check(spec.Validation.MaxNorm > 0, "validation.max-update-norm", "must be > 0");
        Check(spec.Validation.MaxBytes > 0, "validation.max-update-bytes", "must be > 0");
        try { spec.Dp.Validate(); } catch (ArgumentException e) { Check(false, "dp", e.Message); }
        Check(!(spec.Dp.Mode == DpMode.Distributed && !spec.SecureAggregation.Enabled), "dp.mode", "'distributed' adds noise at the parties and needs secure-aggregation = on");
        IFederatedAlgorithm algorithm;
        try { algorithm = algorithms.For(spec); }
        catch (JobSpecException e) { throw new JobSpecException($"{origin}: {e.Message}"); }
        if (!algorithm.Summable && (spec.SecureAggregation.Enabled || spec.Dp.Enabled))
            Check(false, spec.SecureAggregation.Enabled ? "secure-aggregation" : "dp.mode",
                $"cannot apply: algorithm '{algorithm.Name}' exchanges no summable updates");
        if (spec.SecureAggregation.Enabled)
        {
            var sa = spec.SecureAggregation;
            Check(cohort >= 3, "secure-aggregation", $"needs at least 3 parties per round (the job asks {cohort}): with 2 the sum reveals the other's update");
            Check(spec.Dp.Mode != DpMode.Central, "dp.mode", "'central' needs the arbiter to see individual updates; with secure aggregation use 'distributed'");
            var k = sa.DegreeFor(cohort);
            var t = sa.ThresholdFor(cohort);
            Check(t >= 2 && t <= k + 1, "secure-aggregation.threshold", $"{t} must be between 2 and {k + 1} (neighbours + self)");
            Check(spec.Round.Quorum >= t, "quorum", $"{spec.Round.Quorum} must be at least the secure-aggregation threshold {t}");
            Check(sa.ClipRange > 0, "secure-aggregation.clip-range", "must be > 0");
            Check(sa.SampleCap > 0, "secure-aggregation.sample-cap", "must be > 0");
            Check(sa.PhaseTimeoutSeconds > 0, "secure-aggregation.phase-timeout", "must be positive");
        }
        CheckCompression(spec, algorithm, Check);
        CheckRanks(spec, algorithm, Check);
        CheckSchedule(spec, algorithm, Check);
        if (local.DpSgd.Enabled)
        {
            Check(algorithm.ExampleLevelDp, "local.dp-sgd", $"cannot apply: algorithm '{algorithm.Name}' runs no DP-SGD in its parties' training (homo-peft and fdkt do)");
            Check(local.FedProxMu == 0, "local.fedprox-mu", "must be 0 under local.dp-sgd: the proximal term's gradient is not clipped per example");
            Check(!spec.Ipr.Enabled, "ipr", "cannot apply under local.dp-sgd: the watermark's trigger examples and hinge step are not clipped per example");
        }
        try { spec.Ipr.Validate(); } catch (JobSpecException e) { throw new JobSpecException($"{origin}: {e.Message}"); }
        if (spec.Evaluation.Every > 0 && !algorithm.EvaluatesInRounds)
            Check(false, "evaluation.every", $"cannot apply: algorithm '{algorithm.Name}' runs evaluation tasks only in the final evaluation (homo-peft, offsite and pdss run them in rounds)");
        if (spec.Ipr.Enabled && !algorithm.Watermarkable)
            Check(false, "ipr", $"cannot apply: algorithm '{algorithm.Name}' trains no norm scales a party could watermark (homo-peft and offsite do)");
        try { algorithm.Validate(spec); }
        catch (JobSpecException e) { throw new JobSpecException($"{origin}: {e.Message}"); }
    }

    static void CheckRanks(JobSpec spec, IFederatedAlgorithm algorithm, Action<bool, string, string> check)
    {
        var pruning = spec.Aggregation.RankPruning;
        check(pruning >= 0 && pruning < 1, "aggregation.rank-pruning", $"must be in [0, 1) (0: off), got {pruning}");
        check(pruning == 0 || algorithm.HeterogeneousRanks, "aggregation.rank-pruning", $"cannot apply: algorithm '{algorithm.Name}' trains one rank for every party (homo-peft can prune)");
        var rule = spec.Aggregation.LoraRanks;
        if (!LoraRanks.Heterogeneous(spec) && pruning == 0 && rule == LoraRankRule.ZeroPad) return;
        check(algorithm.HeterogeneousRanks, rule != LoraRankRule.ZeroPad ? "aggregation.lora-ranks" : "parties",
            $"{(rule != LoraRankRule.ZeroPad ? $"= {rule.ToString().ToLowerInvariant()} cannot apply" : "cannot have LoRA ranks of their own")}: algorithm '{algorithm.Name}' trains one adapter for all (homo-peft can)");
        check(spec.Peft.Method == PeftMethod.Lora, "peft.method", $"must be lora when parties have ranks of their own, got {PeftConfig.MethodName(spec.Peft.Method)}");
        if (rule != LoraRankRule.ZeroPad)
        {
            // FlexLoRA and FLoRA multiply or stack each party's factors at the arbiter and hand each party its own: what
            // needs one summable update, or a server state of the global's shape, cannot follow.
            var why = rule == LoraRankRule.Svd ? "svd (FlexLoRA) multiplies every party's own factors at the arbiter" : "stack (FLoRA) stacks every party's own factors at the arbiter";
            check(!spec.SecureAggregation.Enabled, "secure-aggregation", $"cannot apply with {why} (use zero-pad)");
            check(!spec.Dp.Enabled, "dp.mode", $"cannot apply with {why} (use zero-pad)");
            check(spec.Aggregation.Algorithm.Equals("fedavg", StringComparison.OrdinalIgnoreCase) && spec.Aggregation.Server.LearningRate == 1,
                "aggregation.algorithm", $"must be fedavg with server-learning-rate 1 under {rule.ToString().ToLowerInvariant()}: the global is the weighted sum of the parties' products");
            check(spec.Compression.Down == Compression.CompressionScheme.None, "compression.down", $"cannot apply under {rule.ToString().ToLowerInvariant()}: every party downloads factors of its own rank");
            check(pruning == 0, "aggregation.rank-pruning", "applies to zero-pad only");
            check(!spec.Ipr.Enabled, "ipr", $"cannot apply under {rule.ToString().ToLowerInvariant()} (FedIPR's norm scales are not factors of ΔW)");
        }
        var scaling = LoraRanks.Scaling(spec);
        for (int i = 0; i < spec.Parties.Length; i++)
            if (spec.Parties[i].Peft is { Alpha: { } alpha } own && Math.Abs(alpha / own.R - scaling) > 1e-9 * scaling)
                check(false, $"parties[{i}].peft.alpha", $"{alpha} gives '{spec.Parties[i].Org}' the scaling α/r = {alpha / own.R:G4}; zero-pad keeps the job's " +
                    $"{spec.Peft.LoraAlpha:G4}/{spec.Peft.LoraR} = {scaling:G4} at every rank, so a component means the same everywhere (alpha = {own.R * scaling:G4}, or leave it out)");
    }

    static void CheckSchedule(JobSpec spec, IFederatedAlgorithm algorithm, Action<bool, string, string> check)
    {
        var b = spec.Schedule;
        if (!b.Buffered) return;
        check(algorithm.Buffered, "schedule", $"= buffered cannot apply: algorithm '{algorithm.Name}' runs rounds whose exchanges need one version of the global (homo-peft can run buffered)");
        var parties = spec.Parties.Length;
        check(b.Buffer >= 1 && b.Buffer <= parties, "buffered.buffer", $"must be between 1 and the {parties} parties (a party has at most one update per buffer), got {b.Buffer}");
        check(b.Concurrency >= 0, "buffered.concurrency", $"must be ≥ 0 (0: every party), got {b.Concurrency}");
        check(b.ConcurrencyFor(parties) >= b.Buffer, "buffered.concurrency",
            $"{b.ConcurrencyFor(parties)} parties training at once can never fill a buffer of {b.Buffer}: a party waits for the flush after its update");
        check(b.MaxStaleness >= 0, "buffered.max-staleness", $"must be ≥ 0, got {b.MaxStaleness}");
        check(b.Exponent >= 0 && double.IsFinite(b.Exponent), "buffered.a", $"must be ≥ 0, got {b.Exponent}");
        check(b.ServerLearningRate is null or > 0 && double.IsFinite(b.ServerLearningRate ?? 1), "buffered.server-learning-rate", $"must be positive (or inherit), got {b.ServerLearningRate}");
        check(spec.Strategy().NeedsMeanOnly, "aggregation.algorithm",
            $"'{spec.Aggregation.Algorithm}' needs every update of one round at once; a buffered flush weighs updates of different versions by staleness (use fedavg, fedavgm, fedadam, fedadagrad or fedyogi)");
        check(!spec.SecureAggregation.Enabled, "secure-aggregation",
            "cannot apply under schedule = buffered: SecAgg+ needs its cohort, and the pairwise keys behind every mask, fixed before anyone masks, but a " +
            "buffer's K members are known only when the K-th update arrives, and each update's staleness weight would have to be applied after unmasking. " +
            "Fixing the cohort at dispatch makes its members wait for one another — a synchronous round (use schedule = sync for secure aggregation)");
        check(spec.Dp.Mode != DpMode.Distributed, "dp.mode", "'distributed' needs secure aggregation, which a buffered schedule cannot run (use central)");
        check(spec.Compression.Down == CompressionScheme.None, "compression.down",
            "cannot apply under schedule = buffered: the downlink sends a delta against the one global every party holds, and buffered parties hold different versions");
        check(spec.Aggregation.LoraRanks == LoraRankRule.ZeroPad, "aggregation.lora-ranks", "must be zero-pad under schedule = buffered (svd and stack rebuild the global from one round's factors)");
        check(spec.Round.Sampling.SamplesAll(parties), "sampling", "does not apply under schedule = buffered: buffered.concurrency says how many parties train at once");
        check(spec.Evaluation.Every == 0, "evaluation.every", "does not apply under schedule = buffered (parties' fits are not rounds); the final evaluation runs the tasks");
    }

    static void CheckCompression(JobSpec spec, IFederatedAlgorithm algorithm, Action<bool, string, string> check)
    {
        var c = spec.Compression;
        if (!c.Any) return;
        check(algorithm.Summable, "compression", $"cannot apply: algorithm '{algorithm.Name}' exchanges no summable updates");
        check(c.BlockSize is >= 8 and <= 1 << 20, "compression.block-size", $"must be between 8 and 1048576, got {c.BlockSize}");
        check(c.TopKFraction is > 0 and <= 1, "compression.topk-fraction", $"must be in (0, 1], got {c.TopKFraction}");
        check(c.Down != CompressionScheme.TopK, "compression.down",
            "cannot be topk: a sparse global would leave parties on different models (use fp16, bf16, int8 or nf4)");
        if (spec.SecureAggregation.Enabled)
            check(c.Up is not (CompressionScheme.Nf4 or CompressionScheme.TopK), "compression.up",
                $"cannot be {CompressionOptions.Name(c.Up)} under secure aggregation: masked words add up only as fixed-point integers, and " +
                (c.Up == CompressionScheme.TopK ? "each party's support differs while the masks cover every coordinate" : "NF4's code book is not additive") +
                " (use int8 for 8 bits per coordinate or fp16 for 16)");
    }
}

/// <summary>What a job id may be: it names a folder, a journal stream and a sharded entity on every arbiter.</summary>
public static class JobIds
{
    public const string Rule = "must be 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit";

    public static bool IsValid(string id) => System.Text.RegularExpressions.Regex.IsMatch(id, "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
}
