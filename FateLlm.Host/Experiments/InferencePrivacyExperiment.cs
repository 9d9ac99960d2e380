using System.Diagnostics;
using System.Globalization;
using System.Text;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Services;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Inference;
using FateLlm.Training.Metrics;
using FateLlm.Training.Trainer;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Experiments;

public sealed record InferencePrivacyOptions
{
    public string RemoteModel { get; init; } = "server";
    public double[] Epsilons { get; init; } = [1, 3, 6, 12, double.PositiveInfinity];
    public OutOfKit OutOfKit { get; init; } = OutOfKit.Mask;
    public int AttackK { get; init; } = 5;
    /// <summary>PDSS: the ε of the perturbed rationales, α, epochs, and how many private examples get rationales.</summary>
    public double PdssEpsilon { get; init; } = 3;
    public double PdssAlpha { get; init; } = 0.5;
    public int PdssEpochs { get; init; } = 3;
    public int PdssExamples { get; init; } = 600;

    public static InferencePrivacyOptions Quick => new() { Epsilons = [1, 6, double.PositiveInfinity], PdssExamples = 150, PdssEpochs = 2 };
}

/// <summary>Per ε and seed: what the remote side could recover, and what the prompts cost.</summary>
public sealed record PrivacyRow(double Epsilon, int Seed, int Tokens, double RecoveredTop1, double RecoveredTopK, int K, double MaskedShare, double EpsilonPerPrompt);

public sealed record InferencePrivacyResult(ExperimentSettings Settings, InferencePrivacyOptions Options, ZooCard Local, ZooCard Remote, List<RunResult> Runs,
    List<PrivacyRow> Privacy, string KitDigest, int KitCovered, double Seconds);

/// <summary>
/// InferDPT and PDSS on WordNet: the zoo's server model is the remote model, served by another organization's node
/// through the cluster's model service; the zoo's base model is the party's local model. Utility: ROUGE-L of the local
/// model's final answers on the all-domain test at each ε, against the remote model on clear prompts and the local
/// model alone. Privacy: the share of prompt tokens nearest-neighbour inversion recovers at each ε. PDSS: the local
/// model trained with perturbed rationales against labels only and against clear rationales.
/// </summary>
public sealed class InferencePrivacyExperiment(ExperimentSettings s, InferencePrivacyOptions o, Action<string> log)
{
    public const string Utility = "utility", Pdss = "PDSS";
    public const string RemoteClear = "remote model, clear prompts", LocalAlone = "local model alone";
    const string Owner = "owner", Caller = "acme", Service = "remote";

    static string Eps(double e) => double.IsPositiveInfinity(e) ? "∞" : e.ToString("G4", CultureInfo.InvariantCulture);
    public static string Final(double e) => $"InferDPT ε = {Eps(e)}: local answer";
    public static string RemotePerturbed(double e) => $"InferDPT ε = {Eps(e)}: remote answer to the perturbed prompt";
    public const string LabelsOnly = "labels only", ClearRationales = "clear rationales";
    public static string PerturbedRationales(double e) => $"perturbed rationales (ε = {Eps(e)})";

    public async Task<InferencePrivacyResult> RunAsync()
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        var paper = new PaperExperiment(s, log);
        var (localPath, localCard) = paper.EnsureBase();
        var (remotePath, remoteCard) = new PaperExperiment(s with { BaseModel = o.RemoteModel }, log).EnsureBase();
        var test = InstructionData.ReadJsonl(split.Test, PaperExperiment.Data);
        var train = split.Parties.Values.SelectMany(p => InstructionData.ReadJsonl(p.Train, PaperExperiment.Data)).ToList();
        train = train.OrderBy(e => e.Location, StringComparer.Ordinal).Where((_, i) => i % Math.Max(1, train.Count / o.PdssExamples) == 0).Take(o.PdssExamples).ToList();
        var defaults = FederationNode.Reference().GetConfig("fate-llm.inferdpt");
        var (maskText, template) = (defaults.GetString("mask-text"), defaults.GetString("local-template"));

