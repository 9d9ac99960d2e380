using System.Globalization;
using System.Text.Json;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Federation;
using FateLlm.Training.Inference;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Runtime;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Algorithms.Fdkt;

/// <summary>
/// FDKT (Li et al., "Federated Domain-Specific Knowledge Transfer on Large Language Models Using Synthetic Data",
/// arXiv 2405.14212; FATE-LLM <c>algo/fdkt</c>). Each party names its small model (<c>party-model</c>, or
/// <c>party-models.&lt;org&gt;</c>); <c>job.model</c> is the arbiter's LLM. A round has two exchanges:
/// <list type="bullet">
/// <item><c>synthesize</c>: each party trains its small model (LoRA) on its private examples with DP-SGD
/// (<c>local.dp-sgd</c>) to write an example given its category, samples <c>synthetic-per-category</c> examples per
/// category and uploads only those (text, bounded and checked by <see cref="SyntheticData"/>).</item>
/// <item>The arbiter embeds every synthetic example with its LLM, clusters them (k-means, ⌈N / samples-per-cluster⌉),
/// keeps the <c>filter-keep</c> share of each cluster its LLM finds likeliest, and writes <c>augmented-per-party</c>
/// new examples per party from that party's kept ones.</item>
/// <item><c>fine-tune</c>: each party fine-tunes its small model (a fresh LoRA, or last round's) on its own examples
/// and its augmented set; the model never leaves the party.</item>
/// </list>
/// Private text never leaves a party; what does is the output of a DP-trained model (post-processing keeps its ε).
/// A party's synthetic set, its DP adapter and its final adapter stay in its workspace, so a party asked again re-sends
/// the same set without training again or spending ε twice.
/// </summary>
public sealed class FdktAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "fdkt";
    public const string SynthesizePhase = "synthesize", FineTunePhase = "fine-tune", AugmentedDownload = "augmented", ReportArtifact = "report";
    const string PartyModels = "party-models.", SyntheticPrefix = "synthetic.", AugmentedPrefix = "augmented.";
    const string MaxExamplesParameter = "max-examples", MaxCategoriesParameter = "max-categories", MaxCharsParameter = "max-chars";
    const long ClusteringPurpose = 0x46444B54; // "FDKT"
    static readonly byte[] Ack = "FDK1"u8.ToArray();
    static readonly string[] Keys =
    [
        "party-model", "category-column", "categories", "synthesis-template", "separator", "synthetic-per-category", "max-categories", "max-chars",
        "slm-generation.temperature", "slm-generation.top-k", "slm-generation.top-p", "slm-generation.max-new-tokens",
        "samples-per-cluster", "filter", "filter-template", "filter-keep", "judge-template", "augment-template", "augment-shots", "augmented-per-party",
        "llm-generation.temperature", "llm-generation.top-k", "llm-generation.top-p", "llm-generation.max-new-tokens", "generation-batch-size", "fine-tune-data",
    ];

    public string Name => AlgorithmName;
    public bool Summable => false;
    /// <summary>DP-SGD runs in the parties' synthesis training (the only training whose output leaves them).</summary>
    public bool ExampleLevelDp => true;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new Uploads();

    public sealed record Settings(IReadOnlyDictionary<string, string> Models, string CategoryColumn, IReadOnlyList<string> Categories, SynthesisFormat Format,
        int PerCategory, SyntheticBounds Bounds, SamplingOptions SlmSampling, int SamplesPerCluster, bool JudgeFilter, string FilterTemplate, double FilterKeep,
        string JudgeTemplate, string AugmentTemplate, int AugmentShots, int AugmentedPerParty, SamplingOptions LlmSampling, int GenerationBatch, bool WithOwnData)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown([.. Keys, .. spec.Parties.Select(p => PartyModels + p.Org)]);
            var shared = s.GetString("party-model");
            var models = spec.Parties.ToDictionary(p => p.Org, p => s.Find(PartyModels + p.Org) ?? shared, StringComparer.Ordinal);
            if (models.FirstOrDefault(m => m.Value.Length == 0) is { Key: { } missing })
                throw new JobSpecException($"job.algorithm.party-models.{missing}: party '{missing}' needs its small model (set party-model for every party, or party-models.{missing})");
            SamplingOptions Sampling(string block) => new()
            {
                Temperature = s.GetDouble(block + ".temperature"), TopK = s.GetInt(block + ".top-k"), TopP = s.GetDouble(block + ".top-p"),
                MaxNewTokens = s.GetInt(block + ".max-new-tokens"), Seed = spec.Seed,
            };
            var data = s.GetString("fine-tune-data");
            var filter = s.GetString("filter");
            if (filter is not ("likelihood" or "judge"))
                throw new JobSpecException($"job.algorithm.filter = '{filter}' must be likelihood (the LLM's likeliest share of each cluster) or judge (an instruction-tuned LLM names the valid ones)");
            if (data is not ("own+augmented" or "augmented"))
                throw new JobSpecException($"job.algorithm.fine-tune-data = '{data}' must be own+augmented (the party's examples and its augmented set) or augmented");
            var r = new Settings(models, s.GetString("category-column"), s.GetStringList("categories"),
                new SynthesisFormat(s.GetString("synthesis-template"), s.GetString("separator")), s.GetInt("synthetic-per-category"),
                new SyntheticBounds(0, s.GetInt("max-categories"), s.GetInt("max-chars")), Sampling("slm-generation"), s.GetInt("samples-per-cluster"),
                filter == "judge", s.GetString("filter-template"), s.GetDouble("filter-keep"), s.GetString("judge-template"), s.GetString("augment-template"), s.GetInt("augment-shots"), s.GetInt("augmented-per-party"),
                Sampling("llm-generation"), s.GetInt("generation-batch-size"), data == "own+augmented");
            r = r with { Bounds = r.Bounds with { MaxExamples = r.PerCategory * r.Bounds.MaxCategories } };
            if (!r.Format.Template.Contains("{category}"))
                throw new JobSpecException($"job.algorithm.synthesis-template = '{r.Format.Template}' must contain {{category}}: the small model writes each category's examples from its own prompt");
            if (r.Format.Separator.Length == 0) throw new JobSpecException("job.algorithm.separator must not be empty: it splits a synthetic text into prompt and response");
            if (r.CategoryColumn.Length == 0) throw new JobSpecException("job.algorithm.category-column must name the column of each example's category");
            if (r.PerCategory < 1 || r.Bounds.MaxCategories < 1 || r.Bounds.MaxChars < 1 || r.SamplesPerCluster < 1 || r.GenerationBatch < 1)
                throw new JobSpecException($"job.algorithm: synthetic-per-category, max-categories, max-chars, samples-per-cluster and generation-batch-size must be ≥ 1 " +
                    $"(got {r.PerCategory}, {r.Bounds.MaxCategories}, {r.Bounds.MaxChars}, {r.SamplesPerCluster}, {r.GenerationBatch})");
            if (r.AugmentedPerParty < 0 || r.AugmentShots < 0)
                throw new JobSpecException($"job.algorithm: augmented-per-party and augment-shots must be ≥ 0 (got {r.AugmentedPerParty}, {r.AugmentShots})");
            if (r.JudgeFilter && !r.JudgeTemplate.Contains("{examples}"))
                throw new JobSpecException($"job.algorithm.judge-template must contain {{examples}} (the cluster's numbered examples the LLM judges)");
            if (!(r.FilterKeep is > 0 and <= 1)) throw new JobSpecException($"job.algorithm.filter-keep = {r.FilterKeep} must be in (0, 1]: the share of each cluster kept");
            if (r.Categories.Count > r.Bounds.MaxCategories)
                throw new JobSpecException($"job.algorithm.categories names {r.Categories.Count} categories, more than max-categories = {r.Bounds.MaxCategories}");
            foreach (var (name, o) in new[] { ("slm-generation", r.SlmSampling), ("llm-generation", r.LlmSampling) })
                if (o.MaxNewTokens < 1 || o.Temperature < 0 || o.TopK < 0 || !(o.TopP is > 0 and <= 1))
                    throw new JobSpecException($"job.algorithm.{name}: max-new-tokens ≥ 1, temperature ≥ 0, top-k ≥ 0 and top-p in (0, 1] (got {o.MaxNewTokens}, {o.Temperature}, {o.TopK}, {o.TopP})");
            return r;
        }
    }

    public void Validate(JobSpec spec)
    {
        Settings.Of(spec);
        if (spec.Peft.Method != PeftMethod.Lora) throw new JobSpecException($"job.peft.method = {PeftConfig.MethodName(spec.Peft.Method)}: fdkt tunes the parties' small models with LoRA (use lora)");
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);

    static SyntheticBounds Bounds(PartyInstruction i) => new(int.Parse(i.Parameters[MaxExamplesParameter], CultureInfo.InvariantCulture),
        int.Parse(i.Parameters[MaxCategoriesParameter], CultureInfo.InvariantCulture), int.Parse(i.Parameters[MaxCharsParameter], CultureInfo.InvariantCulture));

    static PartyInstruction Instruction(IReadOnlyDictionary<string, string> downloads, SyntheticBounds b) => PartyInstruction.Of(downloads, new Dictionary<string, string>
    {
        [MaxExamplesParameter] = I(b.MaxExamples), [MaxCategoriesParameter] = I(b.MaxCategories), [MaxCharsParameter] = I(b.MaxChars),
    });

    /// <summary>One party's line of a round's report: its synthetic examples, those kept, and the examples written for it.</summary>
    public sealed record PartyReport(string Party, int Synthetic, int Kept, int Augmented);

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            if (!Directory.Exists(ctx.ModelPath)) throw new JobSpecException($"job {spec.JobId}: job.model '{spec.ModelPath}' (the arbiter's LLM) is not on the arbiter");
            var dp = spec.Local.DpSgd;
            ctx.Log($"fdkt: LLM '{spec.ModelPath}'; parties: {string.Join(", ", s.Models.Select(m => $"{m.Key} → {m.Value}"))}; {s.PerCategory} synthetic examples per category, " +
                $"clusters of {s.SamplesPerCluster}, {s.FilterKeep:P0} kept, {s.AugmentedPerParty} augmented per party; " +
                (dp.Enabled ? $"DP-SGD {(dp.TargetEpsilon is { } e ? $"to ε = {e:G4}" : $"at σ = {dp.NoiseMultiplier:G4}")}, δ = {dp.Delta:G3}"
                    : "no DP-SGD (local.dp-sgd.enabled = off): the synthetic examples carry no privacy guarantee"));
            return new Preparation(spec with { ModelDigest = HfCheckpoint.WeightsDigest(ctx.ModelPath) }, AlgorithmState.Of());
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state) =>
            Exchange.Broadcast(SynthesizePhase, ctx.Participants, Instruction(new Dictionary<string, string>(), Settings.Of(ctx.Spec).Bounds));

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            if (result.Exchange.Name == FineTunePhase)
                return new StepResult(state, null) { Metrics = new Dictionary<string, double> { ["fdkt.parties-fine-tuned"] = result.Updates.Count } };
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            var uploads = result.Updates.OrderBy(u => u.Party, StringComparer.Ordinal).ToList();
            var all = uploads.SelectMany(u => ((IReadOnlyList<SyntheticExample>)u.Parsed!).Select(e => (u.Party, Example: e))).ToList();
            TorchRuntime.SetThreads(spec.Local.Threads);
            using var llm = ServedModel.Open(ctx.Server.ModelPath, spec.Data);
            var examples = all.Select(x => x.Example).ToList();
            var clusters = new int[examples.Count];
            var scores = Array.Empty<double>();
            var kept = new List<int>();
            var k = (examples.Count + s.SamplesPerCluster - 1) / s.SamplesPerCluster;
            if (examples.Count > 0)
            {
                var embeddings = DomainTransfer.Embed(llm.Model, llm.Tokenizer, examples, s.Format.Separator);
                clusters = KMeans.Cluster(embeddings, k, (long)Seeds.Derive(spec.Seed, ClusteringPurpose, ctx.Round, 0));
                scores = DomainTransfer.Plausibility(llm.Model, llm.Tokenizer, spec.Data, examples, s.FilterTemplate);
                kept = s.JudgeFilter
                    ? DomainTransfer.Judge(prompts => llm.Generate(prompts, s.LlmSampling with { Seed = (long)Seeds.Derive(spec.Seed, ClusteringPurpose, ctx.Round, 0) },
                        s.GenerationBatch), clusters, examples, s.JudgeTemplate, s.Format.Separator)
                    : DomainTransfer.Filter(clusters, scores, s.FilterKeep);
            }
            var keptSet = kept.ToHashSet();
            var next = state;
            var instructions = new Dictionary<string, PartyInstruction>(StringComparer.Ordinal);
            var report = new List<PartyReport>();
            foreach (var (u, p) in uploads.Select((u, p) => (u, p)))
            {
                var seeds = Enumerable.Range(0, all.Count).Where(i => all[i].Party == u.Party && keptSet.Contains(i)).Select(i => all[i].Example).ToList();
                var sampling = s.LlmSampling with { Seed = (long)Seeds.Derive(spec.Seed, ClusteringPurpose, ctx.Round, p + 1) };
                // What the party would refuse (too long, control characters) is dropped here, as the party drops its own.
                var augmented = DomainTransfer.Augment(prompts => llm.Generate(prompts, sampling, s.GenerationBatch), seeds, s.AugmentedPerParty, s.AugmentTemplate,
                    s.AugmentShots, s.Format.Separator).Where(e => SyntheticData.Problem(e, s.Bounds.MaxChars) is null).ToList();
                var digest = ctx.Store.Put(SyntheticData.ToBytes(augmented));
                next = next.With(SyntheticPrefix + u.Party, u.Digest).With(AugmentedPrefix + u.Party, digest);
                instructions[u.Party] = Instruction(new Dictionary<string, string> { [AugmentedDownload] = digest }, s.Bounds with { MaxExamples = Math.Max(1, s.AugmentedPerParty) });
                report.Add(new PartyReport(u.Party, all.Count(x => x.Party == u.Party), seeds.Count, augmented.Count));
            }
            double Mean(IEnumerable<int> indices) => indices.Select(i => scores[i]).DefaultIfEmpty(double.NaN).Average();
            var dropped = Enumerable.Range(0, examples.Count).Where(i => !keptSet.Contains(i)).ToList();
            ctx.Server.Log($"fdkt round {ctx.Round}: {examples.Count} synthetic examples from {uploads.Count} parties in {k} clusters; kept {kept.Count} " +
                $"(mean log-likelihood per token {Mean(kept):F3} kept, {Mean(dropped):F3} dropped); augmented " +
                string.Join(", ", report.Select(r => $"{r.Party} {r.Augmented} (from {r.Kept} of its {r.Synthetic})")));
            next = next.With(ReportArtifact, ctx.Store.Put(JsonSerializer.SerializeToUtf8Bytes(new { round = ctx.Round, clusters = k, parties = report })));
            return new StepResult(next, new Exchange(FineTunePhase, instructions))
            {
                Metrics = new Dictionary<string, double>
                {
                    ["fdkt.synthetic"] = examples.Count, ["fdkt.clusters"] = k, ["fdkt.kept"] = kept.Count,
                    ["fdkt.augmented"] = report.Sum(r => r.Augmented),
                    ["fdkt.plausibility.kept"] = Mean(kept), ["fdkt.plausibility.dropped"] = Mean(dropped),
                },
            };
        }

        // Each party evaluates its own small model with its fine-tuned adapter.
        public PartyInstruction? Evaluation(ServerContext ctx, AlgorithmState state) => PartyInstruction.Of(new Dictionary<string, string>());

        /// <summary>The exchanged texts (DP synthetic, LLM-augmented) and the last round's report; the parties' models stay with them.</summary>
        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            var dir = Directory.CreateDirectory(Path.Combine(outputDir, "fdkt")).FullName;
            foreach (var (name, digest) in state.Artifacts)
            {
                var file = name == ReportArtifact ? "report.json"
                    : name.StartsWith(SyntheticPrefix, StringComparison.Ordinal) ? $"synthetic-{name[SyntheticPrefix.Length..]}.jsonl"
                    : name.StartsWith(AugmentedPrefix, StringComparison.Ordinal) ? $"augmented-{name[AugmentedPrefix.Length..]}.jsonl" : null;
                if (file is not null) File.WriteAllBytes(Path.Combine(dir, file), ctx.Store.Read(digest));
            }
        }
    }

    /// <summary>Where a party keeps what a round made: its DP adapter, its synthetic set and its fine-tuned adapter.</summary>
    public static string WorkspaceFile(string workspace, int round, string kind) => Path.Combine(workspace, $"fdkt-r{round:D4}-{kind}");
    public const string SynthesisAdapter = "synthesis.safetensors", SyntheticSet = "synthetic.jsonl", FinalAdapter = "final.safetensors";

    /// <summary>The newest file of a kind from a round before <paramref name="round"/>, or null.</summary>
    public static string? Latest(string workspace, int round, string kind) =>
        Directory.Exists(workspace)
            ? Directory.GetFiles(workspace, $"fdkt-r*-{kind}").Where(f => int.TryParse(Path.GetFileName(f)[6..10], NumberStyles.None, CultureInfo.InvariantCulture, out var r) && r < round)
                .Order(StringComparer.Ordinal).LastOrDefault()
            : null;

    /// <summary>How a party trains its small model in a round (synthesis and fine-tune alike): the job's local settings and seeds.</summary>
    public static TrainOptions LocalOptions(JobSpec spec, int round) => new()
    {
        Epochs = spec.Local.Epochs, MaxSteps = spec.Local.Steps > 0 ? spec.Local.Steps : null, BatchSize = spec.Local.BatchSize,
        LearningRate = spec.Local.LearningRate, WarmupRatio = spec.Local.WarmupRatio, Schedule = spec.Local.Schedule, Seed = Seeds.LocalTraining(spec.Seed, round),
    };

    sealed class ClientSide : IClientAlgorithm
    {
        static FineTuning Open(ClientContext ctx, Settings s, string? adapter) =>
            Mkt.FedMktAlgorithm.OpenPartyModel(ctx.Spec, Mkt.FedMktAlgorithm.ResolvePartyModel(ctx, s.Models[ctx.Party]), adapter);

        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var s = Settings.Of(ctx.Spec);
            TorchRuntime.SetThreads(ctx.Spec.Local.Threads);
            return exchange == FineTunePhase ? FineTune(ctx, s, instruction, files, ct) : Synthesize(ctx, s, ct);
        }

        /// <summary>DP-trains the small model to write examples per category, samples them, and uploads the samples (kept for a retry).</summary>
        static ClientUpdate Synthesize(ClientContext ctx, Settings s, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var own = SyntheticData.ReadCategorized(ctx.TrainData, spec.Data, s.CategoryColumn);
            var set = WorkspaceFile(ctx.Workspace, ctx.Round, SyntheticSet);
            if (File.Exists(set))
            {
                // Asked again (a lost upload, a restarted node): the same set, no new training and no new ε.
                var again = File.ReadAllBytes(set);
                var resent = new Dictionary<string, double> { ["fdkt.synthetic"] = SyntheticData.Parse(again, s.Bounds, set).Count, ["fdkt.resent"] = 1 };
                if (spec.Local.DpSgd.Enabled) resent["dpsgd.epsilon"] = DpSgdLedger.Spent(ctx.Workspace, spec.Local.DpSgd.Delta);
                return new ClientUpdate(again, own.Count, resent);
            }
            var categories = s.Categories.Count > 0 ? s.Categories : own.Select(e => e.Category).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
            if (categories.Count > s.Bounds.MaxCategories)
                throw new JobSpecException($"party '{ctx.Party}': its data has {categories.Count} categories in column '{s.CategoryColumn}', more than job.algorithm.max-categories = {s.Bounds.MaxCategories}");
            using var run = Open(ctx, s, Latest(ctx.Workspace, ctx.Round, SynthesisAdapter));
            var data = DomainTransfer.SynthesisData(spec.Data);
            var training = run.Tokenize(own.Select((e, i) => s.Format.Training(e, $"{ctx.TrainData}#{i + 1}")), data);
            var dp = spec.Local.DpSgd.Enabled ? DpSgdLedger.Plan(spec, ctx.Workspace, ctx.Party, ctx.Round, BlobStore.Digest(run.TrainableBytes()), training.Count) : null;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var trained = run.Train(training, LocalOptions(spec, ctx.Round) with { Private = dp?.Step }, ctx.Progress, ct);
            var trainSeconds = sw.Elapsed.TotalSeconds;
            AtomicFile.WriteAllBytes(WorkspaceFile(ctx.Workspace, ctx.Round, SynthesisAdapter), run.TrainableBytes());
            var (examples, unparsed) = DomainTransfer.Synthesize(run.Model, run.Tokenizer, data, s.Format, categories, s.PerCategory,
                s.SlmSampling with { Seed = Seeds.LocalTraining(spec.Seed, ctx.Round) }, s.GenerationBatch, ct);
            // A sample beyond the upload's bounds is dropped here rather than sinking the whole upload at the arbiter.
            var admissible = examples.Where(e => SyntheticData.Problem(e, s.Bounds.MaxChars) is null).ToList();
            var bytes = SyntheticData.ToBytes(admissible);
            AtomicFile.WriteAllBytes(set, bytes);
            var metrics = new Dictionary<string, double>
            {
                ["fdkt.synthetic"] = admissible.Count, ["fdkt.unparsed"] = unparsed + examples.Count - admissible.Count, ["fdkt.categories"] = categories.Count,
                [ClientUpdate.Steps] = trained.Steps, [ClientUpdate.SecondsPrefix + "train"] = trainSeconds,
                [ClientUpdate.SecondsPrefix + "generate"] = sw.Elapsed.TotalSeconds - trainSeconds,
            };
            // Under DP-SGD its losses on its own examples stay home (they are not covered by the guarantee).
            if (dp is null) (metrics[ClientUpdate.FirstLoss], metrics[ClientUpdate.LastLoss]) = (trained.FirstLoss, trained.LastLoss);
            else (metrics["dpsgd.epsilon"], metrics["dpsgd.noise-multiplier"], metrics["dpsgd.sampling-rate"], metrics["dpsgd.steps"]) =
                (dp.Spent.Epsilon, dp.Spent.NoiseMultiplier, dp.Spent.SamplingRate, dp.Spent.Steps);
            return new ClientUpdate(bytes, own.Count, metrics);
        }

        /// <summary>Fine-tunes the small model on its own examples and the augmented set; only an acknowledgement leaves.</summary>
        static ClientUpdate FineTune(ClientContext ctx, Settings s, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var augmented = SyntheticData.Parse(File.ReadAllBytes(files[AugmentedDownload]), Bounds(instruction), "augmented set")
                .Select((e, i) => e.AsExample($"augmented set#{i + 1}")).ToList();
            var own = s.WithOwnData ? Data.InstructionData.ReadJsonl(ctx.TrainData, spec.Data) : [];
            if (own.Count + augmented.Count == 0) throw new InvalidOperationException($"party '{ctx.Party}': nothing to fine-tune on (fine-tune-data = augmented, and its augmented set is empty)");
            using var run = Open(ctx, s, Latest(ctx.Workspace, ctx.Round, FinalAdapter));
            var checkpoints = FederatedComputation.CheckpointFolder(spec, ctx, ctx.Round, run.TrainableBytes());
            var r = run.Train(run.Tokenize([.. own, .. augmented], spec.Data), LocalOptions(spec, ctx.Round) with
            {
                CheckpointDir = checkpoints, CheckpointEvery = spec.Local.CheckpointEvery, Resume = checkpoints is not null,
            }, ctx.Progress, ct);
            AtomicFile.WriteAllBytes(WorkspaceFile(ctx.Workspace, ctx.Round, FinalAdapter), run.TrainableBytes());
            FederatedComputation.DeleteCheckpoints(checkpoints);
            var metrics = new Dictionary<string, double> { ["fdkt.augmented"] = augmented.Count, [ClientUpdate.Steps] = r.Steps };
            if (!spec.Local.DpSgd.Enabled) (metrics[ClientUpdate.FirstLoss], metrics[ClientUpdate.LastLoss]) = (r.FirstLoss, r.LastLoss);
            return new ClientUpdate(Ack, own.Count, metrics);
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            using var run = Open(ctx, Settings.Of(ctx.Spec), Latest(ctx.Workspace, int.MaxValue, FinalAdapter));
            return FederatedComputation.Evaluate(ctx.Spec, run, ctx.EvalData ?? ctx.TrainData, ct, ctx.Tasks);
        }
    }

    /// <summary>A synthetic upload: bounded UTF-8 JSON lines (<see cref="SyntheticData"/>); after fine-tuning, a four-byte acknowledgement.</summary>
    sealed class Uploads : IUpdateCodec
    {
        public long MaxBytes(Exchange exchange, UpdateLimits limits) =>
            exchange.Name == FineTunePhase ? Ack.Length : exchange.Instructions.Values.Select(i => Math.Min(limits.MaxBytes, Bounds(i).MaxBytes)).DefaultIfEmpty(0).Max();

        public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
        {
            if (ctx.Exchange.Name == FineTunePhase)
                return update.AsSpan().SequenceEqual(Ack) ? UpdateCheck.Accepted(null)
                    : UpdateCheck.Refused($"fdkt: party '{ctx.Party}' answered the '{FineTunePhase}' exchange with {update.Length} unexpected bytes");
            try { return UpdateCheck.Accepted(SyntheticData.Parse(update, Bounds(ctx.Exchange.Instructions[ctx.Party]), $"party '{ctx.Party}' synthetic upload")); }
            catch (FormatException e) { return UpdateCheck.Refused($"fdkt: {e.Message}"); }
        }
    }
}
