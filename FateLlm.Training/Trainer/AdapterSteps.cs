using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using static TorchSharp.torch;

namespace FateLlm.Training.Trainer;

public sealed record AdapterStepsResult(int Steps, double FirstLoss, double LastLoss);

/// <summary>
/// The plain loop distillation-style trainers share: AdamW over the model's trainable (PEFT) parameters, the items
/// shuffled each epoch by a seeded generator, one step per batch with the loss the caller builds for it, gradients
/// clipped to norm 1. Each step runs in its own dispose scope.
/// </summary>
public static class AdapterSteps
{
    public static AdapterStepsResult Run(CausalLm model, IReadOnlyList<int> items, int epochs, int batchSize, double learningRate, long seed,
        Func<int[], Tensor> loss, CancellationToken ct = default)
    {
        var trainable = PeftModel.TrainableParameters(model).Select(p => p.Param).ToList();
        using var optimizer = optim.AdamW(trainable, lr: learningRate);
        var order = items.ToArray();
        var rng = new Random((int)(seed & 0x7FFFFFFF));
        int steps = 0;
        double first = double.NaN, last = double.NaN;
        model.train();
        for (int epoch = 0; epoch < epochs; epoch++)
        {
            rng.Shuffle(order);
            foreach (var chunk in order.Chunk(batchSize))
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var l = loss(chunk);
                optimizer.zero_grad();
                l.backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
                last = l.item<float>();
                if (double.IsNaN(first)) first = last;
                steps++;
            }
        }
        model.eval();
        return new AdapterStepsResult(steps, first, last);
    }
}