        var root = Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks);
        var port = LocalFederation.FreePort();
        var seedAddress = $"akka.tcp://fate-llm@127.0.0.1:{port}";
        await using var seedNode = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Seed, Port = port, Seeds = [seedAddress], DataDir = Path.Combine(root, "seed"), Overrides = PaperExperiment.QuietCluster,
        });
        await using var owner = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = Owner, Seeds = [seedAddress], DataDir = Path.Combine(root, Owner), Overrides = PaperExperiment.QuietCluster,
            Services = [new ServedModelOptions(Service, remotePath, new HashSet<string> { Caller })],
        });
        await using var client = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = [seedAddress], DataDir = Path.Combine(root, Caller), Overrides = PaperExperiment.QuietCluster,
        });
        await Task.WhenAll(new[] { seedNode, owner, client }.Select(n => n.WhenUp(TimeSpan.FromSeconds(60))));
        var timeout = TimeSpan.FromMinutes(20);
        var kit = await ModelServiceClient.FetchKit(client, Owner, Service, Caller, timeout);
        var mechanism = new TokenPerturbation(kit);
        var remoteTokenizer = kit.OpenTokenizer(Path.Combine(s.OutDir, "kits"));
        log($"inference-privacy: remote {remoteCard.Name} served by '{Owner}', local {localCard.Name} at '{Caller}'; kit {kit.Digest[..12]}… covers {kit.Covered.Count(c => c)} of {kit.Vocabulary} tokens; " +
            $"test {test.Count}, PDSS on {train.Count} private examples");

        string[] Remote(IReadOnlyList<string> prompts) => prompts.Chunk(FederationNode.Reference().GetInt("fate-llm.services.max-prompts")).SelectMany(chunk => ModelServiceClient.Call<GenerateReply>(client, Owner,
            new GenerateRequest(Guid.NewGuid().ToString("N"), Caller, Service, chunk, s.MaxNewTokens, 0, 0), timeout).GetAwaiter().GetResult().Answers).ToArray();

        var runs = new List<RunResult>();
        var privacy = new List<PrivacyRow>();
        using (var local = ServedModel.Open(localPath, PaperExperiment.Data))
        {
            runs.Add(Timed(Utility, RemoteClear, 0, () => ScoresOf(test, Remote([.. test.Select(e => e.Prompt)]))));
            runs.Add(Timed(Utility, LocalAlone, 0, () => ScoresOf(test, local.Generate([.. test.Select(e => e.Prompt)], Sampling, s.BatchSize))));
            foreach (var seed in s.Seeds)
                foreach (var eps in o.Epsilons)
                {
                    var sw = Stopwatch.StartNew();
                    // The attack below sees exactly what the remote model was sent.
                    var outcomes = InferDpt.PerturbAll(mechanism, remoteTokenizer, [.. test.Select(e => e.Prompt)], new PerturbationOptions(eps, o.OutOfKit, seed * 100_003L), maskText);
                    var answers = InferDpt.Complete([.. test.Select(e => e.Prompt)], outcomes, local, template, p => Remote(p), Sampling);
                    runs.Add(new RunResult(Utility, Final(eps), seed, ScoresOf(test, [.. answers.Select(a => a.Answer)]), sw.Elapsed.TotalSeconds));
                    runs.Add(new RunResult(Utility, RemotePerturbed(eps), seed, ScoresOf(test, [.. answers.Select(a => a.RemoteAnswer)]), sw.Elapsed.TotalSeconds));
                    var recovery = outcomes.Select(x => InversionAttack.Run(mechanism, x.Tokens, o.AttackK)).Aggregate((a, b) => a + b);
                    privacy.Add(new PrivacyRow(eps, seed, recovery.Tokens, recovery.RateTop1, recovery.RateTopK, o.AttackK,
                        outcomes.Sum(x => x.Masked) / (double)Math.Max(1, recovery.Tokens), outcomes.Average(x => x.EpsilonTotal)));
                    log($"ε = {Eps(eps)} [seed {seed}]: local answer ROUGE-L {runs[^2].Scores.RougeL:F2}, remote on perturbed {runs[^1].Scores.RougeL:F2}; " +
                        $"recovered {recovery.RateTop1:P1} (top-{o.AttackK} {recovery.RateTopK:P1}); ε per prompt {privacy[^1].EpsilonPerPrompt:G4}");
                }
        }

        // PDSS: rationales for the private prompts from the remote model, perturbed (seeded) or clear.
        var clearRationales = Remote([.. train.Select(e => e.Prompt)]);
        foreach (var seed in s.Seeds)
        {
            var perturbed = InferDpt.PerturbAll(mechanism, remoteTokenizer, [.. train.Select(e => e.Prompt)], new PerturbationOptions(o.PdssEpsilon, o.OutOfKit, seed * 7_919L), maskText);
            var perturbedRationales = Remote([.. perturbed.Select(x => x.Text)]);
            foreach (var (setting, rationales, alpha) in new[]
                     {
                         (LabelsOnly, train.Select(_ => "").ToArray(), 0.0), (PerturbedRationales(o.PdssEpsilon), perturbedRationales, o.PdssAlpha),
                         (ClearRationales, clearRationales, o.PdssAlpha),
                     })
            {
                runs.Add(Timed(Pdss, setting, seed, () =>
                {
                    using var run = FineTuning.Open(localPath, s.Peft("lora"), seed);
                    var data = train.Select((e, i) => new RationaleExample(e.Prompt, e.Response, rationales[i])).ToList();
                    RationaleDistillation.Train(run.Model, run.Tokenizer, data, PaperExperiment.Data, new RationaleOptions
                    {
                        Alpha = alpha, Epochs = o.PdssEpochs, BatchSize = s.BatchSize, LearningRate = s.LoraLearningRate, Seed = seed,
                    });
                    return paper.Score(run.Model, test, run.Tokenizer);
                }));
                log($"PDSS {setting} [seed {seed}]: ROUGE-L {runs[^1].Scores.RougeL:F2}");
            }
        }
        return new InferencePrivacyResult(s, o, localCard, remoteCard, runs, privacy, kit.Digest, kit.Covered.Count(c => c), clock.Elapsed.TotalSeconds);
    }

    SamplingOptions Sampling => new() { MaxNewTokens = s.MaxNewTokens };

    static Scores ScoresOf(List<Example> test, string[] predictions)
    {
        var each = test.Select((e, i) => GenerationScores.Of(e.Response, predictions[i])).ToArray();
        var mean = GenerationScores.Average(test.Select((e, i) => (e.Response, predictions[i])).ToList());
        var byDomain = test.Select((e, i) => (PaperExperiment.Domain(e.Prompt), each[i].RougeL)).GroupBy(x => x.Item1).ToDictionary(g => g.Key, g => g.Average(x => x.RougeL));
        return new Scores(mean.Rouge1, mean.Rouge2, mean.RougeL, mean.Bleu4, double.NaN, byDomain, [.. each.Select(x => x.RougeL)], [.. each.Select(x => x.Bleu4)], predictions);
    }

    static RunResult Timed(string method, string setting, int seed, Func<Scores> run)
    {
        var sw = Stopwatch.StartNew();
        var scores = run();
        return new RunResult(method, setting, seed, scores, sw.Elapsed.TotalSeconds);
    }

    public static void Write(InferencePrivacyResult r, string outDir) => ExperimentReport.WriteResults(outDir, "inference-privacy", new
    {
        r.Settings.Seeds, r.Settings.TestPerParty, r.Options, local = r.Local.Name, remote = r.Remote.Name, r.KitDigest, r.KitCovered, r.Seconds,
        quality = r.Runs.Select(x => new { x.Method, x.Setting, x.Seed, x.Scores.RougeL, x.Scores.Bleu4, x.Seconds }),
        privacy = r.Privacy,
    }, Markdown(r));

    public static string Markdown(InferencePrivacyResult r)
    {
        var (s, o) = (r.Settings, r.Options);
        var sb = new StringBuilder();
        sb.AppendLine($"# Inference-time privacy on WordNet — remote {r.Remote.Name} (served through the cluster), local {r.Local.Name}");
        sb.AppendLine();
        sb.AppendLine($"InferDPT: the kit covers {r.KitCovered} tokens of the remote vocabulary; out-of-kit tokens: {o.OutOfKit.ToString().ToLowerInvariant()}; " +
            $"greedy decoding, {s.MaxNewTokens} new tokens; the local model writes its answer from \"{{remote}}\\n{{prompt}}\". Seeds {string.Join(", ", s.Seeds)} (the perturbation sampler); " +
            $"{r.Seconds / 60:F1} min.");
        sb.AppendLine();
        sb.AppendLine("## Utility (all-domain test)");
        sb.AppendLine();
        ExperimentReport.QualityTable(sb, r.Runs.Where(x => x.Method == Utility).ToList(), modelColumn: false);
        sb.AppendLine();
        sb.AppendLine($"## Privacy: tokens nearest-neighbour inversion recovers (top-1 and top-{o.AttackK} of the remote embedding space)");
        sb.AppendLine();
        sb.AppendLine($"| ε per token | ε per prompt (mean) | masked | recovered top-1 | recovered top-{o.AttackK} |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var g in r.Privacy.GroupBy(p => p.Epsilon))
            sb.AppendLine($"| {Eps(g.Key)} | {g.Average(x => x.EpsilonPerPrompt):G4} | {g.Average(x => x.MaskedShare):P1} | {Range(g.Select(x => x.RecoveredTop1))} | {Range(g.Select(x => x.RecoveredTopK))} |");
        sb.AppendLine();
        sb.AppendLine($"## PDSS: the local model trained on {o.PdssExamples} private examples for {o.PdssEpochs} epochs (α = {o.PdssAlpha})");
        sb.AppendLine();
        var pdss = r.Runs.Where(x => x.Method == Pdss).ToList();
        ExperimentReport.QualityTable(sb, pdss, modelColumn: false);
        sb.AppendLine();
        IReadOnlyList<RunResult> Of(string setting) => pdss.Where(x => x.Setting == setting).ToList();
        sb.AppendLine(ExperimentReport.PairedLine("perturbed rationales − labels only", Of(PerturbedRationales(o.PdssEpsilon)), Of(LabelsOnly)));
        sb.AppendLine(ExperimentReport.PairedLine("perturbed rationales − clear rationales", Of(PerturbedRationales(o.PdssEpsilon)), Of(ClearRationales)));
        var utility = r.Runs.Where(x => x.Method == Utility).ToList();
        var best = o.Epsilons.Min();
        sb.AppendLine(ExperimentReport.PairedLine($"InferDPT local answer at ε = {Eps(best)} − local model alone", utility.Where(x => x.Setting == Final(best)).ToList(),
            utility.Where(x => x.Setting == LocalAlone).ToList()));
        return sb.ToString();
    }

    static string Range(IEnumerable<double> xs)
    {
        var l = xs.ToList();
        return l.Count == 1 ? $"{l[0]:P1}" : $"{l.Average():P1} ({l.Min():P1}–{l.Max():P1})";
    }
}
