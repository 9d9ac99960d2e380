using System.Diagnostics;
using System.Globalization;
using System.Text;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Ipr;
using FateLlm.Training.Metrics;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using FateLlm.Training.Zoo;
using static TorchSharp.torch;

namespace FateLlm.Host.Experiments;

/// <summary>The IPR experiment's own knobs; data, seeds, rounds and evaluation come from <see cref="ExperimentSettings"/>.</summary>
public sealed record IprExperimentOptions
{
    public int Bits { get; init; } = 64;
    public int Blocks { get; init; } = 1;
    public int Triggers { get; init; } = 8;
    public int TriggersPerBatch { get; init; } = 4;
    /// <summary>Learning rates of the key-less fine-tuning attack (all parameters, AdamW).</summary>
    public double[] AttackLearningRates { get; init; } = [1e-4, 1e-3];
    public double PruneFraction { get; init; } = 0.2;
    public double DpNoiseMultiplier { get; init; } = 0.5;
}

/// <param name="Keys">Whose keys: the job they were made for.</param>
/// <param name="Own">Whether the keys belong to the federation that trained the model (else a false-positive check).</param>
public sealed record IprCheck(string Condition, int Seed, string Party, string Keys, bool Own, int Bits, int Matched, double Log10P, int Triggers, int TriggerHits,
    bool SignVerified, bool TriggersVerified)
{
    public bool Verified => SignVerified || TriggersVerified;
}

public sealed record IprResult(ExperimentSettings Settings, IprExperimentOptions Options, ZooCard Model, List<RunResult> Quality, List<IprCheck> Checks,
    Dictionary<int, int> FederationSteps, Dictionary<int, double?> Epsilon, VerifyThresholds Thresholds, double Seconds);

/// <summary>
/// FedIPR through the federation: three watermarking parties train LoRA on the zoo's base model; each verifies its own
/// keys on the final model; keys are tried on models that do not carry them (a plain federation's, another
/// federation's); the watermark is attacked by key-less fine-tuning for as many steps as the federation took and by
/// magnitude pruning; jobs under secure aggregation and SecAgg + distributed DP; and the watermark's cost in quality.
/// </summary>
public sealed class IprExperiment(ExperimentSettings s, IprExperimentOptions o, VerifyThresholds thresholds, Action<string> log)
{
    public const string Own = "federated model", Plain = "model trained without watermarks", Other = "another federation's model",
        Secure = "under secure aggregation", Private = "under SecAgg + distributed DP", Pruned = "after magnitude pruning of the weight matrices",
        PrunedAll = "after magnitude pruning of every weight incl. norm scales";
    public static string Attacked(double lr) => $"after key-less full fine-tuning, lr {lr.ToString("G2", CultureInfo.InvariantCulture)}";

