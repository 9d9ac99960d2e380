using TorchSharp;
using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.CoLlm;

/// <param name="Lambda">Weight of the KD term next to the CE term (FedCoLLM's distill_lambda).</param>
public sealed record MutualDistillOptions(int Steps, int BatchSize, int MaxTokens, double LearningRate, double Lambda, double Temperature, int TopK, long Seed);

public sealed record MutualDistillResult(int Steps, double FirstKdSmall, double LastKdSmall, double FirstKdLarge, double LastKdLarge, double Seconds);

/// <summary>
/// FedCoLLM's co-tuning on the public set: the small and the large model (same tokenizer, each with its trainable
/// adapter) teach each other. Per batch, both run forward once; the small model's loss is CE + λ·τ²·KL(p_L ‖ p_S) and
/// the large model's CE + λ·τ²·KL(p_S ‖ p_L), where the teacher's distribution is its top-k softmax (renormalised over
/// those k tokens at temperature τ, detached) and the student's is its full-vocabulary log-softmax gathered at the
/// teacher's top-k ids — live, so the gradient reaches the student's adapter (FATE-LLM rebuilds both sides from
/// detached values, so its KD term has no gradient). KL is averaged over real tokens. Pure function over two models.
/// </summary>
public static class MutualDistillation
{
    /// <summary>Mean over real tokens of KL(teacher top-k ‖ student) at temperature τ; the teacher is detached.</summary>
    public static Tensor TopKDivergence(Tensor studentLogits, Tensor teacherLogits, Tensor mask, int topK, double temperature)
    {
        var k = (int)Math.Min(topK, teacherLogits.shape[^1]);
        using var t = temperature.ToScalar(); // held: HeldScalars says why
        var (values, ids) = teacherLogits.detach().to_type(ScalarType.Float32).div(t).topk(k, dim: -1);
        var logP = values.log_softmax(-1);
        var logQ = studentLogits.to_type(ScalarType.Float32).div(t).log_softmax(-1).gather(-1, ids);
        var perToken = logP.exp().mul(logP.sub(logQ)).sum(-1);
        var m = mask.to_type(ScalarType.Float32);
        return perToken.mul(m).sum().div(m.sum().clamp_min(Models.HeldScalars.One));
    }

    public static MutualDistillResult Run(CausalLm small, CausalLm large, ITextTokenizer tok, IReadOnlyList<string> texts, MutualDistillOptions o, CancellationToken ct = default)
    {
        if (small.Config.VocabSize != large.Config.VocabSize)
            throw new ModelFormatException($"mutual distillation needs one vocabulary: the small model has {small.Config.VocabSize} tokens, the large {large.Config.VocabSize}");
        if (texts.Count == 0) throw new DataFormatException("mutual distillation: the public set has no text");
        var smallParams = PeftModel.TrainableParameters(small).Select(p => p.Param).ToList();
        var largeParams = PeftModel.TrainableParameters(large).Select(p => p.Param).ToList();
        if (smallParams.Count == 0 || largeParams.Count == 0) throw new InvalidOperationException("mutual distillation: both models need trainable adapters");
        using var optSmall = new Trainer.AdamW(smallParams, o.LearningRate);
        using var optLarge = new Trainer.AdamW(largeParams, o.LearningRate);
        small.train();
        large.train();
        var batches = new CorpusBatches(tok, texts, o.MaxTokens, (int)(o.Seed & 0x7FFFFFFF));
        var sw = Stopwatch.StartNew();
        double firstS = double.NaN, lastS = double.NaN, firstL = double.NaN, lastL = double.NaN;
        using var kdWeight = (o.Lambda * (o.Temperature * o.Temperature)).ToScalar(); // held: HeldScalars says why
        for (int step = 0; step < o.Steps; step++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            if (batches.Next(o.BatchSize) is not var (ids, mask, labels)) continue;
            var logitsS = small.Forward(ids);
            var logitsL = large.Forward(ids);
            var kdS = TopKDivergence(logitsS, logitsL, mask, o.TopK, o.Temperature);
            var kdL = TopKDivergence(logitsL, logitsS, mask, o.TopK, o.Temperature);
            var lossS = LanguageModelLoss.Shifted(logitsS, labels, nn.Reduction.Mean).add(kdS.mul(kdWeight));
            var lossL = LanguageModelLoss.Shifted(logitsL, labels, nn.Reduction.Mean).add(kdL.mul(kdWeight));
            optSmall.ZeroGrad();
            optLarge.ZeroGrad();
            // The two graphs share nothing (each teacher is detached), so one backward through their sum trains both.
            lossS.add(lossL).backward();
            optSmall.Step();
            optLarge.Step();
            lastS = kdS.item<float>();
            lastL = kdL.item<float>();
            if (double.IsNaN(firstS)) (firstS, firstL) = (lastS, lastL);
        }
        small.eval();
        large.eval();
        return new MutualDistillResult(o.Steps, firstS, lastS, firstL, lastL, sw.Elapsed.TotalSeconds);
    }
}
