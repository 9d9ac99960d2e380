using System.Globalization;
using System.Text;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Algorithms.Mkt;

/// <summary>
/// FedMKT (FedHeteroLLM): each party tunes its own small model (any family the project loads, any tokenizer; named per
/// party in <c>job.algorithm.party-models</c>) with LoRA, and the arbiter tunes the large model (<c>job.model</c>) with
/// LoRA; they exchange only top-k logits on a public set. Round: exchange <c>fit</c> (parties train on private data and
/// upload their logits block), the arbiter aligns every block into its vocabulary, picks per example the party of
/// lowest cross-entropy (Min-CE) and trains α·CE + (1−α)·KD, then computes its own block; exchange <c>distill</c>
/// (parties align the arbiter's block into theirs and distil the same way). Party adapters stay in the party's
/// workspace, one file per round and phase, so a retried phase starts from the same state. State: <c>public</c>,
/// <c>server-adapter</c>, <c>server-logits</c>, <c>party-average</c>. Not summable.
/// <para><c>mode = one-way</c> (FATE-LLM's <c>llm_training = false</c>): the server model is not trained; its logits are
/// computed once at prepare time and each round is one exchange <c>fit-distill</c> (train on private data, then distil
/// from those logits). <c>post-fedavg = on</c> (homogeneous parties only): after distilling, parties upload their LoRA,
/// the arbiter averages it by private sample count, and every party starts its next round (and the final evaluation)
/// from that average.</para>
/// </summary>
public sealed class FedMktAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "fedmkt";
    public const string PublicArtifact = "public", ServerAdapter = "server-adapter", ServerLogits = "server-logits", FitPhase = "fit", DistillPhase = "distill",
        OneWayPhase = "fit-distill", PartyAverage = "party-average";
    const string PartyModels = "party-models.";
    const string ExamplesParameter = "examples", MaxTokensParameter = "max-tokens", TopKParameter = "top-k", UploadParameter = "upload";
    /// <summary>What a party uploads in an exchange: its logits block, a four-byte acknowledgement, or its LoRA (post-fedavg).</summary>
    const string UploadLogits = "logits", UploadAck = "ack", UploadAdapter = "adapter";
    static readonly string[] Keys = ["public-data", "public-limit", "top-k", "alpha", "temperature", "public-epochs", "learning-rate", "batch-size", "mode", "post-fedavg"];
    static readonly byte[] Ack = "MKA1"u8.ToArray();

    public string Name => AlgorithmName;
    public bool Summable => false;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new Blocks();

    public sealed record Settings(string PublicData, int PublicLimit, int TopK, IReadOnlyDictionary<string, string> Models, TransferOptions Transfer,
        bool OneWay, bool PostFedAvg)
    {
        /// <summary>What parties upload after distilling.</summary>
        public string DistilUpload => PostFedAvg ? UploadAdapter : UploadAck;

        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown([.. Keys, .. spec.Parties.Select(p => PartyModels + p.Org)]);
            var models = spec.Parties.ToDictionary(p => p.Org, p => s.Find(PartyModels + p.Org) ?? "");
            if (models.FirstOrDefault(m => m.Value.Length == 0) is { Key: { } missing })
                throw new JobSpecException($"job.algorithm.party-models.{missing}: party '{missing}' needs its small model (a folder on its node)");
            var data = s.GetString("public-data");
            if (data.Length == 0) throw new JobSpecException("job.algorithm.public-data (a public instruction JSONL on the arbiter) is required");
            var o = new TransferOptions(s.GetDouble("alpha"), s.GetDouble("temperature"), s.GetInt("public-epochs"), s.GetInt("batch-size"),
                s.GetDouble("learning-rate"), spec.Seed);
            var mode = s.GetString("mode");
            if (mode is not ("two-way" or "one-way"))
                throw new JobSpecException($"job.algorithm.mode = '{mode}' must be two-way (server and parties learn from each other) or one-way (server logits once)");
            var r = new Settings(data, s.GetInt("public-limit"), s.GetInt("top-k"), models, o, mode == "one-way", s.GetBool("post-fedavg"));
            if (r.PostFedAvg && models.Values.Distinct(StringComparer.Ordinal).Count() > 1)
                throw new JobSpecException("job.algorithm.post-fedavg = on averages the parties' LoRA, so every party-models.<org> must name the same model (got " +
                    string.Join(", ", models.Select(m => $"{m.Key} → {m.Value}")) + ")");
            if (r.PublicLimit < 1 || r.TopK < 1 || o.Epochs < 1 || o.BatchSize < 1)
                throw new JobSpecException($"job.algorithm: public-limit, top-k, public-epochs and batch-size must be ≥ 1 (got {r.PublicLimit}, {r.TopK}, {o.Epochs}, {o.BatchSize})");
            if (!(o.Alpha is >= 0 and <= 1)) throw new JobSpecException($"job.algorithm.alpha = {o.Alpha} must be in [0, 1] (α·CE + (1−α)·KD)");
            if (!(o.Temperature > 0) || !(o.LearningRate > 0)) throw new JobSpecException("job.algorithm.temperature and learning-rate must be positive");
            return r;
        }
    }

    public void Validate(JobSpec spec)
    {
        Settings.Of(spec);
        if (spec.Peft.Method != PeftMethod.Lora) throw new JobSpecException($"job.peft.method = {PeftConfig.MethodName(spec.Peft.Method)}: fedmkt tunes LoRA on every model (use lora)");
    }

    static PartyInstruction Instruction(JobSpec spec, Settings s, IReadOnlyDictionary<string, string> downloads, int examples, string upload) =>
        PartyInstruction.Of(downloads, new Dictionary<string, string>
        {
            [ExamplesParameter] = I(examples), [MaxTokensParameter] = I(spec.Data.MaxTotalTokens), [TopKParameter] = I(s.TopK), [UploadParameter] = upload,
        });

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);

    static List<Example> ReadPublic(string path, JobSpec spec) => InstructionData.ReadJsonl(path, spec.Data);

    static FineTuning OpenServer(JobSpec spec, string modelPath) => FineTuning.Open(modelPath, spec.Peft, spec.Seed);

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            if (!Directory.Exists(ctx.ModelPath)) throw new JobSpecException($"job {spec.JobId}: job.model '{spec.ModelPath}' (the server model) is not on the arbiter");
            if (!File.Exists(s.PublicData)) throw new JobSpecException($"job {spec.JobId}: job.algorithm.public-data '{s.PublicData}' is not a file on the arbiter");
            // The public set travels as a blob (it is public): every party aligns and distils on exactly these examples.
            var examples = ReadPublic(s.PublicData, spec).Take(s.PublicLimit).ToList();
            var jsonl = string.Join('\n', examples.Select(e => System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string>
            {
                [spec.Data.PromptColumn] = e.Prompt, [spec.Data.ResponseColumn] = e.Response,
            }))) + "\n";
            using var run = OpenServer(spec, ctx.ModelPath);
            ctx.Log($"fedmkt: server model '{spec.ModelPath}' ({run.Model.Config.ParameterCount():N0} parameters, vocabulary {run.Model.Config.VocabSize}); " +
                $"{examples.Count} public examples, top-{s.TopK} logits, {(s.OneWay ? "one-way" : "two-way")}{(s.PostFedAvg ? ", parties' LoRA averaged" : "")}; " +
                $"parties: {string.Join(", ", s.Models.Select(m => $"{m.Key} → {m.Value}"))}");
            var state = AlgorithmState.Of((PublicArtifact, ctx.Store.Put(Encoding.UTF8.GetBytes(jsonl))), (ServerAdapter, ctx.Store.Put(run.TrainableBytes())));
            if (s.OneWay)
            {
                // The server model is not tuned in one-way mode: its logits on the public set are made once, here.
                TorchRuntime.SetThreads(spec.Local.Threads);
                var block = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, TokenVocabulary.Of(run.Tokenizer), ReadPublic(ctx.Store.PathOf(state.Get(PublicArtifact)), spec), spec.Data, s.TopK);
                state = state.With(ServerLogits, ctx.Store.Put(block.ToBytes()));
            }
            return new Preparation(spec with { ModelDigest = HfCheckpoint.WeightsDigest(ctx.ModelPath) }, state);
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state)
        {
            var s = Settings.Of(ctx.Spec);
            var count = ReadPublic(ctx.Store.PathOf(state.Get(PublicArtifact)), ctx.Spec).Count;
            var downloads = new Dictionary<string, string> { [PublicArtifact] = state.Get(PublicArtifact) };
            // The parties' averaged LoRA of the last round, where post-fedavg made one: every party starts from it.
            if (state.Find(PartyAverage) is { } average) downloads[PartyAverage] = average;
            if (!s.OneWay) return Exchange.Broadcast(FitPhase, ctx.Participants, Instruction(ctx.Spec, s, downloads, count, UploadLogits));
            downloads[ServerLogits] = state.Get(ServerLogits);
            return Exchange.Broadcast(OneWayPhase, ctx.Participants, Instruction(ctx.Spec, s, downloads, count, s.DistilUpload));
        }

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            if (result.Exchange.Name is DistillPhase or OneWayPhase)
            {
                var metrics = new Dictionary<string, double> { ["mkt.parties-distilled"] = result.Updates.Count };
                if (!s.PostFedAvg) return new StepResult(state, null) { Metrics = metrics };
                metrics["mkt.parties-averaged"] = result.Updates.Count;
                return new StepResult(state.With(PartyAverage, ctx.Store.Put(AveragePartyAdapters(result))), null) { Metrics = metrics };
            }
            TorchRuntime.SetThreads(spec.Local.Threads);
            var publicSet = ReadPublic(ctx.Store.PathOf(state.Get(PublicArtifact)), spec);
            using var run = OpenServer(spec, ctx.Server.ModelPath);
            run.LoadTrainable(ctx.Store.Read(state.Get(ServerAdapter)), "server adapter");
            var vocab = TokenVocabulary.Of(run.Tokenizer);
            // Only its own cross-entropy per example is needed before training (the Min-CE bar), so k = 1.
            var own = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, spec.Data, 1);
            var candidates = result.Updates.Select(u => (IReadOnlyList<ExampleTarget>)KnowledgeTransfer.Align((PublicLogits)u.Parsed!, run.Tokenizer, vocab, publicSet,
                spec.Data, s.Transfer.Temperature)).ToList();
            var teachers = KnowledgeTransfer.Select(candidates, own.Examples.Select(e => e.Metric).ToList());
            var r = KnowledgeTransfer.Train(run.Model, run.Tokenizer, publicSet, teachers, spec.Data, s.Transfer with { Seed = Seeds.LocalTraining(spec.Seed, ctx.Round) });
            var after = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, spec.Data, s.TopK);
            ctx.Server.Log($"fedmkt round {ctx.Round}: server distilled from {r.Distilled}/{r.Examples} public examples ({r.Steps} steps, loss {r.FirstLoss:F3} → {r.LastLoss:F3}); " +
                $"aligned {candidates.Sum(c => c.Sum(x => x.Aligned))} of {candidates.Sum(c => c.Sum(x => x.Teacher.Length))} party positions");
            var next = state.With(ServerAdapter, ctx.Store.Put(run.TrainableBytes())).With(ServerLogits, ctx.Store.Put(after.ToBytes()));
            var exchange = new Exchange(DistillPhase, result.Updates.ToDictionary(u => u.Party, _ => Instruction(spec, s, new Dictionary<string, string>
            {
                [PublicArtifact] = state.Get(PublicArtifact), [ServerLogits] = next.Get(ServerLogits),
            }, publicSet.Count, s.DistilUpload), StringComparer.Ordinal));
            return new StepResult(next, exchange)
            {
                Metrics = new Dictionary<string, double>
                {
                    ["mkt.server-distilled"] = r.Distilled, ["mkt.server-loss.first"] = r.FirstLoss, ["mkt.server-loss.last"] = r.LastLoss,
                    ["mkt.server-ce"] = own.Examples.Average(e => e.Metric), ["mkt.server-ce.after"] = after.Examples.Average(e => e.Metric),
                },
            };
        }

        // Each party evaluates its own model with its latest adapter, or with the parties' average where post-fedavg made one.
        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) =>
            PartyInstruction.Of(state.Find(PartyAverage) is { } average ? new Dictionary<string, string> { [PartyAverage] = average } : new Dictionary<string, string>());

        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            using var run = OpenServer(ctx.Spec, ctx.ModelPath);
            run.LoadTrainable(ctx.Store.Read(state.Get(ServerAdapter)), "server adapter");
            run.SaveAdapter(Path.Combine(outputDir, "server-adapter"), ctx.Spec.Data);
            PeftModel.SaveMerged(run.Model, Path.Combine(outputDir, "server-merged"), ctx.ModelPath);
            // The arbiter does not hold the parties' model, so their averaged LoRA leaves as the trainable state they load.
            if (state.Find(PartyAverage) is { } average) File.WriteAllBytes(Path.Combine(outputDir, "party-average.safetensors"), ctx.Store.Read(average));
        }

        /// <summary>Σ n_k·LoRA_k / Σ n_k over the parties that distilled, n_k their private examples; a party whose tensors differ is named.</summary>
        static byte[] AveragePartyAdapters(ExchangeResult result)
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            var adapters = result.Updates.OrderBy(u => u.Party, StringComparer.Ordinal)
                .Select(u => new AdapterDelta(u.Party, (IReadOnlyDictionary<string, TorchSharp.torch.Tensor>)u.Parsed!, u.Samples)).ToList();
            try { return SafeTensors.ToBytes(AggregationStrategies.WeightedMean(adapters[0].Tensors, adapters)); }
            catch (AggregationException e)
            {
                throw new AggregationException($"fedmkt post-fedavg needs the same small model at every party: {e.Message}");
            }
        }
    }

    /// <summary>A party's own model: its folder as named in the job (a path, or a folder of that name beside job.model on its node).</summary>
    public static string ResolvePartyModel(ClientContext ctx, string name)
    {
        if (Directory.Exists(name)) return Path.GetFullPath(name);
        var sibling = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(ctx.ModelPath)) ?? ".", name);
        return Directory.Exists(sibling) ? sibling : throw new ModelFormatException($"party '{ctx.Party}': its fedmkt model '{name}' is not on this node");
    }

    /// <summary>
    /// A party's own small model as FedMKT and FDKT open it: its family's own LoRA targets (PEFT's defaults, as the
    /// parties' models need not share module names), seeded by the job, from a fresh adapter or <paramref name="adapter"/>.
    /// </summary>
    public static FineTuning OpenPartyModel(JobSpec spec, string modelPath, string? adapter)
    {
        var run = FineTuning.Open(modelPath, spec.Peft with { LoraTargets = [] }, spec.Seed);
        if (adapter is not null) run.LoadTrainable(File.ReadAllBytes(adapter), adapter);
        return run;
    }

    sealed class ClientSide : IClientAlgorithm
    {
        /// <summary>A party's adapter file after a phase of a round, in its workspace.</summary>
        static string AdapterFile(ClientContext ctx, int round, string phase) => Path.Combine(ctx.Workspace, $"fedmkt-r{round:D4}-{phase}.safetensors");

        /// <summary>The adapter to start from: the newest saved before (round, phase), distil after fit within a round.</summary>
        static string? Latest(ClientContext ctx, int round, string phase)
        {
            static int Rank(string p) => p == DistillPhase ? 1 : 0;
            return Directory.Exists(ctx.Workspace)
                ? Directory.GetFiles(ctx.Workspace, "fedmkt-r*.safetensors")
                    .Select(f => (File: f, Parts: Path.GetFileNameWithoutExtension(f).Split('-')))
                    .Where(x => x.Parts.Length == 3 && int.TryParse(x.Parts[1][1..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _))
                    .Select(x => (x.File, Round: int.Parse(x.Parts[1][1..], CultureInfo.InvariantCulture), Phase: Rank(x.Parts[2])))
                    .Where(x => x.Round < round || (x.Round == round && x.Phase < Rank(phase)))
                    .OrderBy(x => x.Round).ThenBy(x => x.Phase).Select(x => x.File).LastOrDefault()
                : null;
        }

        static FineTuning Open(ClientContext ctx, Settings s, string? adapter) => OpenPartyModel(ctx.Spec, ResolvePartyModel(ctx, s.Models[ctx.Party]), adapter);

        static void Save(FineTuning run, string path) => AtomicFile.WriteAllBytes(path, run.TrainableBytes());

        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            TorchRuntime.SetThreads(spec.Local.Threads);
            var publicSet = ReadPublic(files[PublicArtifact], spec);
            // A round starts from the parties' average where post-fedavg made one, else from this party's own latest adapter.
            using var run = Open(ctx, s, files.TryGetValue(PartyAverage, out var average) ? average : Latest(ctx, ctx.Round, exchange));
            var vocab = TokenVocabulary.Of(run.Tokenizer);
            var examples = InstructionData.ReadJsonl(ctx.TrainData, spec.Data);
            if (exchange == DistillPhase) return Distil(ctx, s, instruction, files, run, vocab, publicSet, examples.Count, new Dictionary<string, double>(), ct);
            var local = spec.Local;
            var checkpoints = FederatedComputation.CheckpointFolder(spec, ctx, ctx.Round, run.TrainableBytes());
            var r = run.Train(run.Tokenize(examples, spec.Data), new TrainOptions
            {
                Epochs = local.Epochs, MaxSteps = local.Steps > 0 ? local.Steps : null, BatchSize = local.BatchSize, LearningRate = local.LearningRate,
                WarmupRatio = local.WarmupRatio, Schedule = local.Schedule, Seed = Seeds.LocalTraining(spec.Seed, ctx.Round),
                CheckpointDir = checkpoints, CheckpointEvery = local.CheckpointEvery, Resume = checkpoints is not null,
            }, ctx.Progress, ct);
            Save(run, AdapterFile(ctx, ctx.Round, FitPhase));
            FederatedComputation.DeleteCheckpoints(checkpoints);
            var fit = new Dictionary<string, double> { ["mkt.fit-loss.first"] = r.FirstLoss, ["mkt.fit-loss.last"] = r.LastLoss };
            if (exchange == OneWayPhase) return Distil(ctx, s, instruction, files, run, vocab, publicSet, examples.Count, fit, ct);
            var block = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, spec.Data, s.TopK).ToBytes();
            return new ClientUpdate(block, r.Samples, new Dictionary<string, double>
            {
                [ClientUpdate.FirstLoss] = r.FirstLoss, [ClientUpdate.LastLoss] = r.LastLoss, [ClientUpdate.Steps] = r.Steps, ["mkt.block-bytes"] = block.Length,
            });
        }

        /// <summary>Aligns the server's block into this party's vocabulary and distils (Min-CE against its own predictions);
        /// uploads the acknowledgement, or its LoRA weighted by its private examples where the parties average.</summary>
        static ClientUpdate Distil(ClientContext ctx, Settings s, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, FineTuning run,
            TokenVocabulary vocab, List<Example> publicSet, int privateExamples, Dictionary<string, double> metrics, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var server = PublicLogits.Parse(File.ReadAllBytes(files[ServerLogits]), Limits(instruction));
            var own = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, spec.Data, 1);
            var aligned = KnowledgeTransfer.Align(server, run.Tokenizer, vocab, publicSet, spec.Data, s.Transfer.Temperature);
            var teachers = KnowledgeTransfer.Select([aligned], own.Examples.Select(e => e.Metric).ToList());
            var checkpoints = FederatedComputation.CheckpointFolder(spec, ctx, ctx.Round, run.TrainableBytes());
            var d = KnowledgeTransfer.Train(run.Model, run.Tokenizer, publicSet, teachers, spec.Data, s.Transfer with { Seed = Seeds.LocalTraining(spec.Seed, ctx.Round) }, ct,
                new AdapterStepsCheckpoints(checkpoints, spec.Local.CheckpointEvery, ctx.Progress));
            Save(run, AdapterFile(ctx, ctx.Round, DistillPhase));
            FederatedComputation.DeleteCheckpoints(checkpoints);
            metrics[ClientUpdate.FirstLoss] = d.FirstLoss;
            metrics[ClientUpdate.LastLoss] = d.LastLoss;
            metrics[ClientUpdate.Steps] = d.Steps;
            metrics["mkt.distilled"] = d.Distilled;
            metrics["mkt.aligned"] = aligned.Sum(x => x.Aligned) / (double)Math.Max(1, aligned.Sum(x => x.Teacher.Length));
            var upload = instruction.Parameters.GetValueOrDefault(UploadParameter) == UploadAdapter ? run.TrainableBytes() : Ack;
            return new ClientUpdate(upload, privateExamples, metrics);
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var s = Settings.Of(ctx.Spec);
            using var run = Open(ctx, s, files.TryGetValue(PartyAverage, out var average) ? average : Latest(ctx, int.MaxValue, FitPhase));
            return FederatedComputation.Evaluate(ctx.Spec, run, ctx.EvalData ?? ctx.TrainData, ct, ctx.Tasks);
        }
    }

    static PublicLogits.Limits Limits(PartyInstruction i) => new(int.Parse(i.Parameters[ExamplesParameter], CultureInfo.InvariantCulture),
        int.Parse(i.Parameters[MaxTokensParameter], CultureInfo.InvariantCulture), int.Parse(i.Parameters[TopKParameter], CultureInfo.InvariantCulture), 1 << 20);

    /// <summary>
    /// What the instruction asked for: a well-formed logit block for the public set, the four-byte acknowledgement, or
    /// a LoRA state (safetensors, finite values; names and shapes are matched across parties when averaged).
    /// </summary>
    sealed class Blocks : IUpdateCodec
    {
        /// <summary>Instructions without the parameter (jobs journalled before it existed) meant logits in fit, else the acknowledgement.</summary>
        static string Upload(Exchange exchange, PartyInstruction i) =>
            i.Parameters.TryGetValue(UploadParameter, out var upload) ? upload : exchange.Name == FitPhase ? UploadLogits : UploadAck;

        public long MaxBytes(Exchange exchange, UpdateLimits limits) => exchange.Instructions.Values.Select(i => Upload(exchange, i) switch
        {
            UploadAck => Ack.Length,
            UploadAdapter => limits.MaxBytes,
            _ => Math.Min(limits.MaxBytes, Limits(i).MaxBytes),
        }).DefaultIfEmpty(0).Max();

        public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
        {
            var instruction = ctx.Exchange.Instructions[ctx.Party];
            switch (Upload(ctx.Exchange, instruction))
            {
                case UploadAck:
                    return update.AsSpan().SequenceEqual(Ack) ? UpdateCheck.Accepted(null)
                        : UpdateCheck.Refused($"fedmkt: party '{ctx.Party}' answered the '{ctx.Exchange.Name}' exchange with {update.Length} unexpected bytes");
                case UploadAdapter:
                    var (tensors, problem) = UpdateValidation.Parse(update);
                    problem ??= UpdateValidation.Check(tensors!, tensors!, double.PositiveInfinity);
                    return problem is null ? UpdateCheck.Accepted(tensors) : UpdateCheck.Refused($"fedmkt: party '{ctx.Party}' sent an unusable LoRA: {problem}");
                default:
                    try { return UpdateCheck.Accepted(PublicLogits.Parse(update, Limits(instruction))); }
                    catch (FormatException e) { return UpdateCheck.Refused($"fedmkt: party '{ctx.Party}' sent a malformed logit block: {e.Message}"); }
            }
        }
    }
}
