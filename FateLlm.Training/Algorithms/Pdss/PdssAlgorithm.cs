using FateLlm.Training.Federation;
using FateLlm.Training.Inference;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Algorithms.Pdss;

/// <summary>
/// Federated PDSS / FedCoT: each party trains the shared small model on its private examples and the rationales a
/// remote model gave for their InferDPT-perturbed prompts (a <c>rationale</c> column, written by
/// <c>fate-llm pdss rationales</c>), with α·CE(rationale) + (1−α)·CE(answer); the parties' LoRA deltas are then
/// aggregated as homo-peft's (its server, codec, secure aggregation and DP). No FedProx term and no FedIPR
/// watermark: the multi-task loop has neither, and both are refused rather than ignored.
/// </summary>
public sealed class PdssAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "pdss";
    static readonly string[] Keys = ["alpha", "rationale-column", "rationale-template"];
    static readonly HomoPeft.HomoPeftAlgorithm Homo = new();

    public string Name => AlgorithmName;
    public bool Summable => true;
    public bool EvaluatesInRounds => true;
    public IServerAlgorithm Server => Homo.Server;
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec => Homo.Codec;

    public sealed record Settings(double Alpha, string Column, string Template)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown(Keys);
            var r = new Settings(s.GetDouble("alpha"), s.GetString("rationale-column"), s.GetString("rationale-template"));
            try { Options(spec, r, 0).Check(); }
            catch (ArgumentException e) { throw new JobSpecException($"job.algorithm: {e.Message}"); }
            if (r.Column.Length == 0) throw new JobSpecException("job.algorithm.rationale-column must name a column");
            return r;
        }
    }

    static RationaleOptions Options(JobSpec spec, Settings s, int round) => new()
    {
        Alpha = s.Alpha, Epochs = spec.Local.Epochs, BatchSize = spec.Local.BatchSize, LearningRate = spec.Local.LearningRate,
        Seed = Seeds.LocalTraining(spec.Seed, round), RationaleTemplate = s.Template,
    };

    public void Validate(JobSpec spec)
    {
        Settings.Of(spec);
        AdapterAggregation.Validate(spec);
        if (spec.Local.FedProxMu > 0) throw new JobSpecException($"job.local.fedprox-mu = {spec.Local.FedProxMu}: pdss's multi-task training has no proximal term (use 0)");
    }

    sealed class ClientSide : IClientAlgorithm
    {
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            var hash = FederatedComputation.VerifyModel(spec, ctx.ModelPath, $"party '{ctx.Party}'");
            var data = RationaleData.Read(ctx.TrainData, spec.Data, s.Column);
            using var run = FederatedComputation.Open(spec, ctx.ModelPath);
            var global = File.ReadAllBytes(files[HomoPeft.HomoPeftAlgorithm.Global]);
            var folder = FederatedComputation.CheckpointFolder(spec, ctx, ctx.Round, global);
            var update = ClientUpdate.Of(FederatedComputation.DeltaRound(spec, run, global, ctx.EvalData, ctx, ct, _ =>
            {
                var r = RationaleDistillation.Train(run.Model, run.Tokenizer, data, spec.Data, Options(spec, s, ctx.Round), ct,
                    new AdapterStepsCheckpoints(folder, spec.Local.CheckpointEvery, ctx.Progress));
                return (data.Count, r.Steps, r.FirstLoss, r.LastLoss);
            }), hash);
            FederatedComputation.DeleteCheckpoints(folder);
            return update with { Metrics = new Dictionary<string, double>(update.Metrics) { ["pdss.with-rationale"] = data.Count(e => e.Rationale.Trim().Length > 0) } };
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct) =>
            Homo.Client.Evaluate(ctx, instruction, files, ct);
    }
}
