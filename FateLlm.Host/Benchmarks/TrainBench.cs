using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using TorchSharp;
using static TorchSharp.torch;

using FateLlm.Host.Cli;

namespace FateLlm.Host.Benchmarks;

/// <summary><c>bench train</c>: ms/step, tokens/s, model FLOPs and achieved GFLOP/s against the same run's sgemm, peak RSS.</summary>
internal static class TrainBench
{
    /// <summary>What a LoRA step should reach of the same run's sgemm: the frozen weights' backward is input gradients only.</summary>
    const double LoraUtilizationGoal = 0.75;

    public static void Run(ModelConfig config, string presetName, PeftMethod method, string[] loraTargets, int b, int s, int warmup, int measured, TextWriter output)
    {
        output.WriteLine(BenchMachine.Line());
        var model = CausalLm.Create(config);
        model.InitializeWeights(1);
        manual_seed(1);
        PeftModel.Apply(model, new PeftConfig
        {
            Method = method,
            LoraTargets = loraTargets,
        });
        var trainable = PeftModel.TrainableParameters(model);
        using var optimizer = new Training.Trainer.AdamW(trainable.Select(t => t.Param), 1e-4);
        model.train();
        var ids = randint(0, config.VocabSize, [b, s], dtype: ScalarType.Int64);
        var batchData = new Batch(ids, ids.clone(), ones_like(ids), b * s);
        double Step()
        {
            var sw = Stopwatch.StartNew();
            using var scope = NewDisposeScope();
            LanguageModelLoss.Compute(model, batchData).backward();
            optimizer.Step();
            optimizer.ZeroGrad();
            return sw.Elapsed.TotalMilliseconds;
        }
        for (int i = 0; i < warmup; i++) Step();
        // Each step is paired with an sgemm burst right after it: this machine's speed drifts (other tenants, clocks) by
        // more than the effect measured, and a ratio of neighbours cancels most of that drift.
        var flops = StepFlops(model, method, b, s);
        var pairs = Enumerable.Range(0, measured).Select(_ => (Ms: Step(), Sgemm: SgemmGflops(TimeSpan.FromSeconds(0.5)))).ToList();
        var times = pairs.Select(p => p.Ms).ToList();
        var ms = times.Average();
        var achieved = flops / (ms / 1000) / 1e9;
        var sgemm = pairs.Average(p => p.Sgemm);
        var ratios = pairs.Select(p => flops / (p.Ms / 1000) / 1e9 / p.Sgemm).Order().ToList();
        var utilization = ratios[ratios.Count / 2];
        var trainableCount = trainable.Sum(t => t.Param.numel());
        output.WriteLine($"model            {config.ModelType} {presetName} ({config.ParameterCount():N0} params), {PeftConfig.MethodName(method)}");
        output.WriteLine($"threads          {get_num_threads()}");
        output.WriteLine($"batch x seq      {b} x {s} = {b * s} tokens");
        output.WriteLine($"trainable        {trainableCount:N0} params ({trainableCount * 4:N0} bytes)");
        output.WriteLine($"ms/step          {ms:F1} (min {times.Min():F1}, max {times.Max():F1}, {measured} steps)");
        output.WriteLine($"tokens/s         {b * s / (ms / 1000):F0}");
        output.WriteLine($"model GFLOP/step {flops / 1e9:F1}");
        output.WriteLine($"achieved GFLOP/s {achieved:F1}");
        output.WriteLine($"sgemm GFLOP/s    {sgemm:F1} (2048x2048 fp32 matmul, same threads, 0.5 s after each step; min {pairs.Min(p => p.Sgemm):F1}, max {pairs.Max(p => p.Sgemm):F1})");
        output.WriteLine($"utilization      {utilization:F3} (median of {measured} step/sgemm pairs, range {ratios[0]:F3}–{ratios[^1]:F3})" + (method == PeftMethod.Lora
            ? $"; goal ≥ {LoraUtilizationGoal:F2} of sgemm for a LoRA step: {(utilization >= LoraUtilizationGoal ? "met" : "MISSED")}" : ""));
        output.WriteLine($"peak RSS         {CheckpointBench.PeakRss():F0} MiB");
    }

    /// <summary>
    /// Matmul FLOPs of one step: forward 2·W·T over every projection and the output head, plus attention
    /// (QKᵀ and AV: 4·s·d per token per layer, causal work counted in full as the kernels compute it);
    /// backward always propagates input gradients (2·W·T) and adds weight gradients (2·W·T) only for trained weights.
    /// </summary>
    internal static double StepFlops(CausalLm model, PeftMethod method, int b, int s)
    {
        double tokens = (double)b * s;
        var c = model.Config;
        double frozen = 0, trained = 0;
        foreach (var (_, proj) in model.Projections())
        {
            double w = proj.InFeatures * proj.OutFeatures;
            if (method == PeftMethod.Full) trained += w; else frozen += w;
            if (proj.HasLora) trained += proj.LoraA!.weight.numel() + proj.LoraB!.weight.numel();
        }
        double head = (double)c.HiddenSize * c.VocabSize;
        if (method == PeftMethod.Full) trained += head; else frozen += head;
        double attention = 4.0 * c.NumLayers * s * c.NumHeads * c.HeadDim * tokens;
        var forward = 2 * (frozen + trained) * tokens + attention;
        var backward = 2 * (frozen + trained) * tokens + 2 * trained * tokens + 2 * attention;
        return forward + backward;
    }

    internal static double SgemmGflops(TimeSpan? burst = null)
    {
        const int n = 2048;
        using var a = randn(n, n);
        using var bm = randn(n, n);
        using (var w = a.matmul(bm)) { }
        var sw = Stopwatch.StartNew();
        int reps = 0;
        while (sw.Elapsed < (burst ?? TimeSpan.FromSeconds(1.5)) || reps < 3)
        {
            using var r = a.matmul(bm);
            reps++;
        }
        return 2.0 * n * n * n * reps / sw.Elapsed.TotalSeconds / 1e9;
    }
}
