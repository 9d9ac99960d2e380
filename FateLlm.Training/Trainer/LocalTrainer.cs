using System.Diagnostics;
using System.Text.Json;
using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Trainer;

public enum LrSchedule { Constant, Linear, Cosine }

public sealed record TrainOptions
{
    public int Epochs { get; init; } = 1;
    /// <summary>Stops after this many optimizer steps (overrides epochs when set).</summary>
    public int? MaxSteps { get; init; }
    public int BatchSize { get; init; } = 8;
    public int GradientAccumulation { get; init; } = 1;
    public double LearningRate { get; init; } = 2e-4;
    public double WeightDecay { get; init; }
    public double WarmupRatio { get; init; }
    public LrSchedule Schedule { get; init; } = LrSchedule.Linear;
    public double MaxGradNorm { get; init; } = 1.0;
    public long Seed { get; init; } = 42;
    /// <summary>FedProx μ: adds μ/2·‖w − w₀‖² over trainable tensors against <see cref="ProximalReference"/>.</summary>
    public double ProximalMu { get; init; }
    public IReadOnlyDictionary<string, Tensor>? ProximalReference { get; init; }
    /// <summary>Stops after the step during which this much wall time has passed (pretraining on a time budget).</summary>
    public TimeSpan? MaxDuration { get; init; }
    /// <summary>Folder for checkpoints of the trainable state, optimizer and position (each epoch's end, and every
    /// <see cref="CheckpointEvery"/> steps); with <see cref="Resume"/> a run continues from the latest, bit for bit.</summary>
    public string? CheckpointDir { get; init; }
    /// <summary>&gt; 0: also checkpoint every this many optimizer steps inside an epoch.</summary>
    public int CheckpointEvery { get; init; }
    public bool Resume { get; init; }
    public Device? Device { get; init; }
    /// <summary>Trainable parameters (by name) the optimizer leaves alone: they move only by <see cref="AfterStep"/> (a watermark's own update).</summary>
    public IReadOnlySet<string>? OwnUpdate { get; init; }
    /// <summary>Runs after every optimizer step.</summary>
    public Action? AfterStep { get; init; }
    /// <summary>Examples cycled into every batch, <see cref="MixInPerBatch"/> at a time (trigger examples); not counted as samples.</summary>
    public IReadOnlyList<TokenizedExample>? MixIn { get; init; }
    public int MixInPerBatch { get; init; } = 1;
    /// <summary>Example-level DP-SGD (<see cref="Privacy.DpSgd"/>) instead of plain batches; σ already solved.</summary>
    public PrivateTraining? Private { get; init; }

    public static LrSchedule ParseSchedule(string s) => s.ToLowerInvariant() switch
    {
        "constant" => LrSchedule.Constant,
        "linear" => LrSchedule.Linear,
        "cosine" => LrSchedule.Cosine,
        _ => throw new ArgumentException($"unknown schedule '{s}' (constant, linear, cosine)"),
    };
}

/// <summary>DP-SGD's step: Poisson batches at <paramref name="SamplingRate"/>, each example's gradient clipped to <paramref name="ClipNorm"/>, N(0, (σC)²) added.</summary>
public sealed record PrivateTraining(double NoiseMultiplier, double ClipNorm, double SamplingRate);

public sealed record TrainProgress(int Step, int TotalSteps, int Epoch, double Loss, double LearningRate, double TokensPerSecond, TimeSpan Elapsed)
{
    public TimeSpan Eta => Step == 0 ? TimeSpan.Zero : Elapsed / Step * (TotalSteps - Step);
}

public sealed record TrainResult(int Steps, double FirstLoss, double LastLoss, double MeanLoss, long Tokens, int Samples, TimeSpan Elapsed, int ResumedFromEpoch)
{
    /// <summary>The step of the checkpoint this run resumed from, or null for a run from the start.</summary>
    public int? ResumedAtStep { get; init; }
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? Tokens / Elapsed.TotalSeconds : 0;
}