    public async Task<IprResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 4000);
        var paper = new PaperExperiment(s, log);
        var (basePath, card) = paper.EnsureBase();
        var test = InstructionData.ReadJsonl(split.Test, PaperExperiment.Data);
        var attackerData = InstructionData.ReadJsonl(split.Public, PaperExperiment.Data);
        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split), PaperExperiment.QuietCluster);
        var orgs = fed.Parties.Keys.Order().ToArray();
        var quality = new List<RunResult>();
        var checks = new List<IprCheck>();
        var steps = new Dictionary<int, int>();
        var epsilon = new Dictionary<int, double?>();
        foreach (var seed in s.Seeds)
        {
            var wm = await Run(fed, paper, basePath, "wm", seed, ipr: true, progress);
            var plain = await Run(fed, paper, basePath, "plain", seed, ipr: false, progress);
            var secure = await Run(fed, paper, basePath, "secagg", seed, ipr: true, progress, secure: true);
            var dp = await Run(fed, paper, basePath, "dp", seed, ipr: true, progress, secure: true, dp: true);
            epsilon[seed] = dp.Status.Epsilon;
            steps[seed] = wm.Status.Rounds.Sum(r => r.Parties.Sum(p => (int)p.Metrics.GetValueOrDefault(ClientUpdate.Steps)));
            string Keys(string job, string org) => PartyWatermark.KeysPath(Path.Combine(fed.Root, "party-" + org, "ipr"), job, org);
            void Check(string condition, string model, (string Id, string Label) keysOf, bool own)
            {
                using var m = HfCheckpoint.Load(model);
                var tok = TokenizerLoader.Load(model, m.Config);
                foreach (var org in orgs)
                {
                    var r = IprVerification.Verify(m, tok, OwnershipKeys.Load(Keys(keysOf.Id, org)), thresholds, model);
                    checks.Add(new IprCheck(condition, seed, org, keysOf.Label, own, r.Bits, r.Matched, r.Log10P, r.Triggers, r.TriggerHits, r.SignVerified, r.TriggersVerified));
                    log($"{condition} [{keysOf.Label} keys of {org}, seed {seed}]: {r.Matched}/{r.Bits} bits, log10 p = {r.Log10P:F1}, triggers {r.TriggerHits}/{r.Triggers} → {(r.Verified ? "verified" : "not verified")}");
                }
            }
            Check(Own, wm.Merged, (wm.Id, "own"), own: true);
            Check(Secure, secure.Merged, (secure.Id, "own"), own: true);
            Check(Private, dp.Merged, (dp.Id, "own"), own: true);
            Check(Plain, plain.Merged, (wm.Id, "the watermarked federation's"), own: false);
            Check(Other, secure.Merged, (wm.Id, "the first federation's"), own: false);
            Check(Other, wm.Merged, (secure.Id, "the second federation's"), own: false);

            quality.Add(new RunResult("watermarked", Own, seed, paper.Evaluate(wm.Merged, null, test), 0));
            quality.Add(new RunResult("plain", Plain, seed, paper.Evaluate(plain.Merged, null, test), 0));
            foreach (var lr in o.AttackLearningRates)
            {
                var attacked = Attack(wm.Merged, attackerData, steps[seed], lr, seed);
                Check(Attacked(lr), attacked, (wm.Id, "own"), own: true);
                quality.Add(new RunResult("watermarked", Attacked(lr), seed, paper.Evaluate(attacked, null, test), 0));
            }
            foreach (var (condition, norms) in new[] { (Pruned, false), (PrunedAll, true) })
            {
                var pruned = Prune(wm.Merged, o.PruneFraction, norms, condition == Pruned ? "pruned" : "pruned-all");
                Check(condition, pruned, (wm.Id, "own"), own: true);
                quality.Add(new RunResult("watermarked", condition, seed, paper.Evaluate(pruned, null, test), 0));
            }
            foreach (var r in quality.Where(q => q.Seed == seed))
                log($"{r.Setting} [{r.Method}, seed {seed}]: ROUGE-L {r.Scores.RougeL:F2}, BLEU-4 {r.Scores.Bleu4:F2}, loss {r.Scores.Loss:F3}");
        }
        return new IprResult(s, o, card, quality, checks, steps, epsilon, thresholds, clock.Elapsed.TotalSeconds);
    }

    sealed record Finished(string Id, JobStatus Status, string Merged);

    async Task<Finished> Run(LocalFederation fed, PaperExperiment paper, string basePath, string label, int seed, bool ipr, IProgress<JobStatus>? progress,
        bool secure = false, bool dp = false)
    {
        var id = $"ipr-{label}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var spec = paper.Job(id, basePath, fed, "lora", seed);
        spec = spec with
        {
            // LoRA on every projection: on q/v only this model cannot learn even one party's triggers alone in 100 steps.
            Peft = spec.Peft with { LoraTargets = ["all-linear"] },
            Ipr = ipr ? new IprOptions { Enabled = true, Bits = o.Bits, Blocks = o.Blocks, Triggers = o.Triggers, TriggersPerBatch = o.TriggersPerBatch } : IprOptions.Off,
            Round = spec.Round with { Quorum = 3 },
            SecureAggregation = secure ? spec.SecureAggregation with { Enabled = true, PhaseTimeoutSeconds = 60 } : spec.SecureAggregation,
            Dp = dp ? spec.Dp with { Mode = DpMode.Distributed, NoiseMultiplier = o.DpNoiseMultiplier, AdaptiveClip = true, ClipCountNoise = 0.1 } : spec.Dp,
        };
        if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {id} rejected: {r.Reason}");
        var status = await fed.WaitAsync(id, TimeSpan.FromHours(2), progress: progress);
        if (status.State != JobState.Completed) throw new InvalidOperationException($"job {id}: {status.State}: {status.Reason}");
        return new Finished(id, status, Path.Combine(status.OutputDir!, "merged"));
    }

    /// <summary>Someone holding the model but no keys fine-tunes every parameter on their own (public) data.</summary>
    string Attack(string model, List<Example> data, int steps, double lr, int seed)
    {
        var folder = Path.Combine(s.OutDir, "attacked", $"{Path.GetFileName(Path.GetDirectoryName(model))}-lr{lr:G2}");
        using var run = FineTuning.Open(model, new PeftConfig { Method = PeftMethod.Full }, seed);
        var r = run.Train(run.Tokenize(data, PaperExperiment.Data), new TrainOptions
        {
            MaxSteps = steps, BatchSize = s.BatchSize, LearningRate = lr, Schedule = LrSchedule.Constant, Seed = seed,
        });
        log($"attack: {r.Steps} steps of full fine-tuning at lr {lr:G2} on {data.Count} public examples, loss {r.FirstLoss:F3} → {r.LastLoss:F3}");
        HfCheckpoint.Save(run.Model, folder);
        TokenizerLoader.CopyFiles(model, folder);
        return folder;
    }

    /// <summary>Zeroes the smallest-magnitude fraction of each weight matrix (and, with <paramref name="norms"/>, of each norm scale).</summary>
    string Prune(string model, double fraction, bool norms, string name)
    {
        var folder = Path.Combine(s.OutDir, name, Path.GetFileName(Path.GetDirectoryName(model))!);
        using var m = HfCheckpoint.Load(model);
        using (var _ = no_grad())
            foreach (var (_, p) in m.BaseParameters().Where(p => Prunable(p.Name, p.Param)))
            {
                var k = (long)Math.Floor(fraction * p.numel());
                if (k == 0) continue;
                using var scope = NewDisposeScope();
                var threshold = p.abs().flatten().kthvalue(k, 0).values;
                p.masked_fill_(p.abs().le(threshold), 0);
            }
        HfCheckpoint.Save(m, folder);
        TokenizerLoader.CopyFiles(model, folder);
        return folder;

        bool Prunable(string tensor, Tensor t) => t.dim() == 2 || (norms && t.dim() == 1 && !tensor.EndsWith(".bias"));
    }

    public static void Write(IprResult r, string outDir) => ExperimentReport.WriteResults(outDir, "ipr", new
    {
        r.Settings.Seeds, r.Settings.Rounds, r.Settings.TrainPerParty, r.Settings.TestPerParty, r.Options, model = r.Model.Name, r.Thresholds,
        r.FederationSteps, r.Epsilon, r.Seconds, r.Checks,
        quality = r.Quality.Select(x => new { x.Method, x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Scores.Loss }),
    }, Markdown(r));

    public static string Markdown(IprResult r)
    {
        var s = r.Settings;
        var o = r.Options;
        var sb = new StringBuilder();
        sb.AppendLine($"# FedIPR ownership watermarks on WordNet — {r.Model.Name}");
        sb.AppendLine();
        sb.AppendLine($"{r.Model.Name} ({r.Model.Layers} blocks, hidden {r.Model.Hidden}), LoRA on every projection (r = 8), 3 parties each embedding {o.Bits} bits in the norm scales of the last {o.Blocks} block(s) " +
            $"({2 * o.Blocks * r.Model.Hidden} scalars) and {o.Triggers} triggers ({o.TriggersPerBatch} in every batch); {s.Rounds} rounds × {s.LocalEpochs} local epoch(s), {s.TrainPerParty} training examples per party, " +
            $"seeds {string.Join(", ", s.Seeds)}. Verified: p ≤ {r.Thresholds.MaxPValue:G3} for the sign watermark, or ≥ {100 * r.Thresholds.MinTriggerAccuracy:F0} % of triggers. " +
            $"Key-less fine-tuning runs as many steps as the whole federation took ({string.Join(", ", r.FederationSteps.Values)}); DP: distributed, z = {o.DpNoiseMultiplier}, " +
            $"ε = {string.Join(", ", r.Epsilon.Values.Select(e => e is { } x ? x.ToString("F1", CultureInfo.InvariantCulture) : "-"))} (δ = 1e-5). {r.Seconds / 60:F1} min.");
        sb.AppendLine();
        // The worst case for each row: the largest p for a party's own keys, the smallest for keys the model does not carry.
        sb.AppendLine("| model | keys | checks | bits matched (min – max) | worst p | triggers | verified |");
        sb.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var g in r.Checks.GroupBy(c => (c.Condition, c.Keys)))
        {
            var c = g.ToList();
            sb.AppendLine($"| {g.Key.Condition} | {g.Key.Keys} | {c.Count} | {100.0 * c.Min(x => (double)x.Matched / x.Bits):F1} – {100.0 * c.Max(x => (double)x.Matched / x.Bits):F1} % | " +
                $"{P(c[0].Own ? c.Max(x => x.Log10P) : c.Min(x => x.Log10P))} | {c.Sum(x => x.TriggerHits)}/{c.Sum(x => x.Triggers)} | {c.Count(x => x.Verified)}/{c.Count} |");
        }
        sb.AppendLine();
        var falsePositives = r.Checks.Where(c => !c.Own).ToList();
        sb.AppendLine($"False positives (keys on a model that does not carry them): {falsePositives.Count(c => c.Verified)} of {falsePositives.Count}.");
        sb.AppendLine();
        sb.AppendLine("| model | seeds | ROUGE-L [95 % CI] | BLEU-4 [95 % CI] | loss |");
        sb.AppendLine("|---|---|---|---|---|");
        var order = r.Quality.Select(q => q.Setting).Distinct().ToList();
        foreach (var row in ExperimentReport.Summarize(r.Quality).OrderBy(x => order.IndexOf(x.Setting)))
            sb.AppendLine($"| {row.Setting} | {row.Seeds} | {row.RougeL:F2} [{row.RougeLInterval.Low:F2}, {row.RougeLInterval.High:F2}] | {row.Bleu4:F2} [{row.Bleu4Interval.Low:F2}, {row.Bleu4Interval.High:F2}] | {row.Loss:F3} |");
        sb.AppendLine();
        double[] PerExample(string setting) => ExperimentReport.PerExample(r.Quality.Where(x => x.Setting == setting), x => x.RougeLPerExample);
        var d = Bootstrap.PairedDifference(PerExample(Own), PerExample(Plain));
        sb.AppendLine($"Cost of the watermark (ROUGE-L, watermarked − plain, paired over test examples): {ExperimentReport.Signed(d)}.");
        return sb.ToString();
    }

    static string P(double log10) => log10 > -300 ? Math.Pow(10, log10).ToString("G3", CultureInfo.InvariantCulture) : $"10^{log10:F0}";
}
