using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Privacy;

/// <summary>
/// <c>local.dp-sgd</c>: example-level DP in local training (Abadi et al. 2016). Each step draws a Poisson sample of the
/// party's examples (rate q = batch-size ÷ examples), clips every example's gradient to <see cref="ClipNorm"/> on its
/// own, adds N(0, σ²C²) to the sum and divides by the expected batch q·N. σ is <see cref="NoiseMultiplier"/>, or with
/// <see cref="TargetEpsilon"/> the smallest σ whose ε over the whole job (every round's steps) is the target.
/// </summary>
public sealed record DpSgdOptions
{
    public required bool Enabled { get; init; }
    public required double NoiseMultiplier { get; init; }
    /// <summary>Solve σ for this ε at <see cref="Delta"/> over the job's rounds; null: <see cref="NoiseMultiplier"/> as given.</summary>
    public double? TargetEpsilon { get; init; }
    public required double ClipNorm { get; init; }
    public required double Delta { get; init; }
    /// <summary>Examples per clipped gradient: 1, the only value that protects examples (larger groups protect groups).</summary>
    public required int Microbatch { get; init; }

    /// <summary>What jobs written before DP-SGD existed ran: none.</summary>
    public static DpSgdOptions Off { get; } = new() { Enabled = false, NoiseMultiplier = 1.0, ClipNorm = 1.0, Delta = 1e-5, Microbatch = 1 };

    /// <summary>Throws <see cref="ArgumentException"/> naming the setting (under <c>local.dp-sgd</c>) that cannot be honoured.</summary>
    public void Validate()
    {
        if (!Enabled) return;
        if (!(ClipNorm > 0) || !double.IsFinite(ClipNorm)) throw new ArgumentException($"clip-norm must be a positive number, got {ClipNorm}");
        if (Delta is <= 0 or >= 1) throw new ArgumentException($"delta must be in (0, 1), got {Delta}");
        if (TargetEpsilon is { } eps && !(eps > 0 && double.IsFinite(eps))) throw new ArgumentException($"target-epsilon must be a positive number, got {eps}");
        if (TargetEpsilon is null && !(NoiseMultiplier > 0 && double.IsFinite(NoiseMultiplier)))
            throw new ArgumentException($"noise-multiplier must be > 0 (or set target-epsilon), got {NoiseMultiplier}");
        if (Microbatch != 1)
            throw new ArgumentException($"microbatch = {Microbatch} would clip the summed gradient of {Microbatch} examples together, which bounds a group's influence, not an example's: only 1 gives example-level DP");
    }
}

/// <summary>One party's example-level privacy after its local training: the mechanism's parameters and ε so far.</summary>
public sealed record DpSgdSpent(double SamplingRate, double NoiseMultiplier, int Steps, double Epsilon, double Delta);

/// <summary>The pure pieces of DP-SGD: Poisson sampling, per-example clipping, noise, and the accounting around them.</summary>
public static class DpSgd
{
    /// <summary>Each of <paramref name="n"/> indices independently with probability <paramref name="q"/> (possibly none).</summary>
    public static List<int> PoissonSample(int n, double q, Random rng)
    {
        if (q is < 0 or > 1 || double.IsNaN(q)) throw new ArgumentException($"sampling rate {q} is outside [0, 1]");
        var chosen = new List<int>();
        for (int i = 0; i < n; i++) if (rng.NextDouble() < q) chosen.Add(i);
        return chosen;
    }

    /// <summary>q = batch ÷ examples, capped at 1.</summary>
    public static double SamplingRate(int batchSize, int examples) => Math.Min(1.0, batchSize / (double)Math.Max(1, examples));

    /// <summary>Steps of one epoch at rate q (the expected number of Poisson batches that cover the data once).</summary>
    public static int StepsPerEpoch(double q) => Math.Max(1, (int)Math.Round(1 / q));

    /// <summary>Optimizer steps of a run at rate q: <paramref name="maxSteps"/> when set, else each epoch's expected batches.</summary>
    public static int Steps(int? maxSteps, int epochs, double q) => maxSteps ?? epochs * StepsPerEpoch(q);

    /// <summary>σ for <paramref name="steps"/> steps at rate q: the one given, or the one solved for the target ε.</summary>
    public static double NoiseMultiplierFor(DpSgdOptions o, double q, int steps) =>
        o.TargetEpsilon is { } target ? NoiseFor(target, q, steps, o.Delta) : o.NoiseMultiplier;

    /// <summary>ε at <paramref name="delta"/> after <paramref name="steps"/> sampled Gaussian steps (RDP, Balle et al. 2020's conversion).</summary>
    public static double Epsilon(double q, double sigma, int steps, double delta)
    {
        var accountant = new RdpAccountant();
        accountant.Compose(q, sigma, steps);
        return accountant.Epsilon(delta).Epsilon;
    }

    /// <summary>The smallest σ (to 1e-4 relative) whose ε after <paramref name="steps"/> steps at rate q is at most the target.</summary>
    public static double NoiseFor(double targetEpsilon, double q, int steps, double delta)
    {
        double lo = 0.05, hi = 1.0;
        while (Epsilon(q, hi, steps, delta) > targetEpsilon)
        {
            hi *= 2;
            if (hi > 1e4) throw new ArgumentException($"no noise multiplier up to 1e4 reaches ε = {targetEpsilon} at δ = {delta} over {steps} steps at q = {q:G3}");
        }
        while (hi - lo > 1e-4 * hi)
        {
            var mid = (lo + hi) / 2;
            if (Epsilon(q, mid, steps, delta) > targetEpsilon) lo = mid;
            else hi = mid;
        }
        return hi;
    }