/// <summary>
/// Local fine-tuning of a model's trainable parameters: AdamW, warmup + linear/cosine decay, gradient clipping and
/// accumulation. Deterministic on CPU for a given seed and thread count: data order and dropout are re-seeded per
/// epoch, which also makes a resumed run identical to an uninterrupted one.
/// </summary>
public sealed class LocalTrainer(CausalLm model, TrainOptions options, int padId)
{
    public TrainResult Train(IReadOnlyList<TokenizedExample> data, IProgress<TrainProgress>? progress = null, CancellationToken ct = default)
    {
        if (data.Count == 0) throw new ArgumentException("no training examples");
        if (options.Private is { } dp) return TrainPrivately(data, dp, progress, ct);
        var o = options;
        var all = PeftModel.TrainableParameters(model);
        var trainable = all.Where(p => o.OwnUpdate?.Contains(p.Name) != true).ToList();
        var own = all.Where(p => o.OwnUpdate?.Contains(p.Name) == true).Select(p => p.Param).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("the model has no trainable parameters (apply a PEFT method first)");
        var batchesPerEpoch = (data.Count + o.BatchSize - 1) / o.BatchSize;
        var stepsPerEpoch = Math.Max(1, batchesPerEpoch / o.GradientAccumulation);
        var totalSteps = o.MaxSteps ?? stepsPerEpoch * o.Epochs;
        var epochs = o.MaxSteps is int ms ? (ms + stepsPerEpoch - 1) / stepsPerEpoch : o.Epochs;
        var warmup = (int)Math.Round(o.WarmupRatio * totalSteps);
        using var optimizer = new AdamW(trainable.Select(p => p.Param), o.LearningRate, o.WeightDecay);
        using var accumulation = o.GradientAccumulation.ToScalar(); // held: HeldScalars says why
        var mixed = 0;

        int step = 0, startEpoch = 0, startBatch = 0;
        long tokens = 0;
        double first = double.NaN, last = double.NaN, sum = 0;
        int counted = 0, samples = 0;
        TrainerCheckpoint? resumed = null;
        if (o.Resume && o.CheckpointDir is string dir && TrainerCheckpoint.Latest(dir) is { } ckpt)
        {
            ckpt.Restore(model, optimizer);
            var s = ckpt.State;
            (step, mixed, first, last, sum, counted, tokens, samples) = (s.Step, s.Mixed, s.First, s.Last, s.Sum, s.Counted, s.Tokens, s.Samples);
            // An epoch's end resumes at the next epoch; a step inside one, at its next batch with the dropout stream as it was.
            (startEpoch, startBatch) = s.NextBatch >= batchesPerEpoch ? (s.Epoch + 1, 0) : (s.Epoch, s.NextBatch);
            resumed = ckpt;
        }
        TrainerState Position(int epoch, int nextBatch) => new(epoch, step, nextBatch, mixed, first, last, sum, counted, tokens, samples);

        model.train();
        var sw = Stopwatch.StartNew();
        for (int epoch = startEpoch; epoch < epochs && step < totalSteps; epoch++)
        {
            var midEpoch = epoch == startEpoch && startBatch > 0;
            if (midEpoch) resumed!.RestoreRandomness(model);
            else model.Randomness.manual_seed(o.Seed + epoch);
            var order = Enumerable.Range(0, data.Count).ToArray();
            new Random((int)(o.Seed + epoch)).Shuffle(order);
            double accumulated = 0;
            int micro = 0;
            for (int b = midEpoch ? startBatch : 0; b < batchesPerEpoch && step < totalSteps; b++)
            {
                ct.ThrowIfCancellationRequested();
                var items = order.Skip(b * o.BatchSize).Take(o.BatchSize).Select(i => data[i]).ToList();
                var batchSamples = items.Count;
                if (o.MixIn is { Count: > 0 } mix)
                    for (int m = 0; m < o.MixInPerBatch; m++) items.Add(mix[mixed++ % mix.Count]);
                using (var scope = NewDisposeScope())
                {
                    using var batch = InstructionData.Collate(items, padId, o.Device);
                    accumulated += Runtime.TorchErrors.Guard(() => $"training step {step + 1}, batch of token ids {Runtime.TorchErrors.Shape(batch.InputIds)} (largest id {batch.InputIds.max().item<long>()}, vocabulary {model.Config.VocabSize})", () =>
                    {
                        var loss = LanguageModelLoss.Compute(model, batch);
                        if (o.ProximalMu > 0 && o.ProximalReference != null)
                            loss = loss.add(ProximalTerm(trainable, o.ProximalReference, o.ProximalMu));
                        loss.div(accumulation).backward();
                        return loss.item<float>() / o.GradientAccumulation;
                    });
                    tokens += batch.Tokens;
                    samples += batchSamples;
                }
                if (++micro < o.GradientAccumulation && b < batchesPerEpoch - 1) continue;
                if (o.MaxGradNorm > 0) nn.utils.clip_grad_norm_(trainable.Select(p => p.Param), o.MaxGradNorm);
                var lr = o.LearningRate * LrFactor(o.Schedule, step, warmup, totalSteps);
                optimizer.LearningRate = lr;
                optimizer.Step();
                optimizer.ZeroGrad();
                foreach (var p in own) p.grad?.zero_();
                o.AfterStep?.Invoke();
                step++;
                var stepLoss = accumulated * o.GradientAccumulation / micro;
                if (double.IsNaN(first)) first = stepLoss;
                last = stepLoss;
                sum += stepLoss;
                counted++;
                accumulated = 0;
                micro = 0;
                if (o.CheckpointDir is not null && o.CheckpointEvery > 0 && step % o.CheckpointEvery == 0 && step < totalSteps && b + 1 < batchesPerEpoch)
                    TrainerCheckpoint.Save(o.CheckpointDir, Position(epoch, b + 1), model, optimizer);
                progress?.Report(new TrainProgress(step, totalSteps, epoch, stepLoss, lr, tokens / Math.Max(1e-9, sw.Elapsed.TotalSeconds), sw.Elapsed));
                if (o.MaxDuration is { } limit && sw.Elapsed > limit) totalSteps = step;
            }
            if (o.CheckpointDir != null) TrainerCheckpoint.Save(o.CheckpointDir, Position(epoch, batchesPerEpoch), model, optimizer);
        }
        model.eval();
        return new TrainResult(step, first, last, counted > 0 ? sum / counted : double.NaN, tokens, samples, sw.Elapsed, startEpoch)
        {
            ResumedAtStep = resumed?.State.Step,
        };
    }

