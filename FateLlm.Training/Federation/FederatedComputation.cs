using System.Diagnostics;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Evaluation.Harness;
using FateLlm.Training.IO;
using FateLlm.Training.Ipr;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Privacy;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Federation;

/// <summary>
/// The numeric work of a PEFT federation, as plain functions over safetensors bytes so plug-ins and actors only
/// orchestrate: the initial global adapter, a party's local round, evaluation and export.
/// </summary>
public static class FederatedComputation
{
    /// <summary>
    /// The round-0 global adapter: PEFT applied to the base model with the job's seed, as <see cref="OpenPrivate"/> would
    /// give it, from the config and the weights' headers: of the base, only tensors that train (FedIPR's norm scales,
    /// every weight under full fine-tuning) are read, so an arbiter of a LoRA job never loads the model.
    /// </summary>
    public static byte[] InitialAdapter(JobSpec spec, string modelPath)
    {
        using var scope = NewDisposeScope();
        using var model = AdaptedSkeleton(spec, modelPath);
        var trainedBase = model.BaseParameters().Where(p => p.Param.requires_grad).Select(p => p.Name).ToHashSet();
        if (trainedBase.Count > 0) HfCheckpoint.ReadTensors(model, modelPath, trainedBase);
        return SafeTensors.ToBytes(PeftModel.TrainableState(model));
    }

    /// <summary>
    /// The job's base model with its PEFT method applied and, under FedIPR, the watermarked norm scales trainable: a
    /// node's resident copy when one is idle (<see cref="ResidentModels"/>), so every caller loads its trainable state.
    /// </summary>
    public static FineTuning Open(JobSpec spec, string modelPath) =>
        ResidentModels.Shared.Open(modelPath, ResidentKey(spec, modelPath), () => OpenPrivate(spec, modelPath));

    /// <summary>A copy of the job's model of the caller's own (seeded as the job says), for work that changes the base (merging).</summary>
    public static FineTuning OpenPrivate(JobSpec spec, string modelPath) =>
        FineTuning.Open(modelPath, spec.Peft, spec.Seed, m => MakeTrainable(m, spec));

    /// <summary>The job's model as <see cref="OpenPrivate"/> makes it (seeded, PEFT applied), on a skeleton of unread weights.</summary>
    static CausalLm AdaptedSkeleton(JobSpec spec, string modelPath)
    {
        var model = HfCheckpoint.Skeleton(modelPath, spec.Peft.BaseDtypeFor(modelPath));
        model.Randomness.manual_seed(spec.Seed);
        MakeTrainable(model, spec);
        return model;
    }

    static void MakeTrainable(CausalLm model, JobSpec spec)
    {
        PeftModel.Apply(model, spec.Peft);
        WatermarkSites.MakeTrainable(model, spec);
    }

    // What a lent copy carries: the folder (its tokenizer files and path come with the copy, so two folders holding the
    // same weights are not interchangeable), the weights, the PEFT settings (adapter layers, base dtype) and FedIPR's sites.
    static string ResidentKey(JobSpec spec, string modelPath) =>
        $"{Path.GetFullPath(modelPath)}|{WeightsDigest.Like(modelPath, spec.ModelDigest)}|{System.Text.Json.JsonSerializer.Serialize(spec.Peft)}|{spec.Ipr.Enabled}:{spec.Ipr.Blocks}";

