using System.Diagnostics;
using System.Globalization;
using System.Text;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms.Fdkt;
using FateLlm.Training.Algorithms.Mkt;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Metrics;
using FateLlm.Training.Privacy;

namespace FateLlm.Host.Experiments;

/// <summary>The FDKT experiment's own knobs; data, seeds and evaluation come from <see cref="ExperimentSettings"/>.</summary>
public sealed record FdktExperimentOptions
{
    /// <summary>The arbiter's LLM and every party's small model (zoo names).</summary>
    public string ServerModel { get; init; } = "base";
    public string PartyModel { get; init; } = "slm-llama";
    /// <summary>Target ε of each party's DP-SGD (δ = 1e-5); infinity: no DP-SGD.</summary>
    public double[] Epsilons { get; init; } = [1, 3, 8, double.PositiveInfinity];
    public int SyntheticPerCategory { get; init; } = 64;
    public int AugmentedPerParty { get; init; } = 128;
    /// <summary>Local epochs of every training: DP synthesis, the fine-tune on own + augmented, and the baselines.</summary>
    public int Epochs { get; init; } = 2;
    /// <summary>Members and non-members of the membership-inference attack per party (its training and dev examples).</summary>
    public int AttackExamples { get; init; } = 100;

    public static FdktExperimentOptions Quick => new() { SyntheticPerCategory = 32, AugmentedPerParty = 64, AttackExamples = 60 };
}

/// <summary>One party's privacy evidence for one job: the attack on its DP-trained small model and its synthetic set's verbatim copies.</summary>
public sealed record FdktPrivacy(string Party, double Epsilon, int Seed, double Spent, double NoiseMultiplier, double AttackAuc, double AttackAdvantage,
    double VerbatimRate, int Synthetic, int Unparsed, int Kept, int Augmented);

/// <summary>The arbiter's report.json of a round (FdktAlgorithm writes it).</summary>
sealed record FdktReport([property: System.Text.Json.Serialization.JsonPropertyName("parties")] List<FdktAlgorithm.PartyReport> Parties);

public sealed record FdktResult(ExperimentSettings Settings, FdktExperimentOptions Options, List<RunResult> Runs, List<FdktPrivacy> Privacy, double Seconds);

/// <summary>
/// FDKT on WordNet: three parties (two lexicographer files each) with the zoo's small model, the zoo's LLM at the
/// arbiter. Per target ε and seed, one FDKT job through the in-process federation; then each party's small model
/// trained on (a) its own data, (b) its own + its DP synthetic set, (c) its own + its LLM-augmented set (the job's),
/// and (d) zero-shot, each scored on the test examples of its own domains; plus a loss-threshold membership-inference
/// attack on its DP-trained synthesis model and the share of its synthetic examples that copy a training example.
/// </summary>
public sealed class FdktExperiment(ExperimentSettings s, FdktExperimentOptions o, Action<string> log)
{
    public const string ZeroShot = "(d) zero-shot", Own = "(a) own data", Synthetic = "(b) own + DP synthetic", Fdkt = "(c) own + LLM-augmented (FDKT)";
    public const string AllParties = "all parties";

    /// <summary>Bounds for reading back sets the federation already checked.</summary>
    static readonly SyntheticBounds Unbounded = new(1 << 20, 1 << 10, 1 << 16);

    public static string Eps(double e) => double.IsPositiveInfinity(e) ? "∞" : e.ToString("G3", CultureInfo.InvariantCulture);
    public static string Setting(string condition, double epsilon) => $"{condition}, ε = {Eps(epsilon)}";