    /// <summary>
    /// DP-SGD: every step a Poisson sample of the examples, one backward pass per example clipped to C, noise N(0, (σC)²)
    /// on the sum, divided by the expected batch q·N, then the optimizer's step (post-processing). Sampling, dropout and
    /// noise are seeded per step. Not with FedProx, trigger mix-ins or gradient accumulation (each would add terms whose
    /// sensitivity the clip does not bound), and a run is not resumed mid-way: a restarted round trains again from its start.
    /// </summary>
    TrainResult TrainPrivately(IReadOnlyList<TokenizedExample> data, PrivateTraining dp, IProgress<TrainProgress>? progress, CancellationToken ct)
    {
        var o = options;
        if (o.ProximalMu > 0 || o.MixIn is { Count: > 0 } || o.GradientAccumulation != 1)
            throw new InvalidOperationException("DP-SGD cannot run with FedProx, FedIPR trigger examples or gradient accumulation: their terms are not clipped per example");
        var trainable = PeftModel.TrainableParameters(model).Where(p => o.OwnUpdate?.Contains(p.Name) != true).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("the model has no trainable parameters (apply a PEFT method first)");
        var totalSteps = Privacy.DpSgd.Steps(o.MaxSteps, o.Epochs, dp.SamplingRate);
        var warmup = (int)Math.Round(o.WarmupRatio * totalSteps);
        using var optimizer = new AdamW(trainable.Select(p => p.Param), o.LearningRate, o.WeightDecay);
        var expected = dp.SamplingRate * data.Count;
        using var batchSize = expected.ToScalar(); // held: HeldScalars says why
        // Every grad allocated (a zero backward), so a step whose Poisson batch is empty still has grads to take the noise.
        void AllocateGrads()
        {
            using var scope = NewDisposeScope();
            trainable.Select(p => p.Param.sum()).Aggregate((a, b) => a + b).mul(HeldScalars.Zero).backward();
        }
        AllocateGrads();
        model.train();
        var sw = Stopwatch.StartNew();
        double first = double.NaN, last = double.NaN, sum = 0;
        int counted = 0, samples = 0;
        long tokens = 0;
        for (int step = 0; step < totalSteps; step++)
        {
            ct.ThrowIfCancellationRequested();
            var stepSeed = o.Seed * 1_000_003 + step;
            var batch = Privacy.DpSgd.PoissonSample(data.Count, dp.SamplingRate, new Random((int)(stepSeed % int.MaxValue))).Select(i => data[i]).ToList();
            model.Randomness.manual_seed(stepSeed);
            var lr = o.LearningRate * LrFactor(o.Schedule, step, warmup, totalSteps);
            using (var scope = NewDisposeScope())
            {
                var (clipped, _, loss) = Privacy.DpSgd.ClippedSum(model, batch, trainable, dp.ClipNorm, padId, o.Device);
                Privacy.DpSgd.AddNoise(clipped, dp.NoiseMultiplier * dp.ClipNorm, stepSeed);
                if (trainable.Any(p => p.Param.grad is null)) AllocateGrads();
                using (no_grad())
                    foreach (var (name, p) in trainable) p.grad!.copy_(clipped[name].div(batchSize));
                optimizer.LearningRate = lr;
                optimizer.Step();
                optimizer.ZeroGrad();
                if (batch.Count > 0)
                {
                    if (double.IsNaN(first)) first = loss;
                    (last, sum, counted) = (loss, sum + loss, counted + 1);
                }
            }
            o.AfterStep?.Invoke();
            samples += batch.Count;
            tokens += batch.Sum(e => (long)e.InputIds.Length);
            progress?.Report(new TrainProgress(step + 1, totalSteps, 0, last, lr, tokens / Math.Max(1e-9, sw.Elapsed.TotalSeconds), sw.Elapsed));
        }
        model.eval();
        return new TrainResult(totalSteps, first, last, counted > 0 ? sum / counted : double.NaN, tokens, samples, sw.Elapsed, 0);
    }

