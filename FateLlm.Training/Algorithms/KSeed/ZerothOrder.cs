using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.KSeed;

/// <param name="MaxScalar">Estimates beyond ±this are dropped (FedKSeed's bias_loss_clip); the arbiter refuses any that arrive.</param>
public sealed record ZerothOrderOptions(int BatchSize, double LearningRate, double Epsilon, double MaxScalar, int Threads);

public sealed record ZerothOrderResult(ScalarUpload Upload, int Skipped, double FirstLoss, double LastLoss, double Seconds);

/// <summary>
/// A party's local FedKSeed steps: two-point zeroth-order SGD (MeZO) restricted to the candidate seeds' directions. For
/// each step's seed s: ĝ = (L(w + εz_s) − L(w − εz_s)) / 2ε on one batch, then w ← w − η·ĝ·z_s. No autograd, no
/// dropout, and no in-place ±ε walk: both probes are written from w, so w itself only ever moves by the update.
/// </summary>
public static class ZerothOrder
{
    /// <summary>How many steps at the start and end average into the reported first and last loss (single batches are noisy).</summary>
    const int LossWindow = 10;

    public static ZerothOrderResult Run(CausalLm model, ParameterLayout layout, float[] w, IReadOnlyList<TokenizedExample> data, int padId,
        IReadOnlyList<int> seeds, long jobSeed, ZerothOrderOptions o, ulong batchSeed, CancellationToken ct)
    {
        if (data.Count == 0) throw new ArgumentException("no training examples");
        var sw = Stopwatch.StartNew();
        var order = Enumerable.Range(0, data.Count).ToArray();
        new Random((int)(batchSeed & 0x7FFFFFFF)).Shuffle(order);
        var z = new float[w.Length];
        var probe = new float[w.Length];
        var pairs = new List<(int, float)>(seeds.Count);
        var losses = new List<double>(seeds.Count);
        int skipped = 0;
        model.eval();
        for (int t = 0; t < seeds.Count; t++)
        {
            ct.ThrowIfCancellationRequested();
            var items = Enumerable.Range(0, o.BatchSize).Select(j => data[order[(int)(((long)t * o.BatchSize + j) % data.Count)]]).ToList();
            SeedDirection.Fill(z, SeedDirection.Key(jobSeed, seeds[t]), o.Threads);
            SeedDirection.Axpy(probe, w, z, (float)o.Epsilon, o.Threads);
            var plus = Loss(model, layout, probe, items, padId);
            SeedDirection.Axpy(probe, w, z, (float)-o.Epsilon, o.Threads);
            var minus = Loss(model, layout, probe, items, padId);
            var g = (plus - minus) / (2 * o.Epsilon);
            if (!double.IsFinite(g) || Math.Abs(g) > o.MaxScalar) { skipped++; continue; }
            var scalar = (float)g;
            // The fp32 scalar it uploads, applied the way the replay applies a round's sums.
            SeedDirection.Axpy(w, w, z, (float)(-o.LearningRate * scalar), o.Threads);
            pairs.Add((seeds[t], scalar));
            losses.Add((plus + minus) / 2);
        }
        layout.Write(w);
        var window = Math.Min(LossWindow, Math.Max(1, losses.Count));
        return new ZerothOrderResult(new ScalarUpload(pairs), skipped, losses.Count > 0 ? losses.Take(window).Average() : double.NaN,
            losses.Count > 0 ? losses.TakeLast(window).Average() : double.NaN, sw.Elapsed.TotalSeconds);
    }

    static double Loss(CausalLm model, ParameterLayout layout, float[] weights, IReadOnlyList<TokenizedExample> items, int padId)
    {
        layout.Write(weights);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var batch = InstructionData.Collate(items, padId);
        return LanguageModelLoss.Compute(model, batch).item<float>();
    }
}