    public async Task<FdktResult> RunAsync(IProgress<JobStatus>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        PaperExperiment Zoo(string name) => new(s with { BaseModel = name }, log);
        var (llmPath, _) = Zoo(o.ServerModel).EnsureBase();
        var paper = Zoo(o.PartyModel);
        var (slmPath, _) = paper.EnsureBase();
        var orgs = split.Parties.Keys.Order(StringComparer.Ordinal).ToArray();
        var own = orgs.ToDictionary(org => org, org => SyntheticData.ReadCategorized(split.Parties[org].Train, PaperExperiment.Data, "domain"));
        var dev = orgs.ToDictionary(org => org, org => SyntheticData.ReadCategorized(split.Parties[org].Dev, PaperExperiment.Data, "domain"));
        var allTest = SyntheticData.ReadCategorized(split.Test, PaperExperiment.Data, "domain");
        // Each party is scored on the test examples of its own domains: the knowledge FDKT is meant to carry there.
        var test = orgs.ToDictionary(org => org, org =>
        {
            var domains = own[org].Select(e => e.Category).ToHashSet(StringComparer.Ordinal);
            return allTest.Where(e => domains.Contains(e.Category)).Select((e, i) => e.AsExample($"test#{i + 1}")).ToList();
        });
        log($"fdkt: LLM {o.ServerModel}, small model {o.PartyModel} at {string.Join(", ", orgs)}; ε ∈ {{{string.Join(", ", o.Epsilons.Select(Eps))}}}, seeds {string.Join(", ", s.Seeds)}; " +
            $"{s.TrainPerParty} private examples per party, {string.Join(", ", test.Select(t => $"{t.Key} {t.Value.Count}"))} test examples");
        var runs = new List<RunResult>();
        var privacy = new List<FdktPrivacy>();
        foreach (var org in orgs) runs.Add(Timed(org, ZeroShot, 0, () => paper.Evaluate(slmPath, null, test[org])));
        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), PaperExperiment.Datasets(split), PaperExperiment.QuietCluster);
        foreach (var seed in s.Seeds)
        {
            // Every condition's small model trains exactly as the job's fine-tune does (its settings and seeds): only the data differ.
            var local = Job(fed, paper, llmPath, slmPath, seed, double.PositiveInfinity);
            foreach (var org in orgs)
                runs.Add(Timed(org, Own, seed, () => Train(paper, slmPath, local, own[org].Select((e, i) => e.AsExample($"{org}#{i + 1}")).ToList(), test[org])));
            foreach (var epsilon in o.Epsilons)
            {
                var sw = Stopwatch.StartNew();
                var spec = Job(fed, paper, llmPath, slmPath, seed, epsilon);
                if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {spec.JobId} rejected: {r.Reason}");
                var status = await fed.WaitAsync(spec.JobId, TimeSpan.FromHours(2), progress: progress);
                if (status.State != JobState.Completed) throw new InvalidOperationException($"job {spec.JobId}: {status.State}: {status.Reason}");
                var jobSeconds = sw.Elapsed.TotalSeconds;
                var reports = status.Rounds.Single().Parties.ToDictionary(p => p.Org);
                var kept = System.Text.Json.JsonSerializer.Deserialize<FdktReport>(File.ReadAllText(Path.Combine(status.OutputDir!, "fdkt", "report.json")))!
                    .Parties.ToDictionary(p => p.Party, p => p.Kept);
                foreach (var org in orgs)
                {
                    var workspace = Directory.GetDirectories(Path.Combine(fed.Root, "party-" + org), spec.JobId, SearchOption.AllDirectories).Single();
                    var synthetic = SyntheticData.Parse(File.ReadAllBytes(FdktAlgorithm.WorkspaceFile(workspace, 1, FdktAlgorithm.SyntheticSet)),
                        Unbounded, org);
                    var augmented = SyntheticData.Parse(File.ReadAllBytes(Path.Combine(status.OutputDir!, "fdkt", $"augmented-{org}.jsonl")),
                        Unbounded, org);
                    runs.Add(new RunResult(org, Setting(Fdkt, epsilon), seed, Score(paper, slmPath, spec, FdktAlgorithm.WorkspaceFile(workspace, 1, FdktAlgorithm.FinalAdapter), test[org]),
                        jobSeconds));
                    var mixed = own[org].Concat(synthetic).Select((e, i) => e.AsExample($"{org}+synthetic#{i + 1}")).ToList();
                    runs.Add(Timed(org, Setting(Synthetic, epsilon), seed, () => Train(paper, slmPath, local, mixed, test[org])));
                    var metrics = reports[org].Metrics;
                    var (auc, advantage) = Attack(slmPath, spec, FdktAlgorithm.WorkspaceFile(workspace, 1, FdktAlgorithm.SynthesisAdapter), own[org], dev[org]);
                    var format = FdktAlgorithm.Settings.Of(spec).Format;
                    var verbatim = Verbatim.Rate(synthetic.Select(e => e.Prompt + format.Separator + e.Response).ToList(),
                        own[org].Select(e => e.Prompt + format.Separator + e.Response).ToList());
                    privacy.Add(new FdktPrivacy(org, epsilon, seed, metrics.GetValueOrDefault("dpsgd.epsilon", double.PositiveInfinity),
                        metrics.GetValueOrDefault("dpsgd.noise-multiplier", 0), auc, advantage, verbatim, synthetic.Count, (int)metrics.GetValueOrDefault("fdkt.unparsed"),
                        kept[org], augmented.Count));
                }
                foreach (var x in runs.Where(x => x.Seed == seed && x.Setting.EndsWith($"ε = {Eps(epsilon)}", StringComparison.Ordinal)))
                    log($"{x.Method} {x.Setting} [seed {seed}]: ROUGE-L {x.Scores.RougeL:F2}, BLEU-4 {x.Scores.Bleu4:F2}, loss {x.Scores.Loss:F3}");
                foreach (var p in privacy.Where(p => p.Seed == seed && p.Epsilon.Equals(epsilon)))
                    log($"{p.Party} ε = {Eps(epsilon)} [seed {seed}]: spent ε {p.Spent:F2} (σ = {p.NoiseMultiplier:F2}); attack AUC {p.AttackAuc:F3}; verbatim {p.VerbatimRate:P1} of {p.Synthetic} synthetic " +
                        $"({p.Unparsed} unparsed); {p.Augmented} augmented; job {jobSeconds:F0} s");
            }
        }
        runs.AddRange(runs.GroupBy(x => (x.Setting, x.Seed)).Where(g => g.Count() == orgs.Length)
            .Select(g => new RunResult(AllParties, g.Key.Setting, g.Key.Seed, Pool(orgs.Select(org => g.Single(x => x.Method == org).Scores).ToList()), g.Sum(x => x.Seconds)))
            .ToList());
        return new FdktResult(s, o, runs, privacy, clock.Elapsed.TotalSeconds);
    }

    JobSpec Job(LocalFederation fed, PaperExperiment paper, string llmPath, string slmPath, int seed, double epsilon)
    {
        var id = $"fdkt-eps{Eps(epsilon).Replace("∞", "inf")}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var spec = paper.Job(id, llmPath, fed, "lora", seed);
        var settings = new Dictionary<string, string>
        {
            ["party-model"] = slmPath, ["synthetic-per-category"] = I(o.SyntheticPerCategory), ["augmented-per-party"] = I(o.AugmentedPerParty),
        };
        var dp = spec.Local.DpSgd with { Enabled = !double.IsPositiveInfinity(epsilon), TargetEpsilon = double.IsPositiveInfinity(epsilon) ? null : epsilon, Delta = 1e-5 };
        return spec with
        {
            Rounds = 1, Algorithm = JobFile.Algorithm(FdktAlgorithm.AlgorithmName, settings),
            Local = spec.Local with { Epochs = o.Epochs, DpSgd = dp },
        };
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>The small model trained on <paramref name="train"/> as a party's FDKT fine-tune trains it, scored on its test examples.</summary>
    static Scores Train(PaperExperiment paper, string slmPath, JobSpec spec, List<Example> train, List<Example> test)
    {
        using var run = FedMktAlgorithm.OpenPartyModel(spec, slmPath, null);
        run.Train(run.Tokenize(train, spec.Data), FdktAlgorithm.LocalOptions(spec, 1));
        return paper.Score(run.Model, test, run.Tokenizer);
    }

    /// <summary>A party's kept adapter, scored on its test examples.</summary>
    static Scores Score(PaperExperiment paper, string slmPath, JobSpec spec, string adapter, List<Example> test)
    {
        using var run = FedMktAlgorithm.OpenPartyModel(spec, slmPath, adapter);
        return paper.Score(run.Model, test, run.Tokenizer);
    }

    /// <summary>
    /// The loss-threshold attack (Yeom et al. 2018) on the synthesis model: each example's loss in the synthesis format,
    /// members from its training set, non-members from its dev set (same domains, never trained on).
    /// </summary>
    (double Auc, double Advantage) Attack(string slmPath, JobSpec spec, string adapter, List<SyntheticExample> members,
        List<SyntheticExample> nonMembers)
    {
        var format = FdktAlgorithm.Settings.Of(spec).Format;
        var data = DomainTransfer.SynthesisData(PaperExperiment.Data);
        using var run = FedMktAlgorithm.OpenPartyModel(spec, slmPath, adapter);
        List<double> Losses(IEnumerable<SyntheticExample> xs) =>
            xs.Take(o.AttackExamples).Select(e => run.Loss(run.Tokenize([format.Training(e, "attack")], data), 1)).ToList();
        var (m, n) = (Losses(members), Losses(nonMembers));
        return (MembershipInference.LossThresholdAuc(m, n), MembershipInference.Advantage(m, n));
    }

    static RunResult Timed(string model, string setting, int seed, Func<Scores> run)
    {
        var sw = Stopwatch.StartNew();
        var scores = run();
        return new RunResult(model, setting, seed, scores, sw.Elapsed.TotalSeconds);
    }

    /// <summary>The parties' scores as one evaluation: their examples (and likelihood documents) one after another.</summary>
    static Scores Pool(IReadOnlyList<Scores> parts)
    {
        double[] Cat(Func<Scores, double[]> f) => [.. parts.SelectMany(f)];
        var rougeL = Cat(x => x.RougeLPerExample);
        var bleu = Cat(x => x.Bleu4PerExample);
        double Weighted(Func<Scores, double> f) => parts.Sum(p => f(p) * p.RougeLPerExample.Length) / rougeL.Length;
        return new Scores(Weighted(x => x.Rouge1), Weighted(x => x.Rouge2), rougeL.Average(), bleu.Average(), Weighted(x => x.Loss),
            new Dictionary<string, double>(), rougeL, bleu, [.. parts.SelectMany(x => x.Predictions)])
        {
            Likelihood = parts.All(p => p.Likelihood is not null)
                ? new LikelihoodScores(Cat(x => x.Likelihood!.GlossAcc), Cat(x => x.Likelihood!.GlossAccNorm), Cat(x => x.Likelihood!.WordAcc),
                    Cat(x => x.Likelihood!.KindAcc), Cat(x => x.Likelihood!.BitsPerByte))
                : null,
        };
    }

    public static void Write(FdktResult r, string outDir) => ExperimentReport.WriteResults(outDir, "fdkt", new
    {
        r.Settings.Seeds, r.Settings.TrainPerParty, r.Settings.TestPerParty, r.Options, r.Seconds,
        quality = r.Runs.Select(x => new { model = x.Method, x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Scores.Loss, x.Seconds }),
        privacy = r.Privacy,
    }, Markdown(r));

    public static string Markdown(FdktResult r)
    {
        var s = r.Settings;
        var o = r.Options;
        var sb = new StringBuilder();
        sb.AppendLine($"# FDKT on WordNet — {o.ServerModel} at the arbiter, {o.PartyModel} at every party");
        sb.AppendLine();
        sb.AppendLine($"{s.TrainPerParty} private examples per party (two lexicographer files each); LoRA r = 8 on every small model; {o.Epochs} local epochs for every training; " +
            $"DP-SGD to the target ε at δ = 1e-5 (σ solved before training, clip 1.0, Poisson sampling, batch {s.BatchSize}); {o.SyntheticPerCategory} synthetic examples per category, " +
            $"clusters of 8, half kept, {o.AugmentedPerParty} augmented per party; each party scored on the test examples of its own domains; seeds {string.Join(", ", s.Seeds)}; " +
            $"{r.Seconds / 60:F1} min.");
        sb.AppendLine();
        sb.AppendLine("## All parties pooled");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs.Where(x => x.Method == AllParties).ToList(), modelColumn: false);
        sb.AppendLine();
        IReadOnlyList<RunResult> Of(string model, string setting) => r.Runs.Where(x => x.Method == model && x.Setting == setting).ToList();
        foreach (var e in o.Epsilons)
        {
            sb.AppendLine(ExperimentReport.PairedLine($"ε = {Eps(e)}: FDKT − own data", Of(AllParties, Setting(Fdkt, e)), Of(AllParties, Own)));
            sb.AppendLine(ExperimentReport.PairedLine($"ε = {Eps(e)}: FDKT − own + DP synthetic", Of(AllParties, Setting(Fdkt, e)), Of(AllParties, Setting(Synthetic, e))));
            sb.AppendLine(ExperimentReport.PairedLine($"ε = {Eps(e)}: own + DP synthetic − own data", Of(AllParties, Setting(Synthetic, e)), Of(AllParties, Own)));
        }
        sb.AppendLine();
        sb.AppendLine("## Privacy evidence per ε (mean over parties and seeds, [min, max])");
        sb.AppendLine();
        sb.AppendLine("| target ε | spent ε | σ | attack AUC | attack advantage | verbatim copies | synthetic per party | unparsed | kept by the LLM | augmented per party |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var g in r.Privacy.GroupBy(p => p.Epsilon))
        {
            string Cell(Func<FdktPrivacy, double> f, string format) => $"{g.Average(f).ToString(format, CultureInfo.InvariantCulture)} [{g.Min(f).ToString(format, CultureInfo.InvariantCulture)}, {g.Max(f).ToString(format, CultureInfo.InvariantCulture)}]";
            sb.AppendLine($"| {Eps(g.Key)} | {(double.IsPositiveInfinity(g.Key) ? "∞" : Cell(p => p.Spent, "F2"))} | {(double.IsPositiveInfinity(g.Key) ? "0" : Cell(p => p.NoiseMultiplier, "F2"))} | " +
                $"{Cell(p => p.AttackAuc, "F3")} | {Cell(p => p.AttackAdvantage, "F3")} | {Cell(p => 100 * p.VerbatimRate, "F1")} % | {Cell(p => p.Synthetic, "F0")} | {Cell(p => p.Unparsed, "F0")} | {Cell(p => p.Kept, "F0")} | " +
                $"{Cell(p => p.Augmented, "F0")} |");
        }
        sb.AppendLine();
        sb.AppendLine("## Per party");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs.Where(x => x.Method != AllParties).ToList(), modelColumn: true);
        return sb.ToString();
    }
}
