using System.Globalization;
using System.Text;
using FateLlm.Training.Data;
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
/// <c>server-adapter</c>, <c>server-logits</c>. Not summable.
/// </summary>
public sealed class FedMktAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "fedmkt";
    public const string PublicArtifact = "public", ServerAdapter = "server-adapter", ServerLogits = "server-logits", FitPhase = "fit", DistillPhase = "distill";
    const string PartyModels = "party-models.";
    const string ExamplesParameter = "examples", MaxTokensParameter = "max-tokens", TopKParameter = "top-k";
    static readonly string[] Keys = ["public-data", "public-limit", "top-k", "alpha", "temperature", "public-epochs", "learning-rate", "batch-size"];
    static readonly byte[] Ack = "MKA1"u8.ToArray();

    public string Name => AlgorithmName;
    public bool Summable => false;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new Blocks();

    public sealed record Settings(string PublicData, int PublicLimit, int TopK, IReadOnlyDictionary<string, string> Models, TransferOptions Transfer)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown([.. Keys, .. spec.Parties.Select(p => PartyModels + p.Org)]);
            var models = spec.Parties.ToDictionary(p => p.Org, p => s.GetString(PartyModels + p.Org, ""));
            if (models.FirstOrDefault(m => m.Value.Length == 0) is { Key: { } missing })
                throw new JobSpecException($"job.algorithm.party-models.{missing}: party '{missing}' needs its small model (a folder on its node)");
            var data = s.GetString("public-data", "");
            if (data.Length == 0) throw new JobSpecException("job.algorithm.public-data (a public instruction JSONL on the arbiter) is required");
            var o = new TransferOptions(s.GetDouble("alpha", 0.9), s.GetDouble("temperature", 1.0), s.GetInt("public-epochs", 1), s.GetInt("batch-size", 8),
                s.GetDouble("learning-rate", 5e-4), spec.Seed);
            var r = new Settings(data, s.GetInt("public-limit", 64), s.GetInt("top-k", 128), models, o);
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

    static PartyInstruction Instruction(JobSpec spec, Settings s, IReadOnlyDictionary<string, string> downloads, int examples) =>
        PartyInstruction.Of(downloads, new Dictionary<string, string>
        {
            [ExamplesParameter] = I(examples), [MaxTokensParameter] = I(spec.Data.MaxTotalTokens), [TopKParameter] = I(s.TopK),
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
                $"{examples.Count} public examples, top-{s.TopK} logits; parties: {string.Join(", ", s.Models.Select(m => $"{m.Key} → {m.Value}"))}");
            return new Preparation(spec with { ModelDigest = HfCheckpoint.WeightsDigest(ctx.ModelPath) },
                AlgorithmState.Of((PublicArtifact, ctx.Store.Put(Encoding.UTF8.GetBytes(jsonl))), (ServerAdapter, ctx.Store.Put(run.TrainableBytes()))));
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state)
        {
            var s = Settings.Of(ctx.Spec);
            var count = ReadPublic(ctx.Store.PathOf(state.Get(PublicArtifact)), ctx.Spec).Count;
            return Exchange.Broadcast(FitPhase, ctx.Participants, Instruction(ctx.Spec, s, new Dictionary<string, string> { [PublicArtifact] = state.Get(PublicArtifact) }, count));
        }

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            if (result.Exchange.Name == DistillPhase)
                return new StepResult(state, null) { Metrics = new Dictionary<string, double> { ["mkt.parties-distilled"] = result.Updates.Count } };
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
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
            }, publicSet.Count), StringComparer.Ordinal));
            return new StepResult(next, exchange)
            {
                Metrics = new Dictionary<string, double>
                {
                    ["mkt.server-distilled"] = r.Distilled, ["mkt.server-loss.first"] = r.FirstLoss, ["mkt.server-loss.last"] = r.LastLoss,
                    ["mkt.server-ce"] = own.Examples.Average(e => e.Metric), ["mkt.server-ce.after"] = after.Examples.Average(e => e.Metric),
                },
            };
        }

        // Each party evaluates its own model with its latest adapter (nothing to download).
        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) => PartyInstruction.Of(new Dictionary<string, string>());

        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            using var run = OpenServer(ctx.Spec, ctx.ModelPath);
            run.LoadTrainable(ctx.Store.Read(state.Get(ServerAdapter)), "server adapter");
            run.SaveAdapter(Path.Combine(outputDir, "server-adapter"), ctx.Spec.Data);
            PeftModel.MergeLora(run.Model);
            HfCheckpoint.Save(run.Model, Path.Combine(outputDir, "server-merged"));
            TokenizerLoader.CopyFiles(ctx.ModelPath, Path.Combine(outputDir, "server-merged"));
        }
    }

    /// <summary>A party's own model: its folder as named in the job (a path, or a folder of that name beside job.model on its node).</summary>
    public static string ResolvePartyModel(ClientContext ctx, string name)
    {
        if (Directory.Exists(name)) return Path.GetFullPath(name);
        var sibling = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(ctx.ModelPath)) ?? ".", name);
        return Directory.Exists(sibling) ? sibling : throw new ModelFormatException($"party '{ctx.Party}': its fedmkt model '{name}' is not on this node");
    }

    sealed class ClientSide : IClientAlgorithm
    {
        /// <summary>A party's adapter file after a phase of a round, in its workspace.</summary>
        static string AdapterFile(ClientContext ctx, int round, string phase) => Path.Combine(ctx.Workspace, $"fedmkt-r{round:D4}-{phase}.safetensors");

        /// <summary>The adapter to start from: the newest saved before (round, phase), distil after fit within a round.</summary>
        static string? Latest(ClientContext ctx, int round, string phase)
        {
            static int Rank(string p) => p == FitPhase ? 0 : 1;
            return Directory.Exists(ctx.Workspace)
                ? Directory.GetFiles(ctx.Workspace, "fedmkt-r*.safetensors")
                    .Select(f => (File: f, Parts: Path.GetFileNameWithoutExtension(f).Split('-')))
                    .Where(x => x.Parts.Length == 3 && int.TryParse(x.Parts[1][1..], out _))
                    .Select(x => (x.File, Round: int.Parse(x.Parts[1][1..], CultureInfo.InvariantCulture), Phase: Rank(x.Parts[2])))
                    .Where(x => x.Round < round || (x.Round == round && x.Phase < Rank(phase)))
                    .OrderBy(x => x.Round).ThenBy(x => x.Phase).Select(x => x.File).LastOrDefault()
                : null;
        }

        static FineTuning Open(ClientContext ctx, Settings s, string? adapter)
        {
            // Each family's own LoRA targets (PEFT's defaults): the parties' models need not share module names.
            var run = FineTuning.Open(ResolvePartyModel(ctx, s.Models[ctx.Party]), ctx.Spec.Peft with { LoraTargets = [] }, ctx.Spec.Seed);
            if (adapter is not null) run.LoadTrainable(File.ReadAllBytes(adapter), adapter);
            return run;
        }

        static void Save(FineTuning run, string path)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path + ".tmp", run.TrainableBytes());
            File.Move(path + ".tmp", path, overwrite: true);
        }

        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            TorchRuntime.SetThreads(spec.Local.Threads);
            var publicSet = ReadPublic(files[PublicArtifact], spec);
            using var run = Open(ctx, s, Latest(ctx, ctx.Round, exchange));
            var vocab = TokenVocabulary.Of(run.Tokenizer);
            if (exchange == DistillPhase)
            {
                var server = PublicLogits.Parse(File.ReadAllBytes(files[ServerLogits]), Limits(instruction));
                var own = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, spec.Data, 1);
                var aligned = KnowledgeTransfer.Align(server, run.Tokenizer, vocab, publicSet, spec.Data, s.Transfer.Temperature);
                var teachers = KnowledgeTransfer.Select([aligned], own.Examples.Select(e => e.Metric).ToList());
                var d = KnowledgeTransfer.Train(run.Model, run.Tokenizer, publicSet, teachers, spec.Data, s.Transfer with { Seed = Seeds.LocalTraining(spec.Seed, ctx.Round) }, ct);
                Save(run, AdapterFile(ctx, ctx.Round, DistillPhase));
                return new ClientUpdate(Ack, publicSet.Count, new Dictionary<string, double>
                {
                    [ClientUpdate.FirstLoss] = d.FirstLoss, [ClientUpdate.LastLoss] = d.LastLoss, [ClientUpdate.Steps] = d.Steps, ["mkt.distilled"] = d.Distilled,
                    ["mkt.aligned"] = aligned.Sum(x => x.Aligned) / (double)Math.Max(1, aligned.Sum(x => x.Teacher.Length)),
                });
            }
            var local = spec.Local;
            var examples = InstructionData.ReadJsonl(ctx.TrainData, spec.Data);
            var r = run.Train(run.Tokenize(examples, spec.Data), new TrainOptions
            {
                Epochs = local.Epochs, MaxSteps = local.Steps > 0 ? local.Steps : null, BatchSize = local.BatchSize, LearningRate = local.LearningRate,
                WarmupRatio = local.WarmupRatio, Schedule = local.Schedule, Seed = Seeds.LocalTraining(spec.Seed, ctx.Round),
            }, ct: ct);
            Save(run, AdapterFile(ctx, ctx.Round, FitPhase));
            var block = KnowledgeTransfer.Compute(run.Model, run.Tokenizer, vocab, publicSet, spec.Data, s.TopK).ToBytes();
            return new ClientUpdate(block, r.Samples, new Dictionary<string, double>
            {
                [ClientUpdate.FirstLoss] = r.FirstLoss, [ClientUpdate.LastLoss] = r.LastLoss, [ClientUpdate.Steps] = r.Steps, ["mkt.block-bytes"] = block.Length,
            });
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var s = Settings.Of(ctx.Spec);
            using var run = Open(ctx, s, Latest(ctx, int.MaxValue, FitPhase));
            return FederatedComputation.Evaluate(ctx.Spec, run, ctx.EvalData ?? ctx.TrainData, ct);
        }
    }

    static PublicLogits.Limits Limits(PartyInstruction i) => new(int.Parse(i.Parameters[ExamplesParameter], CultureInfo.InvariantCulture),
        int.Parse(i.Parameters[MaxTokensParameter], CultureInfo.InvariantCulture), int.Parse(i.Parameters[TopKParameter], CultureInfo.InvariantCulture), 1 << 20);

    /// <summary>A fit update must be a well-formed logit block for the public set; a distil update the four-byte acknowledgement.</summary>
    sealed class Blocks : IUpdateCodec
    {
        public long MaxBytes(Exchange exchange, UpdateLimits limits) =>
            exchange.Name == DistillPhase ? Ack.Length : Math.Min(limits.MaxBytes, exchange.Instructions.Values.Select(i => Limits(i).MaxBytes).DefaultIfEmpty(0).Max());

        public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
        {
            if (ctx.Exchange.Name == DistillPhase)
                return update.AsSpan().SequenceEqual(Ack) ? UpdateCheck.Accepted(null) : UpdateCheck.Refused($"fedmkt: party '{ctx.Party}' answered the distil phase with {update.Length} unexpected bytes");
            try { return UpdateCheck.Accepted(PublicLogits.Parse(update, Limits(ctx.Exchange.Instructions[ctx.Party]))); }
            catch (FormatException e) { return UpdateCheck.Refused($"fedmkt: party '{ctx.Party}' sent a malformed logit block: {e.Message}"); }
        }
    }
}