    /// <summary>
    /// Σ_i clip_C(∇ℓ_i) over the examples, each by its own backward pass (exact per-example gradients, never batch
    /// clipping), with each example's gradient norm before clipping. Leaves the parameters' grads zero.
    /// </summary>
    public static (Dictionary<string, Tensor> Sum, double[] Norms, double MeanLoss) ClippedSum(CausalLm model, IReadOnlyList<TokenizedExample> examples,
        IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Param)> trainable, double clip, int padId, Device? device)
    {
        var sum = trainable.ToDictionary(p => p.Name, p => zeros_like(p.Param, dtype: ScalarType.Float32));
        var norms = new double[examples.Count];
        double loss = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            using (var scope = NewDisposeScope())
            {
                foreach (var (_, p) in trainable) p.grad?.zero_();
                using var batch = InstructionData.Collate([examples[i]], padId, device);
                var l = LanguageModelLoss.Compute(model, batch);
                l.backward();
                loss += l.item<float>();
                using var _ = no_grad();
                var squared = trainable.Where(p => p.Param.grad is not null).Sum(p => p.Param.grad!.to(ScalarType.Float64).pow(HeldScalars.Two).sum().item<double>());
                norms[i] = Math.Sqrt(squared);
                using var factor = (norms[i] > clip ? clip / norms[i] : 1.0).ToScalar();
                foreach (var (name, p) in trainable)
                    if (p.grad is { } g) sum[name].add_(g.to(ScalarType.Float32), alpha: factor);
            }
        }
        foreach (var (_, p) in trainable) p.grad?.zero_();
        return (sum, norms, examples.Count == 0 ? double.NaN : loss / examples.Count);
    }

    /// <summary>Adds N(0, (σC)²) to every coordinate of the sum (seeded: a resumed or replayed step draws the same noise).</summary>
    public static void AddNoise(IReadOnlyDictionary<string, Tensor> sum, double std, long seed)
    {
        if (std == 0) return;
        using var generator = new Generator((ulong)seed);
        using var _ = no_grad();
        using var deviation = std.ToScalar();
        foreach (var t in sum.Values) t.add_(randn(t.shape, dtype: t.dtype, generator: generator).mul_(deviation));
    }
}

/// <summary>A party's DP-SGD round as planned: its step's parameters and the ε the party has spent with it.</summary>
public sealed record DpSgdRound(Trainer.PrivateTraining Step, DpSgdSpent Spent);

/// <summary>
/// What a party has spent under DP-SGD in one job, kept in its workspace (<c>dp-sgd.json</c>) so a restarted node
/// keeps counting. A round is charged once per (round, global state): fitted again from the same state with the same
/// seeds it releases the same update, which costs nothing more; anything else is a new charge.
/// </summary>
public static class DpSgdLedger
{
    public const string File = "dp-sgd.json";

    sealed record Entry(string Key, double SamplingRate, double NoiseMultiplier, int Steps);

    public static DpSgdRound Plan(Federation.JobSpec spec, string? workspace, string party, int round, string globalDigest, int examples)
    {
        var o = spec.Local.DpSgd;
        var local = spec.Local;
        var q = DpSgd.SamplingRate(local.BatchSize, examples);
        var steps = DpSgd.Steps(local.Steps > 0 ? local.Steps : null, local.Epochs, q);
        // The target is for the whole job: σ so that every round's steps together reach it, no sooner.
        var sigma = DpSgd.NoiseMultiplierFor(o, q, steps * spec.Rounds);
        var path = workspace is null ? null : Path.Combine(workspace, File);
        var entries = path is not null && System.IO.File.Exists(path)
            ? System.Text.Json.JsonSerializer.Deserialize<List<Entry>>(System.IO.File.ReadAllText(path)) ?? [] : [];
        var key = $"{round}:{globalDigest}";
        var before = Spent(entries, o.Delta);
        if (entries.All(e => e.Key != key)) entries.Add(new Entry(key, q, sigma, steps));
        var after = Spent(entries, o.Delta);
        if (o.TargetEpsilon is { } limit && after > limit * (1 + 1e-6))
            throw new DpBudgetExceededException($"party '{party}': DP-SGD in round {round} would take its ε from {before:F3} to {after:F3} at δ = {o.Delta:G3}, past local.dp-sgd.target-epsilon = {limit:G4}; the round is refused");
        if (path is not null)
        {
            Directory.CreateDirectory(workspace!);
            IO.AtomicFile.WriteAllText(path, System.Text.Json.JsonSerializer.Serialize(entries));
        }
        return new DpSgdRound(new Trainer.PrivateTraining(sigma, o.ClipNorm, q), new DpSgdSpent(q, sigma, steps, after, o.Delta));
    }

    /// <summary>What a party's ledger in <paramref name="workspace"/> has spent so far at δ (0 with no ledger): reported again with a re-sent release.</summary>
    public static double Spent(string workspace, double delta)
    {
        var path = Path.Combine(workspace, File);
        return System.IO.File.Exists(path) ? Spent(System.Text.Json.JsonSerializer.Deserialize<List<Entry>>(System.IO.File.ReadAllText(path)) ?? [], delta) : 0;
    }

    static double Spent(IEnumerable<Entry> entries, double delta)
    {
        var accountant = new RdpAccountant();
        foreach (var e in entries) accountant.Compose(e.SamplingRate, e.NoiseMultiplier, e.Steps);
        return accountant.Steps == 0 ? 0 : accountant.Epsilon(delta).Epsilon;
    }
}

/// <summary>A round that DP-SGD would take past the job's target ε: refused, with the ε before and after.</summary>
public sealed class DpBudgetExceededException(string message) : Exception(message);
