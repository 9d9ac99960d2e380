using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Ipr;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.Offsite;

/// <summary>
/// FedOST / FedOST+ (offsite tuning): the arbiter keeps the full model and sends each party a sub-model of adapter
/// blocks around a frozen emulator (<see cref="EmulatorPlan"/>); parties train only the adapters (fully, or LoRA on
/// them) and upload only adapter deltas, which the FedAvg family aggregates every round (FedOST+; with one party it is
/// FedOST). Finalize plugs the aggregated adapters into the full model. Parties never need the full model.
/// State: <c>submodel</c> (the download), <c>global</c> (adapter tensors, sub-model names), <c>server-state</c>.
/// </summary>
public sealed class OffsiteAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "offsite";
    public const string Global = AlgorithmState.Global, SubModelArtifact = "submodel", ServerStateArtifact = "server-state";
    static readonly string[] Keys = ["bottom", "top", "emulator", "adapters", "export-emulator", "distill.steps", "distill.data", "distill.batch-size",
        "distill.max-tokens", "distill.learning-rate", "distill.lm-weight", "distill.kd-weight"];

    public string Name => AlgorithmName;
    public bool Summable => true;
    public bool EvaluatesInRounds => true;
    public bool Watermarkable => true;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new TensorUpdateCodec();

    /// <summary>The job's offsite settings (defaults in reference.conf <c>fate-llm.algorithms.offsite</c>).</summary>
    public sealed record Settings(int Bottom, int Top, int Emulator, bool LoraAdapters, bool ExportEmulator, DistillOptions Distill)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown(Keys);
            var adapters = s.GetString("adapters");
            if (adapters is not ("full" or "lora"))
                throw new JobSpecException($"job.algorithm.adapters = '{adapters}' must be full (train the adapter blocks) or lora (LoRA on them)");
            var distill = new DistillOptions(s.GetInt("distill.steps"), s.GetString("distill.data") is { Length: > 0 } d ? d : null,
                s.GetInt("distill.batch-size"), s.GetInt("distill.max-tokens"), s.GetDouble("distill.learning-rate"),
                s.GetDouble("distill.lm-weight"), s.GetDouble("distill.kd-weight"), spec.Seed);
            if (distill.Steps < 0 || distill.BatchSize < 1 || distill.MaxTokens < 2)
                throw new JobSpecException($"job.algorithm.distill: steps ≥ 0, batch-size ≥ 1 and max-tokens ≥ 2 (got {distill.Steps}, {distill.BatchSize}, {distill.MaxTokens})");
            if (distill.Enabled && distill.Data is null)
                throw new JobSpecException($"job.algorithm.distill.data (a public corpus JSONL on the arbiter) is required when distill.steps = {distill.Steps}");
            return new Settings(s.GetInt("bottom"), s.GetInt("top"), s.GetInt("emulator"), adapters == "lora", s.GetBool("export-emulator"), distill);
        }

        public EmulatorPlan Plan(int layers) => EmulatorPlan.Choose(layers, Bottom, Top, Emulator);
    }

    public void Validate(JobSpec spec)
    {
        var s = Settings.Of(spec);
        // The block count is the arbiter's model's; here only what no model allows is refused (Prepare checks e against the middle).
        s.Plan(1 << 20);
        AdapterAggregation.Validate(spec);
        if (spec.Peft.Method != PeftMethod.Lora && s.LoraAdapters)
            throw new JobSpecException($"job.algorithm.adapters = lora needs job.peft.method = lora (its rank, alpha and targets), not {PeftConfig.MethodName(spec.Peft.Method)}");
        // Parties can only watermark blocks they train: the sub-model's last blocks are the top adapters.
        if (spec.Ipr.Enabled && spec.Ipr.Blocks > s.Top)
            throw new JobSpecException($"job.ipr.blocks = {spec.Ipr.Blocks} exceeds job.algorithm.top = {s.Top}: parties watermark only the top adapter blocks they train");
    }

    /// <summary>
    /// Freezes the sub-model except its adapter blocks: every tensor of those blocks (full), or LoRA on the job's targets
    /// inside them. The LoRA factors are seeded by the caller.
    /// </summary>
    public static void MakeTrainable(CausalLm model, Settings s, JobSpec spec, EmulatorPlan plan)
    {
        var peft = spec.Peft;
        var adapters = plan.AdapterSubIndices.ToHashSet();
        bool InAdapter(string name) => BlockName.Parse(name) is { } b && adapters.Contains(b.Block);
        foreach (var (name, p) in model.BaseParameters()) p.requires_grad = !s.LoraAdapters && InAdapter(name);
        WatermarkSites.MakeTrainable(model, spec);
        if (!s.LoraAdapters) return;
        var targets = PeftModel.ResolveTargets(model, peft.EffectiveTargets(model.Config)).Where(t => InAdapter(t.Path + ".weight")).ToList();
        if (targets.Count == 0)
            throw new JobSpecException($"job.peft.targets match no projection inside the adapter blocks {string.Join(", ", plan.AdapterSubIndices)}");
        foreach (var (_, proj) in targets) proj.AddLora(peft.LoraR, peft.LoraAlpha, peft.LoraDropout, model.Randomness);
    }

    static FineTuning OpenSubModel(JobSpec spec, string folder, Settings s)
    {
        var config = ModelConfig.Load(Path.Combine(folder, HfCheckpoint.ConfigFile));
        var plan = SubPlan(s);
        if (config.NumLayers != plan.Layers)
            throw new ModelFormatException($"{folder}: the sub-model has {config.NumLayers} blocks but bottom {s.Bottom} + emulator {s.Emulator} + top {s.Top} = {plan.Layers}");
        return FineTuning.Open(folder, spec.Peft with { Method = s.LoraAdapters ? PeftMethod.Lora : PeftMethod.Full }, spec.Seed,
            m => MakeTrainable(m, s, spec, plan));
    }

    /// <summary>The plan as seen inside the sub-model: b adapters, e emulator blocks, t adapters, already renumbered.</summary>
    static EmulatorPlan SubPlan(Settings s) => new(s.Bottom + s.Emulator + s.Top, Enumerable.Range(0, s.Bottom).ToArray(),
        Enumerable.Range(s.Bottom, s.Emulator).ToArray(), Enumerable.Range(s.Bottom + s.Emulator, s.Top).ToArray());

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx)
        {
            var spec = ctx.Spec;
            if (!Directory.Exists(ctx.ModelPath))
                throw new JobSpecException($"job {spec.JobId}: job.model '{spec.ModelPath}' is not on the arbiter (nor a folder of that name under its models root)");
            var s = Settings.Of(spec);
            var full = ModelConfig.Load(Path.Combine(ctx.ModelPath, HfCheckpoint.ConfigFile));
            var plan = s.Plan(full.NumLayers);
            spec = spec with { ModelDigest = HfCheckpoint.WeightsDigest(ctx.ModelPath) };
            var bundle = s.Distill.Enabled ? Distilled(ctx, spec, s, plan) : ctx.Store.Put(SubModel.Bundle(ctx.ModelPath, plan));
            ctx.Log($"offsite: adapters = blocks [{string.Join(", ", plan.Bottom.Concat(plan.Top))}] ({(s.LoraAdapters ? "LoRA" : "full")}), emulator = blocks [{string.Join(", ", plan.Emulator)}] of {plan.Layers}; sub-model {ctx.Store.Size(bundle):N0} bytes");
            // The round-0 adapters: the sub-model's own adapter tensors (or seeded LoRA factors on them).
            var folder = SubModel.Materialize(ctx.Store.PathOf(bundle), Path.Combine(ctx.Store.Root, ".offsite-" + spec.JobId), bundle);
            byte[] initial;
            using (var run = OpenSubModel(spec, folder, s)) initial = run.TrainableBytes();
            return new Preparation(spec, AlgorithmState.Of((SubModelArtifact, bundle), (Global, ctx.Store.Put(initial))));
        }

        /// <summary>The distilled sub-model's blob, from the cache when the same model, plan, options and corpus were distilled before.</summary>
        static string Distilled(ServerContext ctx, JobSpec spec, Settings s, EmulatorPlan plan)
        {
            var o = s.Distill;
            if (!File.Exists(o.Data)) throw new JobSpecException($"job {spec.JobId}: job.algorithm.distill.data '{o.Data}' is not a file on the arbiter");
            var key = EmulatorDistillation.Key(spec.ModelDigest, plan, o);
            var index = Path.Combine(ctx.Store.Root, ".offsite-distilled", key);
            if (File.Exists(index) && File.ReadAllText(index).Trim() is var cached && ctx.Store.Has(cached))
            {
                ctx.Log($"offsite: distilled emulator reused ({key[..12]}…)");
                return cached;
            }
            var plain = Path.Combine(ctx.Store.Root, ".offsite-" + spec.JobId, "undistilled");
            Directory.CreateDirectory(plain);
            var bundlePath = Path.Combine(plain, "bundle.safetensors");
            File.WriteAllBytes(bundlePath, SubModel.Bundle(ctx.ModelPath, plan));
            var folder = SubModel.Materialize(bundlePath, plain);
            using var teacher = HfCheckpoint.Load(ctx.ModelPath);
            using var student = HfCheckpoint.Load(folder);
            var tok = TokenizerLoader.Load(ctx.ModelPath, teacher.Config);
            Runtime.TorchRuntime.SetThreads(spec.Local.Threads);
            var r = EmulatorDistillation.Run(teacher, student, plan, tok, o);
            ctx.Log($"offsite: emulator distilled in {r.Steps} steps ({r.Seconds:F0} s): loss {r.FirstLoss:F3} → {r.LastLoss:F3}, KD {r.FirstKd:F4} → {r.LastKd:F4}");
            var digest = ctx.Store.Put(SubModel.Bundle(student.Config, student.BaseParameters().ToDictionary(p => p.Name, p => (Tensor)p.Param), ctx.ModelPath));
            Directory.CreateDirectory(Path.GetDirectoryName(index)!);
            File.WriteAllText(index, digest);
            return digest;
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state) =>
            Exchange.Broadcast("fit", ctx.Participants, Downloads(state), vectorLayout: Global);

        static PartyInstruction Downloads(AlgorithmState state) => PartyInstruction.Of(new Dictionary<string, string>
        {
            [SubModelArtifact] = state.Get(SubModelArtifact), [Global] = state.Get(Global),
        });

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result) =>
            AdapterAggregation.Step(ctx, state, result, Global, ServerStateArtifact);

        // Parties can only evaluate what they hold: the emulator with the federation's adapters (the paper's "emulator fine-tuned").
        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) => Downloads(state);

        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            var s = Settings.Of(ctx.Spec);
            var global = ctx.Store.Read(state.Get(Global));
            Plug(ctx.Spec, s, ctx.ModelPath, global, Path.Combine(outputDir, "model"));
            if (!s.ExportEmulator) return;
            var emulator = SubModel.Materialize(ctx.Store.PathOf(state.Get(SubModelArtifact)), Path.Combine(ctx.Store.Root, ".offsite-" + ctx.Spec.JobId),
                state.Get(SubModelArtifact));
            using var run = OpenSubModel(ctx.Spec, emulator, s);
            run.LoadTrainable(global, "global adapters");
            if (s.LoraAdapters) PeftModel.MergeLora(run.Model);
            HfCheckpoint.Save(run.Model, Path.Combine(outputDir, "emulator"));
            TokenizerLoader.CopyFiles(emulator, Path.Combine(outputDir, "emulator"));
        }
    }

    /// <summary>
    /// The plug-in: the aggregated adapters written into the full model's blocks (LoRA merged into them), saved as an HF
    /// checkpoint with the full model's tokenizer.
    /// </summary>
    public static void Plug(JobSpec spec, Settings s, string fullModel, byte[] adapters, string outFolder)
    {
        using var scope = NewDisposeScope();
        using var model = HfCheckpoint.Load(fullModel);
        var plan = s.Plan(model.Config.NumLayers);
        var toFull = plan.FullIndices;
        string FullName(string name) => BlockName.Parse(name) is { } b ? BlockName.Format(b.Prefix, toFull[b.Block], b.Tail)
            : throw new InvalidOperationException($"adapter tensor '{name}' lies outside the blocks");
        var tensors = SafeTensors.FromBytes(adapters, "global adapters").ToDictionary(kv => FullName(kv.Key), kv => kv.Value);
        // Base tensors (whole adapter blocks, or watermarked norm scales next to LoRA) are copied; LoRA factors merged.
        var own = model.BaseParameters().ToDictionary(p => p.Name, p => p.Param);
        using (var _ = no_grad())
            foreach (var (name, t) in tensors.Where(kv => !CausalLm.IsAdapterName(kv.Key)))
                (own.TryGetValue(name, out var p) ? p : throw new InvalidOperationException($"the full model has no tensor '{name}'")).copy_(t);
        var lora = tensors.Where(kv => CausalLm.IsAdapterName(kv.Key)).ToDictionary();
        if (lora.Count > 0)
        {
            var paths = lora.Keys.Select(k => k[..k.IndexOf(".lora_", StringComparison.Ordinal)]).Distinct().ToList();
            model.Randomness.manual_seed(spec.Seed);
            PeftModel.Apply(model, spec.Peft with { LoraTargets = paths });
            PeftModel.LoadTrainableState(model, lora, "global adapters");
        }
        PeftModel.SaveMerged(model, outFolder, fullModel);
    }

    sealed class ClientSide : IClientAlgorithm
    {
        // The party's model is the downloaded sub-model; ctx.ModelPath (the full model's name) is never read.
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            ct.ThrowIfCancellationRequested();
            var folder = SubModel.Materialize(files[SubModelArtifact], ctx.Workspace, instruction.Downloads[SubModelArtifact]);
            using var run = OpenSubModel(ctx.Spec, folder, Settings.Of(ctx.Spec));
            using var watermark = PartyWatermark.Open(ctx, run);
            var r = FederatedComputation.LocalRound(ctx.Spec, run, File.ReadAllBytes(files[Global]), ctx.TrainData, ctx.EvalData, ctx.Round, ct, watermark, ctx);
            return ClientUpdate.Of(r);
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var folder = SubModel.Materialize(files[SubModelArtifact], ctx.Workspace, instruction.Downloads[SubModelArtifact]);
            using var run = OpenSubModel(ctx.Spec, folder, Settings.Of(ctx.Spec));
            return FederatedComputation.Evaluate(ctx.Spec, run, File.ReadAllBytes(files[Global]), ctx.EvalData ?? ctx.TrainData, ct, ctx.Tasks);
        }
    }
}
