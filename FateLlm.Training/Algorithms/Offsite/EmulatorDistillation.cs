using TorchSharp;
using System.Security.Cryptography;
using System.Text;
using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.Offsite;

/// <summary>How the arbiter distils the emulator before any party sees it (off when <see cref="Steps"/> is 0).</summary>
public sealed record DistillOptions(int Steps, string? Data, int BatchSize, int MaxTokens, double LearningRate, double LmWeight, double KdWeight, long Seed)
{
    public bool Enabled => Steps > 0;
}

public sealed record DistillResult(int Steps, double FirstLoss, double LastLoss, double FirstKd, double LastKd, double Seconds);

/// <summary>
/// Emulator distillation as the Offsite-Tuning paper does it: the student is the sub-model with only its emulator blocks
/// trainable; the teacher is the full model. Loss = lm_weight · CE(student) + kd_weight · KD, where KD is the mean over
/// real tokens of mean_d(((h_T − h_S) / rms(h_T))²) with h the hidden state entering the top adapter (the output of the
/// teacher's middle stack and of the student's emulator) and rms(h_T) = sqrt(mean_d h_T²) per token (lm 1.0, kd 30.0,
/// AdamW). Text comes from a public corpus JSONL (every string field of every line). Pure function over two models.
/// </summary>
public static class EmulatorDistillation
{
    /// <summary>A content key for the cache: the full model's weights, the plan, the options and the corpus bytes.</summary>
    public static string Key(string fullWeightsDigest, EmulatorPlan plan, DistillOptions o)
    {
        var text = $"{fullWeightsDigest}|{string.Join(",", plan.FullIndices)}|{o with { Data = null }}|{(o.Data is null ? "" : BlobStore.DigestOfFile(o.Data))}";
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
    }

    public static DistillResult Run(CausalLm teacher, CausalLm student, EmulatorPlan plan, ITextTokenizer tok, DistillOptions o, CancellationToken ct = default)
    {
        var data = o.Data ?? throw new ArgumentException("distillation needs a public corpus (job.algorithm.distill.data)");
        var texts = TokenizerTraining.ReadCorpus(data);
        if (texts.Count == 0) throw new DataFormatException($"{data}: no text to distil the emulator on");

        teacher.eval();
        foreach (var (_, p) in teacher.BaseParameters()) p.requires_grad = false;
        var emulatorBlocks = Enumerable.Range(plan.Bottom.Length, plan.Emulator.Length).ToHashSet();
        foreach (var (name, p) in student.BaseParameters())
            p.requires_grad = BlockName.Parse(name) is { } blk && emulatorBlocks.Contains(blk.Block);
        var trainable = PeftModel.TrainableParameters(student);
        student.train();
        using var optimizer = new Trainer.AdamW(trainable.Select(t => t.Param), o.LearningRate);
        // Both hidden states enter the top adapter: after the teacher's last middle block and the student's last emulator block.
        int teacherBlock = plan.Layers - plan.Top.Length - 1, studentBlock = plan.Bottom.Length + plan.Emulator.Length - 1;
        var batches = new CorpusBatches(tok, texts, o.MaxTokens, (int)o.Seed);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        double firstLoss = double.NaN, lastLoss = double.NaN, firstKd = double.NaN, lastKd = double.NaN;
        for (int step = 0; step < o.Steps; step++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            if (batches.Next(o.BatchSize) is not var (ids, mask, labels)) continue;
            Tensor hT;
            using (no_grad()) hT = teacher.ForwardCapturing(ids, teacherBlock).Hidden.to_type(ScalarType.Float32);
            var (logits, hS) = student.ForwardCapturing(ids, studentBlock);
            var lm = LanguageModelLoss.Shifted(logits, labels, nn.Reduction.Mean);
            using Scalar floor = 1e-6.ToScalar(), lmWeight = o.LmWeight.ToScalar(), kdWeight = o.KdWeight.ToScalar(); // held: HeldScalars says why
            var rms = hT.pow(Models.HeldScalars.Two).mean([-1L], keepdim: true).sqrt().clamp_min(floor);
            var perToken = hT.sub(hS.to_type(ScalarType.Float32)).div(rms).pow(Models.HeldScalars.Two).mean([-1L]);
            var m = mask.to_type(ScalarType.Float32);
            var kd = perToken.mul(m).sum().div(m.sum());
            var loss = lm.mul(lmWeight).add(kd.mul(kdWeight));
            optimizer.ZeroGrad();
            loss.backward();
            optimizer.Step();
            lastLoss = loss.item<float>();
            lastKd = kd.item<float>();
            if (double.IsNaN(firstLoss)) (firstLoss, firstKd) = (lastLoss, lastKd);
        }
        foreach (var (_, p) in student.BaseParameters()) p.requires_grad = false;
        student.eval();
        return new DistillResult(o.Steps, firstLoss, lastLoss, firstKd, lastKd, sw.Elapsed.TotalSeconds);
    }
}