    static Tensor ProximalTerm(IReadOnlyList<(string Name, Parameter Param)> trainable, IReadOnlyDictionary<string, Tensor> reference, double mu)
    {
        Tensor? total = null;
        foreach (var (name, p) in trainable)
        {
            if (!reference.TryGetValue(name, out var w0)) throw new PeftException($"FedProx reference lacks tensor '{name}'");
            var d = p.sub(w0).pow(HeldScalars.Two).sum();
            total = total is null ? d : total.add(d);
        }
        using var half = (mu / 2).ToScalar();
        return total!.mul(half);
    }

    /// <summary>HF's schedules: linear warmup, then constant, linear decay to 0, or half-cosine to 0.</summary>
    public static double LrFactor(LrSchedule s, int step, int warmup, int total)
    {
        if (step < warmup) return (step + 1) / (double)warmup;
        var progress = total > warmup ? (step - warmup) / (double)(total - warmup) : 0;
        return s switch
        {
            LrSchedule.Constant => 1,
            LrSchedule.Linear => Math.Max(0, 1 - progress),
            _ => 0.5 * (1 + Math.Cos(Math.PI * progress)),
        };
    }
}

public static class LanguageModelLoss
{
    /// <summary>Mean next-token cross-entropy over labelled positions (labels shifted by one, -100 ignored).</summary>
    public static Tensor Compute(CausalLm model, Batch batch)
    {
        // Right padding needs no attention mask: padded positions come after every real token.
        var logits = model.Forward(batch.InputIds);
        return Shifted(logits, batch.Labels, reduction: nn.Reduction.Mean);
    }

