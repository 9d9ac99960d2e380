using System.Globalization;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Algorithms.CoLlm;

/// <summary>
/// FedCoLLM: parties tune the same small model (<c>job.model</c>) with LoRA on private data; the arbiter aggregates
/// their LoRA (the FedAvg family, secure aggregation and DP allowed: the exchange is homo-peft's), then co-tunes its
/// large model (<c>job.algorithm.server-model</c>, same tokenizer, LoRA of <c>job.peft</c>) and the aggregated small
/// model by mutual distillation on a public set (<see cref="MutualDistillation"/>), and sends the distilled small-model
/// LoRA back as the next global adapter. The large model never leaves the arbiter. State: <c>global</c> (small LoRA),
/// <c>server-state</c> (server optimizer moments), <c>server-adapter</c> (large LoRA), all persisted after every round,
/// so an arbiter crash resumes with both models as they were.
/// </summary>
public sealed class FedCoLlmAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "fedcollm";
    public const string Global = HomoPeft.HomoPeftAlgorithm.Global, ServerStateArtifact = HomoPeft.HomoPeftAlgorithm.ServerStateArtifact,
        ServerAdapter = "server-adapter";
    static readonly string[] Keys = ["server-model", "public-data", "distill.steps", "distill.batch-size", "distill.max-tokens", "distill.learning-rate",
        "distill.lambda", "distill.temperature", "distill.top-k"];
    static readonly HomoPeft.HomoPeftAlgorithm Homo = new();

    public string Name => AlgorithmName;
    public bool Summable => true;
    public IServerAlgorithm Server { get; } = new ServerSide();
    /// <summary>The parties' side is homo-peft's: LoRA on private data from the global adapter, a delta up.</summary>
    public IClientAlgorithm Client => Homo.Client;
    public IUpdateCodec Codec => Homo.Codec;

    /// <summary>The job's FedCoLLM settings (defaults in reference.conf <c>fate-llm.algorithms.fedcollm</c>).</summary>
    public sealed record Settings(string ServerModel, string PublicData, MutualDistillOptions Distill)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown(Keys);
            var server = s.GetString("server-model");
            var data = s.GetString("public-data");
            if (server.Length == 0) throw new JobSpecException("job.algorithm.server-model (the arbiter's large model, same tokenizer as job.model) is required");
            if (data.Length == 0) throw new JobSpecException("job.algorithm.public-data (a public corpus JSONL on the arbiter) is required");
            var d = new MutualDistillOptions(s.GetInt("distill.steps"), s.GetInt("distill.batch-size"), s.GetInt("distill.max-tokens"),
                s.GetDouble("distill.learning-rate"), s.GetDouble("distill.lambda"), s.GetDouble("distill.temperature"),
                s.GetInt("distill.top-k"), spec.Seed);
            if (d.Steps < 0 || d.BatchSize < 1 || d.MaxTokens < 2 || d.TopK < 1)
                throw new JobSpecException($"job.algorithm.distill: steps ≥ 0, batch-size ≥ 1, max-tokens ≥ 2 and top-k ≥ 1 (got {d.Steps}, {d.BatchSize}, {d.MaxTokens}, {d.TopK})");
            foreach (var (key, v) in new[] { ("learning-rate", d.LearningRate), ("temperature", d.Temperature) })
                if (!(v > 0) || !double.IsFinite(v)) throw new JobSpecException($"job.algorithm.distill.{key} = {v} must be a positive number");
            if (!(d.Lambda >= 0)) throw new JobSpecException($"job.algorithm.distill.lambda = {d.Lambda} must be ≥ 0");
            return new Settings(server, data, d);
        }
    }

    public void Validate(JobSpec spec)
    {
        Settings.Of(spec);
        AdapterAggregation.Validate(spec);
        if (spec.Peft.Method != PeftMethod.Lora)
            throw new JobSpecException($"job.peft.method = {PeftConfig.MethodName(spec.Peft.Method)}: fedcollm co-tunes LoRA adapters on both models (use lora)");
    }

    /// <summary>The server model on the arbiter: the path as given, else a folder of that name beside the job's model (the models root).</summary>
    public static string ResolveServerModel(ServerContext ctx, string name)
    {
        if (Directory.Exists(name)) return Path.GetFullPath(name);
        var sibling = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(ctx.ModelPath))!, name);
        return Directory.Exists(sibling) ? sibling
            : throw new JobSpecException($"job {ctx.Spec.JobId}: job.algorithm.server-model '{name}' is not on the arbiter (nor beside job.model)");
    }

    static FineTuning OpenServer(JobSpec spec, string path) => FineTuning.Open(path, spec.Peft, spec.Seed + 1);

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx)
        {
            var s = Settings.Of(ctx.Spec);
            var homo = Homo.Server.Prepare(ctx);
            var server = ResolveServerModel(ctx, s.ServerModel);
            if (!File.Exists(s.PublicData)) throw new JobSpecException($"job {ctx.Spec.JobId}: job.algorithm.public-data '{s.PublicData}' is not a file on the arbiter");
            var small = TokenizerLoader.Load(ctx.ModelPath, ModelConfig.Load(Path.Combine(ctx.ModelPath, HfCheckpoint.ConfigFile)));
            var large = TokenizerLoader.Load(server, ModelConfig.Load(Path.Combine(server, HfCheckpoint.ConfigFile)));
            const string probe = "The quick brown fox jumps over the lazy dog; 12 apples, naïve café.";
            if (small.VocabSize != large.VocabSize || !small.Encode(probe).SequenceEqual(large.Encode(probe)))
                throw new JobSpecException($"job {ctx.Spec.JobId}: fedcollm needs one tokenizer: '{ctx.Spec.ModelPath}' ({small.VocabSize} tokens) and server model " +
                    $"'{s.ServerModel}' ({large.VocabSize}) tokenize differently (use fedmkt for different tokenizers)");
            using var run = OpenServer(homo.Spec, server);
            ctx.Log($"fedcollm: small model '{ctx.Spec.ModelPath}' at the parties, server model '{s.ServerModel}' ({run.Model.Config.ParameterCount():N0} parameters) " +
                $"at the arbiter; {s.Distill.Steps} mutual-distillation steps per round on '{Path.GetFileName(s.PublicData)}'");
            return homo with { Initial = homo.Initial.With(ServerAdapter, ctx.Store.Put(run.TrainableBytes())) };
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state) => Homo.Server.BeginRound(ctx, state);

        /// <summary>FedAvg of the parties' LoRA, then co-tuning of both models; seeded by round, so a re-run after a crash gives the same models.</summary>
        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            var aggregated = AdapterAggregation.Step(ctx, state, result, Global, ServerStateArtifact);
            var s = Settings.Of(ctx.Spec);
            if (s.Distill.Steps == 0) return aggregated;
            var spec = ctx.Spec;
            TorchRuntime.SetThreads(spec.Local.Threads);
            var next = aggregated.State;
            using var small = FederatedComputation.Open(spec, ctx.Server.ModelPath);
            small.LoadTrainable(ctx.Store.Read(next.Get(Global)), "aggregated small-model adapter");
            using var large = OpenServer(spec, ResolveServerModel(ctx.Server, s.ServerModel));
            large.LoadTrainable(ctx.Store.Read(next.Get(ServerAdapter)), "server adapter");
            var texts = TokenizerTraining.ReadCorpus(s.PublicData);
            var r = MutualDistillation.Run(small.Model, large.Model, small.Tokenizer, texts, s.Distill with { Seed = Seeds.LocalTraining(spec.Seed, ctx.Round) });
            ctx.Server.Log($"fedcollm round {ctx.Round}: {r.Steps} co-tuning steps in {r.Seconds:F0} s; KL(large ‖ small) {r.FirstKdSmall:F3} → {r.LastKdSmall:F3}, " +
                $"KL(small ‖ large) {r.FirstKdLarge:F3} → {r.LastKdLarge:F3}");
            next = next.With(Global, ctx.Store.Put(small.TrainableBytes())).With(ServerAdapter, ctx.Store.Put(large.TrainableBytes()));
            var metrics = new Dictionary<string, double>(aggregated.Metrics)
            {
                ["collm.kd-small.first"] = r.FirstKdSmall, ["collm.kd-small.last"] = r.LastKdSmall,
                ["collm.kd-large.first"] = r.FirstKdLarge, ["collm.kd-large.last"] = r.LastKdLarge, ["collm.seconds"] = r.Seconds,
            };
            return aggregated with { State = next, Metrics = metrics };
        }

        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) => Homo.Server.Evaluation(ctx, state)!;

        /// <summary>The small model's adapter (and merged model) as homo-peft writes them, plus the server model's adapter and merged model.</summary>
        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            Homo.Server.Finalize(ctx, state, outputDir);
            var server = ResolveServerModel(ctx, Settings.Of(ctx.Spec).ServerModel);
            using var run = OpenServer(ctx.Spec, server);
            run.LoadTrainable(ctx.Store.Read(state.Get(ServerAdapter)), "server adapter");
            run.SaveAdapter(Path.Combine(outputDir, "server-adapter"), ctx.Spec.Data);
            PeftModel.SaveMerged(run.Model, Path.Combine(outputDir, "server-merged"), server);
        }
    }
}
