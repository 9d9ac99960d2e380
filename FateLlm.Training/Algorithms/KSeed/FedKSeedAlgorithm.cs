using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.KSeed;

/// <summary>
/// FedKSeed / FedKSeed-Pro: full-parameter zeroth-order fine-tuning where only seeds and scalars travel. Each party
/// rebuilds the global model from the base by replaying the federation's history, runs τ two-point steps along
/// directions of K candidate seeds (drawn with the Pro probabilities, its own draw per party and round), and uploads
/// its (seed index, ĝ) pairs — 8 bytes a step. The arbiter weights parties by data share and appends the round to the
/// history, one small blob per round that every party downloads once. State: <c>kseed</c> (the manifest) and
/// <c>round-NNNN</c> per completed round. Not summable: seed indices cannot be masked or noised as a vector.
/// </summary>
public sealed class FedKSeedAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "fedkseed";
    public const string ManifestArtifact = "kseed", RoundPrefix = "round-", HistoryExtension = ".ksr";
    // What the codec checks an upload against travels in the instruction (the codec does not see the spec).
    const string StepsParameter = "steps", SeedsParameter = "seeds", MaxScalarParameter = "max-scalar";
    const long SamplingPurpose = 0x4B534545; // "KSEE"
    static readonly string[] Keys = ["seeds", "steps", "batch-size", "learning-rate", "epsilon", "pro", "pro-clip", "max-scalar"];

    public string Name => AlgorithmName;
    public bool Summable => false;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new Uploads();

    /// <summary>The job's FedKSeed settings (defaults in reference.conf <c>fate-llm.algorithms.fedkseed</c>).</summary>
    public sealed record Settings(int Seeds, int Steps, int BatchSize, double LearningRate, double Epsilon, bool Pro, double ProClip, double MaxScalar)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown(Keys);
            var r = new Settings(s.GetInt("seeds"), s.GetInt("steps"), s.GetInt("batch-size"), s.GetDouble("learning-rate"),
                s.GetDouble("epsilon"), s.GetBool("pro"), s.GetDouble("pro-clip"), s.GetDouble("max-scalar"));
            if (r.Seeds is < 1 or > 1 << 20) throw new JobSpecException($"job.algorithm.seeds = {r.Seeds} must be in [1, 1048576]");
            if (r.Steps is < 1 or > 1 << 20) throw new JobSpecException($"job.algorithm.steps = {r.Steps} must be in [1, 1048576]");
            if (r.BatchSize < 1) throw new JobSpecException($"job.algorithm.batch-size = {r.BatchSize} must be ≥ 1");
            foreach (var (key, v) in new[] { ("learning-rate", r.LearningRate), ("epsilon", r.Epsilon), ("max-scalar", r.MaxScalar) })
                if (!(v > 0) || !double.IsFinite(v)) throw new JobSpecException($"job.algorithm.{key} = {v} must be a positive number");
            if (!(r.ProClip >= 0)) throw new JobSpecException($"job.algorithm.pro-clip = {r.ProClip} must be ≥ 0 (0: no clipping)");
            return r;
        }

        public ZerothOrderOptions Local(int threads) => new(BatchSize, LearningRate, Epsilon, MaxScalar, threads);
    }

    public void Validate(JobSpec spec) => Settings.Of(spec);

    /// <summary>The rounds of a state or an instruction's downloads, in round order (their names sort by round).</summary>
    static IEnumerable<KeyValuePair<string, string>> Rounds(IReadOnlyDictionary<string, string> artifacts) =>
        artifacts.Where(a => a.Key.StartsWith(RoundPrefix, StringComparison.Ordinal)).OrderBy(a => a.Key, StringComparer.Ordinal);

    static string RoundName(int round) => RoundPrefix + round.ToString("D4", CultureInfo.InvariantCulture);

    static CausalLm LoadBase(string modelPath) => HfCheckpoint.Load(modelPath, ScalarType.Float32);

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx)
        {
            var spec = ctx.Spec;
            if (!Directory.Exists(ctx.ModelPath))
                throw new JobSpecException($"job {spec.JobId}: job.model '{ctx.Spec.ModelPath}' is not on the arbiter (nor a folder of that name under its models root)");
            var s = Settings.Of(spec);
            spec = spec with { ModelDigest = HfCheckpoint.WeightsDigest(ctx.ModelPath) };
            using var model = LoadBase(ctx.ModelPath);
            var manifest = KSeedManifest.For(ParameterLayout.Of(model), spec.Seed, s.Seeds, s.LearningRate);
            ctx.Log($"fedkseed: {manifest.Parameters:N0} parameters tuned in full, K = {s.Seeds} candidate seeds, τ = {s.Steps} steps of batch {s.BatchSize} " +
                $"per party and round; upload ≤ {ScalarUpload.MaxBytes(s.Steps):N0} bytes");
            return new Preparation(spec, AlgorithmState.Of((ManifestArtifact, ctx.Store.Put(manifest.ToBytes()))));
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state)
        {
            var s = Settings.Of(ctx.Spec);
            return Exchange.Broadcast("fit", ctx.Participants, PartyInstruction.Of(new Dictionary<string, string>(state.Artifacts), new Dictionary<string, string>
            {
                [StepsParameter] = s.Steps.ToString(CultureInfo.InvariantCulture), [SeedsParameter] = s.Seeds.ToString(CultureInfo.InvariantCulture),
                [MaxScalarParameter] = s.MaxScalar.ToString("R", CultureInfo.InvariantCulture),
            }));
        }

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            var s = Settings.Of(ctx.Spec);
            var uploads = result.Updates.Select(u => (u.Party, u.Samples, (ScalarUpload)u.Parsed!)).ToList();
            var round = RoundScalars.Aggregate(ctx.Round, uploads, s.ProClip);
            var digest = ctx.Store.Put(round.ToBytes());
            return new StepResult(state.With(RoundName(ctx.Round), digest), null)
            {
                Metrics = new Dictionary<string, double>
                {
                    ["kseed.seeds-touched"] = round.Entries.Count, ["kseed.estimates"] = uploads.Sum(u => u.Item3.Pairs.Count),
                    ["kseed.history-bytes"] = ctx.Store.Size(digest),
                },
            };
        }

        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) => PartyInstruction.Of(new Dictionary<string, string>(state.Artifacts));

        /// <summary>The tuned model (replayed from the base) as an HF checkpoint, and the history that rebuilds it anywhere.</summary>
        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            var manifestBytes = ctx.Store.Read(state.Get(ManifestArtifact));
            var manifest = KSeedManifest.Parse(manifestBytes, "fedkseed manifest");
            var history = Path.Combine(outputDir, "history");
            Directory.CreateDirectory(history);
            File.WriteAllBytes(Path.Combine(history, KSeedManifest.FileName), manifestBytes);
            var rounds = new List<RoundScalars>();
            foreach (var (name, digest) in Rounds(state.Artifacts))
            {
                var bytes = ctx.Store.Read(digest);
                rounds.Add(RoundScalars.Parse(bytes, manifest.Candidates, name));
                File.WriteAllBytes(Path.Combine(history, name + HistoryExtension), bytes);
            }
            Export(ctx.ModelPath, manifest, rounds, Path.Combine(outputDir, "model"), ctx.Spec.Local.Threads);
        }
    }

    /// <summary>Replays a history onto the base model and saves the result as an HF checkpoint with the base's tokenizer.</summary>
    public static void Export(string modelPath, KSeedManifest manifest, IReadOnlyList<RoundScalars> rounds, string folder, int threads)
    {
        using var model = LoadBase(modelPath);
        var layout = ParameterLayout.Of(model);
        manifest.Check(layout, $"model '{modelPath}'");
        var w = layout.Read();
        KSeedReplay.Replay(w, manifest, rounds, threads);
        layout.Write(w);
        HfCheckpoint.Save(model, folder);
        TokenizerLoader.CopyFiles(modelPath, folder);
    }

    /// <summary>A history folder written by a job (<c>fedkseed.json</c> and <c>round-NNNN.ksr</c> files), in round order.</summary>
    public static (KSeedManifest Manifest, List<RoundScalars> Rounds) ReadHistory(string folder)
    {
        var manifestPath = Path.Combine(folder, KSeedManifest.FileName);
        if (!File.Exists(manifestPath)) throw new FileNotFoundException($"{folder}: no {KSeedManifest.FileName} (a fedkseed job's output 'history' folder has one)");
        var manifest = KSeedManifest.Parse(File.ReadAllBytes(manifestPath), manifestPath);
        var rounds = Directory.GetFiles(folder, RoundPrefix + "*" + HistoryExtension).Order(StringComparer.Ordinal)
            .Select(f => RoundScalars.Parse(File.ReadAllBytes(f), manifest.Candidates, f)).ToList();
        for (int i = 0; i < rounds.Count; i++)
            if (rounds[i].Round != i + 1) throw new FormatException($"{folder}: round {i + 1} is missing (found round {rounds[i].Round} in its place)");
        return (manifest, rounds);
    }

    /// <summary>The federation's model on a party: the base, replayed through every round it was given (from its cache where it can).</summary>
    sealed record PartyModel(FineTuning Run, ParameterLayout Layout, float[] Weights, KSeedManifest Manifest, IReadOnlyList<RoundScalars> History,
        int Replayed, double ReplaySeconds) : IDisposable
    {
        public static PartyModel Open(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files)
        {
            FederatedComputation.VerifyModel(ctx.Spec, ctx.ModelPath, $"party '{ctx.Party}'");
            var sw = Stopwatch.StartNew();
            var manifest = KSeedManifest.Parse(File.ReadAllBytes(files[ManifestArtifact]), "fedkseed manifest");
            var rounds = Rounds(instruction.Downloads)
                .Select(r => (r.Value, RoundScalars.Parse(File.ReadAllBytes(files[r.Key]), manifest.Candidates, $"{r.Key} ({r.Value[..12]}…)"))).ToList();
            // Every base parameter trains; the model is loaded in fp32 whatever job.peft says (PEFT does not apply here).
            var run = FineTuning.Open(ctx.ModelPath, ctx.Spec.Peft with { Method = PeftMethod.Full, BaseDtype = ScalarType.Float32 }, ctx.Spec.Seed, _ => { });
            try
            {
                var layout = ParameterLayout.Of(run.Model);
                manifest.Check(layout, $"party '{ctx.Party}'");
                var (w, applied) = KSeedReplay.Rebuild(layout.Read, manifest, rounds, ctx.Workspace, ctx.Spec.Local.Threads);
                layout.Write(w);
                return new PartyModel(run, layout, w, manifest, rounds.Select(r => r.Item2).ToList(), applied, sw.Elapsed.TotalSeconds);
            }
            catch
            {
                run.Dispose();
                throw;
            }
        }

        public void Dispose() => Run.Dispose();
    }

    sealed class ClientSide : IClientAlgorithm
    {
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            ct.ThrowIfCancellationRequested();
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            TorchRuntime.SetThreads(spec.Local.Threads);
            using var model = PartyModel.Open(ctx, instruction, files);
            var examples = InstructionData.ReadJsonl(ctx.TrainData, spec.Data);
            var data = model.Run.Tokenize(examples, spec.Data);
            // Each party and round draws its own seeds (FATE-LLM's optimizers all draw the same sequence).
            var draw = Seeds.Derive(spec.Seed, SamplingPurpose, ctx.Round, PartyNumber(ctx.Party));
            var p = SeedProbabilities.Of(model.Manifest.Candidates, model.History, s.Pro);
            var seeds = SeedProbabilities.Sample(p, s.Steps, draw);
            var r = ZerothOrder.Run(model.Run.Model, model.Layout, model.Weights, data, model.Run.PadId, seeds, spec.Seed, s.Local(spec.Local.Threads),
                new SplitMix64(draw).Next(), ct);
            var metrics = new Dictionary<string, double>
            {
                [ClientUpdate.FirstLoss] = r.FirstLoss, [ClientUpdate.LastLoss] = r.LastLoss, [ClientUpdate.Steps] = r.Upload.Pairs.Count,
                ["kseed.skipped"] = r.Skipped, ["kseed.replayed-rounds"] = model.Replayed, ["kseed.replay-seconds"] = model.ReplaySeconds,
                ["kseed.step-seconds"] = r.Seconds,
            };
            return new ClientUpdate(r.Upload.ToBytes(), examples.Count, metrics);
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            TorchRuntime.SetThreads(ctx.Spec.Local.Threads);
            using var model = PartyModel.Open(ctx, instruction, files);
            return FederatedComputation.Evaluate(ctx.Spec, model.Run, ctx.EvalData ?? ctx.TrainData, ct, ctx.Tasks);
        }

        static int PartyNumber(string party) => BitConverter.ToInt32(SHA256.HashData(Encoding.UTF8.GetBytes(party)));
    }

    /// <summary>Checks an upload before the step sees it: its size bound from the steps asked, framing, seed indices, scalars.</summary>
    sealed class Uploads : IUpdateCodec
    {
        public long MaxBytes(Exchange exchange, UpdateLimits limits) => Math.Min(limits.MaxBytes, ScalarUpload.MaxBytes(StepsAsked(exchange)));

        public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
        {
            var asked = ctx.Exchange.Instructions.TryGetValue(ctx.Party, out var i) ? i.Parameters
                : throw new InvalidOperationException($"party '{ctx.Party}' was not asked in exchange '{ctx.Exchange.Name}'");
            try
            {
                return UpdateCheck.Accepted(ScalarUpload.Parse(update, Int(asked, SeedsParameter), Int(asked, StepsParameter),
                    double.Parse(asked[MaxScalarParameter], CultureInfo.InvariantCulture)));
            }
            catch (FormatException e) { return UpdateCheck.Refused($"fedkseed upload: {e.Message}"); }
        }

        static int Int(IReadOnlyDictionary<string, string> parameters, string key) => int.Parse(parameters[key], CultureInfo.InvariantCulture);

        static int StepsAsked(Exchange exchange) => exchange.Instructions.Values.Select(i => Int(i.Parameters, StepsParameter)).DefaultIfEmpty(0).Max();
    }
}