    public static Tensor Shifted(Tensor logits, Tensor labels, nn.Reduction reduction)
    {
        var len = logits.shape[1];
        var l = logits.narrow(1, 0, len - 1).reshape(-1, logits.shape[2]);
        var y = labels.narrow(1, 1, len - 1).reshape(-1);
        return nn.functional.cross_entropy(l, y, ignore_index: InstructionData.IgnoreIndex, reduction: reduction);
    }
}

/// <summary>Where a run stands after a step: the next batch of the epoch to take (the epoch's batch count at its end) and the figures so far.</summary>
public sealed record TrainerState(int Epoch, int Step, int NextBatch, int Mixed, double First, double Last, double Sum, int Counted, long Tokens, int Samples);

/// <summary>
/// A checkpoint: trainable tensors, optimizer state, the model's random stream (dropout masks) and the run's position
/// and figures, so that a resumed run continues exactly where this one stood. Only the latest is kept.
/// </summary>
public sealed record TrainerCheckpoint(string Folder, TrainerState State)
{
    const string Trainable = "trainable.safetensors", Optimizer = "optimizer.safetensors", StateFile = "trainer_state.json", Randomness = "randomness.bin";
    static readonly JsonSerializerOptions Json = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static void Save(string dir, TrainerState state, CausalLm model, AdamW optimizer)
    {
        var folder = Path.Combine(dir, $"step-{state.Step:D7}-{state.NextBatch:D6}");
        var tmp = folder + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        var trainable = PeftModel.TrainableState(model);
        SafeTensors.Save(Path.Combine(tmp, Trainable), trainable);
        foreach (var t in trainable.Values) t.Dispose();
        optimizer.Save(Path.Combine(tmp, Optimizer));
        using (var g = model.Randomness.get_state()) File.WriteAllBytes(Path.Combine(tmp, Randomness), g.data<byte>().ToArray());
        File.WriteAllText(Path.Combine(tmp, StateFile), JsonSerializer.Serialize(state, Json));
        if (Directory.Exists(folder)) Directory.Delete(folder, true);
        Directory.Move(tmp, folder); // atomic: a crash never leaves a half-written checkpoint under the final name
        foreach (var older in Directory.GetDirectories(dir).Where(d => d != folder && !d.EndsWith(".tmp"))) Directory.Delete(older, true);
    }

    public static TrainerCheckpoint? Latest(string dir)
    {
        if (!Directory.Exists(dir)) return null;
        // A checkpoint of a build before our own AdamW (optimizer.bin) is not resumed: that run starts again.
        return Directory.GetDirectories(dir).Where(d => !d.EndsWith(".tmp") && File.Exists(Path.Combine(d, StateFile)) && File.Exists(Path.Combine(d, Optimizer)))
            .Select(d => new TrainerCheckpoint(d, JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(Path.Combine(d, StateFile)), Json)!))
            .OrderBy(c => c.State.Step).ThenBy(c => c.State.Epoch).ThenBy(c => c.State.NextBatch).LastOrDefault();
    }

    public void Restore(CausalLm model, AdamW optimizer)
    {
        var state = SafeTensors.Load(Path.Combine(Folder, Trainable));
        try { PeftModel.LoadTrainableState(model, state, Folder); }
        finally { foreach (var t in state.Values) t.Dispose(); }
        optimizer.Load(Path.Combine(Folder, Optimizer));
    }

    /// <summary>The model's random stream as it was when this checkpoint was taken (inside an epoch).</summary>
    public void RestoreRandomness(CausalLm model)
    {
        using var g = torch.tensor(File.ReadAllBytes(Path.Combine(Folder, Randomness)));
        model.Randomness.set_state(g);
    }
}