    /// <summary>
    /// Verifies the local copy of the base model is the one the job names (the digest of its weight files in the job's
    /// digest's algorithm, hashed once per file version); returns the seconds it took.
    /// </summary>
    public static double VerifyModel(JobSpec spec, string modelPath, string who)
    {
        var sw = Stopwatch.StartNew();
        var digest = WeightsDigest.Like(modelPath, spec.ModelDigest);
        if (digest != spec.ModelDigest)
            throw new ModelFormatException($"{who}: base model '{modelPath}' has weights digest {digest[..12]}…, the job expects {spec.ModelDigest[..12]}…");
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// One party's round: start from the global adapter, evaluate it on the party's dev data (if any), train on the
    /// party's data, and return Δ = θ_local − θ_global as safetensors bytes.
    /// </summary>
    public static LocalRoundResult LocalRound(JobSpec spec, string modelPath, byte[] globalAdapter, string trainData, string? evalData, int round, CancellationToken ct)
    {
        using var run = Open(spec, modelPath);
        return LocalRound(spec, run, globalAdapter, trainData, evalData, round, ct);
    }

    /// <summary>
    /// The same round on a model a plug-in opened itself (its own trainable parameters), optionally embedding the
    /// party's FedIPR watermark (its hinge step and its triggers). On a party's node (<paramref name="party"/>) the
    /// round reports its steps to <see cref="ClientContext.Progress"/> and, with <c>local.checkpoint-every</c>,
    /// checkpoints in the party's workspace: a party killed at step k and asked again resumes from its last checkpoint
    /// and computes the same update bit for bit.
    /// </summary>
    public static LocalRoundResult LocalRound(JobSpec spec, FineTuning run, byte[] globalAdapter, string trainData, string? evalData, int round, CancellationToken ct,
        PartyWatermark? watermark = null, ClientContext? party = null)
    {
        var local = spec.Local;
        var examples = run.Tokenize(InstructionData.ReadJsonl(trainData, spec.Data), spec.Data);
        // DP-SGD's round: σ (solved for the job's target ε, or as given) and the party's ε with this round, refused past the target.
        var dp = local.DpSgd.Enabled ? DpSgdLedger.Plan(spec, party?.Workspace, party?.Party ?? "local", round, BlobStore.Digest(globalAdapter), examples.Count) : null;
        var checkpoints = dp is null ? CheckpointFolder(spec, party, round, globalAdapter) : null;
        // Under DP-SGD only the noised update leaves the party: its losses on its own examples stay home, so no dev pass runs.
        var result = DeltaRound(spec, run, globalAdapter, dp is null ? evalData : null, party, ct, global =>
        {
            var options = new TrainOptions
            {
                Epochs = local.Epochs, MaxSteps = local.Steps > 0 ? local.Steps : null, BatchSize = local.BatchSize, LearningRate = local.LearningRate,
                WarmupRatio = local.WarmupRatio, Schedule = local.Schedule, Seed = Seeds.LocalTraining(spec.Seed, round),
                ProximalMu = local.FedProxMu, ProximalReference = local.FedProxMu > 0 ? global : null,
                CheckpointDir = checkpoints, CheckpointEvery = local.CheckpointEvery, Resume = checkpoints is not null, Private = dp?.Step,
            };
            if (watermark is not null) options = watermark.Apply(options, run, spec);
            var trained = run.Train(examples, options, party?.Progress, ct);
            return (trained.Samples, trained.Steps, trained.FirstLoss, trained.LastLoss);
        });
        DeleteCheckpoints(checkpoints);
        return dp is null ? result : result with { Privacy = dp.Spent, FirstLoss = double.NaN, LastLoss = double.NaN };
    }

    /// <summary>
    /// Where a party's round keeps its local checkpoints (null off a party's node or with <c>local.checkpoint-every = 0</c>):
    /// keyed by the round's starting state, so a checkpoint is only ever resumed into the same computation.
    /// </summary>
    public static string? CheckpointFolder(JobSpec spec, ClientContext? party, int round, byte[] globalAdapter) =>
        party is not null && spec.Local.CheckpointEvery > 0
            ? Path.Combine(party.Workspace, "checkpoints", party.Party, $"{spec.JobId}-r{round}-{ContentDigest.Stem(BlobStore.Digest(globalAdapter))[..16]}")
            : null;

    /// <summary>A finished round leaves no checkpoint behind.</summary>
    public static void DeleteCheckpoints(string? folder)
    {
        if (folder is not null && Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
    }

    /// <summary>
    /// What every round that uploads an adapter delta shares, around the plug-in's own training: the global adapter
    /// loaded into the model, the dev loss before training, then <paramref name="train"/> (given the global state), then
    /// the delta from the global state. Seconds cover the whole round. On a party's node (<paramref name="party"/>), in
    /// the rounds <c>evaluation.every</c> names, the job's evaluation tasks run on the global state beside the dev loss.
    /// </summary>
    public static LocalRoundResult DeltaRound(JobSpec spec, FineTuning run, byte[] globalAdapter, string? evalData, ClientContext? party, CancellationToken ct,
        Func<IReadOnlyDictionary<string, Tensor>, (long Samples, int Steps, double FirstLoss, double LastLoss)> train)
    {
        var sw = Stopwatch.StartNew();
        TorchRuntime.SetThreads(spec.Local.Threads);
        var dev = evalData is null ? null : InstructionData.ReadJsonl(evalData, spec.Data);
        if (dev is not null && spec.Local.DevLimit > 0) dev = dev.Take(spec.Local.DevLimit).ToList();
        using var scope = NewDisposeScope();
        var global = SafeTensors.FromBytes(globalAdapter, "global adapter");
        PeftModel.LoadTrainableState(run.Model, global, "global adapter");
        var evalStart = sw.Elapsed;
        // Batched as the final evaluation is: no gradients, so a training batch of 1 need not make it 16 passes.
        double? evalLoss = dev is null ? null : run.Loss(run.Tokenize(dev, spec.Data), Math.Max(8, spec.Local.BatchSize));
        var tasks = party is not null && spec.Evaluation.Every > 0 && party.Round % spec.Evaluation.Every == 0 ? RunTasks(spec, run, party.Tasks, ct) : [];
        var trainStart = sw.Elapsed;
        var r = train(global);
        var trained = sw.Elapsed;
        var delta = PeftModel.TrainableState(run.Model).ToDictionary(kv => kv.Key, kv => kv.Value.sub(global[kv.Key]));
        return new LocalRoundResult(SafeTensors.ToBytes(delta), r.Samples, r.Steps, r.FirstLoss, r.LastLoss, evalLoss, sw.Elapsed.TotalSeconds)
        {
            LoadSeconds = run.LoadSeconds, EvalSeconds = (trainStart - evalStart).TotalSeconds, TrainSeconds = (trained - trainStart).TotalSeconds,
            Tasks = tasks,
        };
    }

    public static EvaluationResult Evaluate(JobSpec spec, string modelPath, byte[] adapter, string data, CancellationToken ct = default, TaskSources? tasks = null)
    {
        using var run = Open(spec, modelPath);
        return Evaluate(spec, run, adapter, data, ct, tasks);
    }

    public static EvaluationResult Evaluate(JobSpec spec, FineTuning run, byte[] adapter, string data, CancellationToken ct = default, TaskSources? tasks = null)
    {
        run.LoadTrainable(adapter, "global adapter");
        return Evaluate(spec, run, data, ct, tasks);
    }

    /// <summary>
    /// The job's evaluation of a model as it stands: loss, generation scores on up to <c>evaluation.limit</c> examples,
    /// and the job's <c>evaluation.tasks</c> found through <paramref name="tasks"/>.
    /// </summary>
    public static EvaluationResult Evaluate(JobSpec spec, FineTuning run, string data, CancellationToken ct = default, TaskSources? tasks = null)
    {
        TorchRuntime.SetThreads(spec.Local.Threads);
        var examples = InstructionData.ReadJsonl(data, spec.Data);
        ct.ThrowIfCancellationRequested();
        var report = run.Evaluate(examples, spec.Data, new EvalOptions
        {
            Limit = spec.Evaluation.Limit, BatchSize = Math.Max(8, spec.Local.BatchSize), Sampling = new SamplingOptions { MaxNewTokens = spec.Evaluation.MaxNewTokens },
        });
        var s = report.Scores;
        return new EvaluationResult(report.Loss, report.Perplexity, s?.Rouge1, s?.Rouge2, s?.RougeL, s?.Bleu4, s?.Samples ?? 0)
        {
            Tasks = RunTasks(spec, run, tasks, ct),
        };
    }

    /// <summary>The job's evaluation tasks on the model as it stands; none when the job names none.</summary>
    public static IReadOnlyList<TaskScore> RunTasks(JobSpec spec, FineTuning run, TaskSources? sources, CancellationToken ct)
    {
        if (spec.Evaluation.Tasks.Count == 0) return [];
        if (sources is null) throw new InvalidOperationException($"job {spec.JobId} names evaluation tasks ({string.Join(", ", spec.Evaluation.Tasks)}) but this node has no task sources");
        var options = new HarnessOptions
        {
            BatchSize = Math.Max(8, spec.Local.BatchSize), Limit = spec.Evaluation.TaskLimit > 0 ? spec.Evaluation.TaskLimit : null,
        };
        var scores = new List<TaskScore>();
        foreach (var task in sources.Resolve(spec.Evaluation.Tasks, spec.Evaluation.MaxNewTokens))
        {
            ct.ThrowIfCancellationRequested();
            var r = TaskEvaluation.Run(run.Model, run.Tokenizer, task, options);
            scores.Add(new TaskScore(task.Task, r.Effective, r.Metrics.ToDictionary(kv => kv.Key, kv => kv.Value.Value),
                r.Metrics.Where(kv => kv.Value.StdErr is not null).ToDictionary(kv => kv.Key, kv => kv.Value.StdErr!.Value)));
        }
        return scores;
    }

    /// <summary>
    /// Writes a global adapter as a HF PEFT adapter folder (a full checkpoint for full fine-tuning) and, for LoRA when
    /// <c>job.export.merged</c> says so, merged into the base as a plain HF checkpoint in <paramref name="mergedFolder"/>.
    /// The base is never loaded whole: the adapter goes onto a skeleton, and the merge streams the base shard by shard.
    /// </summary>
    public static void ExportAdapter(JobSpec spec, string modelPath, byte[] adapter, string folder, string? mergedFolder = null)
    {
        using var scope = NewDisposeScope();
        using var model = AdaptedSkeleton(spec, modelPath);
        PeftModel.LoadTrainableState(model, SafeTensors.FromBytes(adapter, "global adapter"), "global adapter");
        AdapterFolder.Save(model, spec.Peft, folder, modelPath);
        AdapterFolder.SaveDataOptions(folder, spec.Data);
        if (mergedFolder is not null && spec.Peft.Method == PeftMethod.Lora && spec.Export.WritesMerged(modelPath))
            MergedCheckpoint.Write(model, modelPath, mergedFolder);
    }
}
