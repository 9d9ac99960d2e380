using FateLlm.Training.Federation;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Algorithms.Dpo;

/// <summary>
/// Federated preference tuning with DPO: each party trains the shared LoRA policy on its private preference pairs
/// (prompt, chosen, rejected) against a reference computed before its first step, either the base with the adapter
/// disabled or the global adapter the round starts from; the parties' LoRA deltas are then aggregated as homo-peft's
/// (its server, codec, secure aggregation, DP and robust rules). Parties report the DPO loss, preference accuracy
/// (implicit reward margin above 0), the mean margin and how far the chosen and rejected answers' log-probabilities
/// drifted, after their local training; the final evaluation scores the dev pairs against the base.
/// </summary>
public sealed class DpoAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "dpo";
    /// <summary>The final evaluation's preference figures, reported beside the job's evaluation tasks.</summary>
    public const string PreferenceTask = "dpo_preferences";
    static readonly string[] Keys = ["beta", "label-smoothing", "loss", "reference", "prompt-column", "chosen-column", "rejected-column"];
    static readonly HomoPeft.HomoPeftAlgorithm Homo = new();

    public string Name => AlgorithmName;
    public bool Summable => true;
    public bool EvaluatesInRounds => true;
    public IServerAlgorithm Server => Homo.Server;
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec => Homo.Codec;

    /// <param name="BaseReference">The reference is the base (adapter disabled); otherwise the global adapter at the round's start.</param>
    public sealed record Settings(double Beta, double LabelSmoothing, PreferenceLoss Loss, bool BaseReference, string PromptColumn, string ChosenColumn, string RejectedColumn)
    {
        public static Settings Of(JobSpec spec)
        {
            var s = spec.Algorithm.Read();
            s.RefuseUnknown(Keys);
            var loss = s.GetString("loss") switch
            {
                "sigmoid" => PreferenceLoss.Sigmoid,
                "ipo" => PreferenceLoss.Ipo,
                var other => throw new JobSpecException($"job.algorithm.loss = '{other}' is not one of sigmoid, ipo"),
            };
            var reference = s.GetString("reference") switch
            {
                "base" => true,
                "round-start" => false,
                var other => throw new JobSpecException($"job.algorithm.reference = '{other}' is not one of base, round-start"),
            };
            var r = new Settings(s.GetDouble("beta"), s.GetDouble("label-smoothing"), loss, reference, s.GetString("prompt-column"), s.GetString("chosen-column"),
                s.GetString("rejected-column"));
            try { Options(spec, r, 0).Check(); }
            catch (ArgumentException e) { throw new JobSpecException($"job.algorithm: {e.Message}"); }
            foreach (var (key, column) in new[] { ("prompt-column", r.PromptColumn), ("chosen-column", r.ChosenColumn), ("rejected-column", r.RejectedColumn) })
                if (column.Length == 0) throw new JobSpecException($"job.algorithm.{key} must name a column");
            return r;
        }
    }

    static DpoOptions Options(JobSpec spec, Settings s, int round) =>
        new(s.Beta, s.LabelSmoothing, s.Loss, spec.Local.Epochs, spec.Local.BatchSize, spec.Local.LearningRate, Seeds.LocalTraining(spec.Seed, round));

    public void Validate(JobSpec spec)
    {
        Settings.Of(spec);
        AdapterAggregation.Validate(spec);
        if (spec.Peft.Method != PeftMethod.Lora)
            throw new JobSpecException($"job.peft.method = {spec.Peft.Method}: dpo trains a LoRA policy (its reference is the base with the adapter disabled)");
        if (spec.Local.FedProxMu > 0) throw new JobSpecException($"job.local.fedprox-mu = {spec.Local.FedProxMu}: dpo's loop has no proximal term (use 0)");
    }

    sealed class ClientSide : IClientAlgorithm
    {
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            var hash = FederatedComputation.VerifyModel(spec, ctx.ModelPath, $"party '{ctx.Party}'");
            var pairs = PreferenceData.Read(ctx.TrainData, s.PromptColumn, s.ChosenColumn, s.RejectedColumn);
            using var run = FederatedComputation.Open(spec, ctx.ModelPath);
            var global = File.ReadAllBytes(files[HomoPeft.HomoPeftAlgorithm.Global]);
            var folder = FederatedComputation.CheckpointFolder(spec, ctx, ctx.Round, global);
            PreferenceReport? after = null;
            // No dev loss: the party's dev file holds preference pairs, not instruction examples.
            var update = ClientUpdate.Of(FederatedComputation.DeltaRound(spec, run, global, null, ctx, ct, _ =>
            {
                var r = PreferenceOptimization.Train(run.Model, run.Tokenizer, pairs, spec.Data, Options(spec, s, ctx.Round), s.BaseReference, ct,
                    new AdapterStepsCheckpoints(folder, spec.Local.CheckpointEvery, ctx.Progress));
                after = r.After;
                return (pairs.Count, r.Steps, r.FirstLoss, r.LastLoss);
            }), hash);
            FederatedComputation.DeleteCheckpoints(folder);
            return update with
            {
                Metrics = new Dictionary<string, double>(update.Metrics)
                {
                    ["dpo.accuracy"] = after!.Accuracy, ["dpo.margin"] = after.Margin, ["dpo.drift.chosen"] = after.ChosenDrift, ["dpo.drift.rejected"] = after.RejectedDrift,
                },
            };
        }

        /// <summary>The final global adapter on the party's dev pairs (else its training pairs) against the base: DPO loss,
        /// preference accuracy, margin and drift, and the chosen answers' perplexity; then the job's evaluation tasks.</summary>
        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var spec = ctx.Spec;
            var s = Settings.Of(spec);
            FederatedComputation.VerifyModel(spec, ctx.ModelPath, $"party '{ctx.Party}'");
            var pairs = PreferenceData.Read(ctx.EvalData ?? ctx.TrainData, s.PromptColumn, s.ChosenColumn, s.RejectedColumn);
            using var run = FederatedComputation.Open(spec, ctx.ModelPath);
            run.LoadTrainable(File.ReadAllBytes(files[HomoPeft.HomoPeftAlgorithm.AdapterDownload]), "global adapter");
            var o = Options(spec, s, 0);
            var pad = run.Tokenizer.PadId ?? run.Tokenizer.EosId ?? 0;
            var batch = Math.Max(8, spec.Local.BatchSize);
            var (chosen, rejected) = PreferenceOptimization.Tokenize(pairs, run.Tokenizer, spec.Data);
            var reference = PreferenceOptimization.Reference(run.Model, chosen, rejected, pad, batch, o.Averaged, baseReference: true);
            ct.ThrowIfCancellationRequested();
            var report = PreferenceOptimization.Report(run.Model, chosen, rejected, reference, pad, batch, o);
            var perToken = PreferenceOptimization.LogProbs(run.Model, chosen, pad, batch, average: true).Average();
            var preference = new TaskScore(PreferenceTask, report.Pairs,
                new Dictionary<string, double>
                {
                    ["acc"] = report.Accuracy, ["margin"] = report.Margin, ["loss"] = report.Loss, ["chosen_drift"] = report.ChosenDrift, ["rejected_drift"] = report.RejectedDrift,
                },
                new Dictionary<string, double> { ["acc"] = Math.Sqrt(report.Accuracy * (1 - report.Accuracy) / Math.Max(1, report.Pairs - 1)) });
            return new EvaluationResult(report.Loss, Math.Exp(-perToken), null, null, null, null, report.Pairs)
            {
                Tasks = [preference, .. FederatedComputation.RunTasks(spec, run, ctx.Tasks, ct)],
            };
        }
    }
}
