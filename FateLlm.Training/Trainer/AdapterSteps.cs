using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using static TorchSharp.torch;

namespace FateLlm.Training.Trainer;

public sealed record AdapterStepsResult(int Steps, double FirstLoss, double LastLoss);

/// <summary>Where a run checkpoints (every <see cref="Every"/> steps, resuming from the latest) and whom it tells of its steps.</summary>
public sealed record AdapterStepsCheckpoints(string? Folder, int Every, IProgress<TrainProgress>? Progress)
{
    public static readonly AdapterStepsCheckpoints None = new(null, 0, null);
}

/// <summary>
/// The plain loop distillation-style trainers share: AdamW over the model's trainable (PEFT) parameters, the items
/// shuffled each epoch by a seeded generator, one step per batch with the loss the caller builds for it, gradients
/// clipped to norm 1. Each step runs in its own dispose scope. With a checkpoint folder a run killed at step k and run
/// again resumes at its last checkpoint (trainable tensors, optimizer, the model's random stream, its place in the
/// shuffled order) and ends with the same tensors as an uninterrupted run.
/// </summary>
public static class AdapterSteps
{
    public static AdapterStepsResult Run(CausalLm model, IReadOnlyList<int> items, int epochs, int batchSize, double learningRate, long seed,
        Func<int[], Tensor> loss, CancellationToken ct = default, AdapterStepsCheckpoints? checkpoints = null)
    {
        var c = checkpoints ?? AdapterStepsCheckpoints.None;
        var trainable = PeftModel.TrainableParameters(model).Select(p => p.Param).ToList();
        using var optimizer = new AdamW(trainable, learningRate);
        var order = items.ToArray();
        var rng = new Random((int)(seed & 0x7FFFFFFF));
        var batches = (order.Length + batchSize - 1) / batchSize;
        var total = epochs * batches;
        int steps = 0, startEpoch = 0, startBatch = 0;
        double first = double.NaN, last = double.NaN;
        if (c.Folder is { } folder && TrainerCheckpoint.Latest(folder) is { } saved)
        {
            saved.Restore(model, optimizer);
            saved.RestoreRandomness(model);
            (steps, first, last, startEpoch, startBatch) = (saved.State.Step, saved.State.First, saved.State.Last, saved.State.Epoch, saved.State.NextBatch);
        }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        model.train();
        for (int epoch = 0; epoch < epochs; epoch++)
        {
            rng.Shuffle(order); // every epoch's shuffle, also those a resumed run skips: the order builds on the last one
            if (epoch < startEpoch) continue;
            var chunks = order.Chunk(batchSize).ToList();
            for (int b = epoch == startEpoch ? startBatch : 0; b < chunks.Count; b++)
            {
                ct.ThrowIfCancellationRequested();
                using (var scope = NewDisposeScope())
                {
                    var l = loss(chunks[b]);
                    optimizer.ZeroGrad();
                    l.backward();
                    nn.utils.clip_grad_norm_(trainable, 1.0);
                    optimizer.Step();
                    last = l.item<float>();
                }
                if (double.IsNaN(first)) first = last;
                steps++;
                if (c.Folder is not null && c.Every > 0 && steps % c.Every == 0 && steps < total)
                    TrainerCheckpoint.Save(c.Folder, new TrainerState(epoch, steps, b + 1, 0, first, last, 0, 0, 0, 0), model, optimizer);
                c.Progress?.Report(new TrainProgress(steps, total, epoch, last, learningRate, 0, sw.Elapsed));
            }
        }
        model.eval();
        return new AdapterStepsResult(steps, first, last);
    }
}
