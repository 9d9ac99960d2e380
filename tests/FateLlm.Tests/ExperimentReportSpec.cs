using FateLlm.Host.Experiments;
using FateLlm.Training.Metrics;
using FateLlm.Training.Zoo;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class BootstrapSpec
{
    [Fact]
    public void The_interval_of_a_mean_matches_the_normal_approximation_and_is_deterministic()
    {
        var rng = new Random(3);
        var xs = Enumerable.Range(0, 400).Select(_ => rng.NextDouble() * 100).ToArray();
        var ci = Bootstrap.Mean(xs, seed: 9);
        var mean = xs.Average();
        var sd = Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Length - 1));
        var normalHalfWidth = 1.96 * sd / Math.Sqrt(xs.Length);
        Assert.Equal(mean, ci.Estimate, 9);
        Assert.True(ci.Low < mean && mean < ci.High);
        Assert.InRange((ci.High - ci.Low) / 2, normalHalfWidth * 0.85, normalHalfWidth * 1.15);
        Assert.Equal(ci, Bootstrap.Mean(xs, seed: 9));
    }

    [Fact]
    public void A_signed_interval_prints_a_figure_that_rounds_to_zero_as_plus_zero()
    {
        Assert.Equal("+0.00 [-0.50, +0.00]", ExperimentReport.Signed(new Interval(-0.001, -0.4981, -0.004)));
        Assert.Equal("-0.71 [-1.52, +1.25]", ExperimentReport.Signed(new Interval(-0.7149, -1.5212, 1.2490)));
    }

    [Fact]
    public void A_paired_difference_cancels_what_the_examples_share()
    {
        var rng = new Random(4);
        var difficulty = Enumerable.Range(0, 300).Select(_ => rng.NextDouble() * 80).ToArray();
        var a = difficulty.Select(d => d + 2 + rng.NextDouble()).ToArray();
        Assert.Equal(new Interval(0, 0, 0), Bootstrap.PairedDifference(difficulty, difficulty));
        var paired = Bootstrap.PairedDifference(a, difficulty);
        Assert.True(paired.Low > 2 && paired.High < 3, $"{paired}");
        // Unpaired, the same 2.5-point gap hides in the spread of difficulty.
        var unpaired = Bootstrap.Mean(a);
        Assert.True(unpaired.High - unpaired.Low > 10 * (paired.High - paired.Low));
        Assert.Throws<ArgumentException>(() => Bootstrap.PairedDifference(a, difficulty[..10]));
        Assert.Throws<ArgumentException>(() => Bootstrap.Mean([]));
    }
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ExperimentReportSpec
{
    const int N = 120;

    internal static Scores Scores(double level, int seed)
    {
        var rng = new Random(seed * 31 + (int)level);
        var rouge = Enumerable.Range(0, N).Select(i => Math.Clamp(level + (i % 7) * 3 + rng.NextDouble() * 4, 0, 100)).ToArray();
        var bleu = rouge.Select(x => x / 2).ToArray();
        return new Scores(rouge.Average() + 5, rouge.Average() / 3, rouge.Average(), bleu.Average(), 3 - level / 50,
            new Dictionary<string, double> { ["animal"] = rouge.Average() }, rouge, bleu, Enumerable.Range(0, N).Select(i => $"prediction {i} at {level}").ToArray());
    }

    static ExperimentResult Result(string outDir, double federated, double centralized)
    {
        var runs = new List<RunResult> { new("none", "zero-shot", 0, Scores(10, 0), 0) };
        foreach (var seed in new[] { 1, 2, 3 })
        {
            runs.Add(new("lora", "local:nature", seed, Scores(20, seed), 1));
            runs.Add(new("lora", "local:things", seed, Scores(22, seed), 1));
            runs.Add(new("lora", "federated", seed, Scores(federated, seed), 1));
            runs.Add(new("lora", "centralized", seed, Scores(centralized, seed), 1));
        }
        var card = new ZooCard("base", "d", "llama", 1000, 4, 64, "sentencepiece-bpe", 4000, "digest", 100, 10, 5, 4, 1e-3, 42, 2, 60, 1000, 3, 20, 1.5, "f", DateTime.UtcNow);
        var examples = Enumerable.Range(0, N).Select(i => new EvaluatedExample($"word: w{i} | pos: noun | domain: animal | kind: thing", $"reference {i}", "animal")).ToList();
        return new ExperimentResult(new ExperimentSettings { OutDir = outDir, Seeds = [1, 2, 3], Methods = ["lora"] }, card,
            new Dictionary<string, int> { ["test"] = N }, runs, [], [], 60, examples, null);
    }

    [Fact]
    public void The_claims_follow_paired_intervals_of_federated_against_every_other_setting()
    {
        var holds = ExperimentReport.Claims(Result(TestSupport.TempDir(), federated: 30, centralized: 30.5).Runs);
        var rouge = holds.Where(c => c.Metric == "ROUGE-L").ToDictionary(c => c.Versus);
        Assert.Equal(["local nature", "local things", "zero-shot", "centralized"], rouge.Keys);
        Assert.All(rouge.Values, c => Assert.Equal("holds", c.Verdict));
        Assert.InRange(rouge["local things"].Difference.Estimate, 6, 10);
        Assert.Contains(holds, c => c.Metric == "BLEU-4");

        var fails = ExperimentReport.Claims(Result(TestSupport.TempDir(), federated: 21, centralized: 30).Runs).Where(c => c.Metric == "ROUGE-L").ToDictionary(c => c.Versus);
        Assert.Equal("does not hold", fails["local things"].Verdict);
        Assert.Equal("does not hold", fails["centralized"].Verdict);
        Assert.True(fails["local things"].Difference.High < 0);
    }

    [Fact]
    public void With_likelihood_tasks_claims_and_tables_cover_accuracy_and_bits_per_byte_where_fewer_bits_count_as_better()
    {
        var dir = TestSupport.TempDir();
        var plain = Result(dir, federated: 30, centralized: 30.5);
        LikelihoodScores Of(string setting, int seed)
        {
            var (bits, correct) = setting switch { "zero-shot" => (3.5, 25), "federated" => (3.0, 40), "centralized" => (2.98, 41), _ => (3.3, 30) };
            var rng = new Random(seed);
            double[] Acc(int pct) => [.. Enumerable.Range(0, N).Select(i => (i * 37 + seed) % 100 < pct ? 100.0 : 0.0)];
            return new LikelihoodScores(Acc(correct), Acc(correct), Acc(correct), Acc(correct), [.. Enumerable.Range(0, N).Select(i => bits + (i % 5) * 0.1 + rng.NextDouble() * 0.01)]);
        }
        var result = plain with { Runs = [.. plain.Runs.Select(x => x with { Scores = x.Scores with { Likelihood = Of(x.Setting, x.Seed) } })] };
        var bits = ExperimentReport.Claims(result.Runs).Where(c => c.Metric == "−bits/byte").ToDictionary(c => c.Versus);
        Assert.Equal(["local nature", "local things", "zero-shot", "centralized"], bits.Keys);
        Assert.Equal("holds", bits["zero-shot"].Verdict);
        Assert.InRange(bits["zero-shot"].Difference.Estimate, 0.49, 0.51); // 3.5 − 3.0 bits saved
        Assert.Equal(("within 0.05 bits/byte", "holds"), (bits["centralized"].Expectation, bits["centralized"].Verdict));
        Assert.Contains(ExperimentReport.Claims(result.Runs), c => c.Metric == "gloss acc_norm %" && c.Versus == "zero-shot" && c.Verdict == "holds");
        ExperimentReport.Write(result, dir);
        var md = File.ReadAllText(Path.Combine(dir, "results.md"));
        Assert.Contains("## Likelihood tasks on the same synsets", md);
        Assert.Matches(@"\| lora \| federated \| 3 \| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", md);
        Assert.Matches(@"\| lora \| −bits/byte \| zero-shot \| \+0\.(49|50|51) \|", md);
        // A paradigm experiment's quality table gains the two likelihood columns.
        var table = new System.Text.StringBuilder();
        ExperimentReport.QualityTable(table, result.Runs, modelColumn: false);
        Assert.Contains("| loss | gloss acc_norm % [95 % CI] | bits/byte [95 % CI] |", table.ToString());
        Assert.Matches(@"\| federated \| 3 \| [^|]+\| [^|]+\| [^|]+\| \d+\.\d\d \[[^]]+\] \| 3\.\d\d \[", table.ToString());
        // Without likelihood scores the claims are ROUGE-L and BLEU-4 only.
        Assert.Equal(["BLEU-4", "ROUGE-L"], ExperimentReport.Claims(plain.Runs).Select(c => c.Metric).Distinct().Order());
    }

    [Fact]
    public void The_report_has_interval_tables_claims_generations_and_a_bar_chart()
    {
        var dir = TestSupport.TempDir();
        var result = Result(dir, federated: 30, centralized: 31);
        ExperimentReport.Write(result, dir);
        var md = File.ReadAllText(Path.Combine(dir, "results.md"));
        Assert.Contains("ROUGE-L 95 %", md);
        Assert.Contains("| lora | ROUGE-L | local things |", md);
        Assert.Contains("## Example generations (lora, seed 1; greedy)", md);
        Assert.Contains("prediction 0 at 30", md);
        var rows = ExperimentReport.Summarize(result.Runs);
        Assert.Equal(["zero-shot", "local:nature", "local:things", "federated", "centralized"], rows.Select(r => r.Setting));
        var fed = rows.Single(r => r.Setting == "federated");
        Assert.Equal(3, fed.Seeds);
        Assert.True(fed.RougeLInterval.Low < fed.RougeL && fed.RougeL < fed.RougeLInterval.High);
        var png = Path.Combine(dir, "rougeL_by_setting.png");
        Assert.True(File.Exists(png));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], File.ReadAllBytes(png)[..4]);
        Assert.True(File.Exists(Path.Combine(dir, "results.json")));

        var console = new StringWriter();
        FateLlm.Host.Cli.CliApp.Run(["--help"], console, new StringWriter()); // binds the CLI's console to a writer
        // Intervals in brackets once broke the console's markup after the whole experiment had run.
        Assert.Null(Record.Exception(() => FateLlm.Host.Cli.DemoCommand.Render(FateLlm.Host.Cli.Terminal.Of(TextWriter.Null, TextWriter.Null), result)));
    }
}

/// <summary>The paper experiment end to end on a miniature WordNet with a tiny zoo base: every setting runs, federated through the cluster.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class PaperExperimentSpec
{
    [Fact]
    public async Task Every_setting_is_trained_scored_on_the_same_examples_and_reported()
    {
        var dir = TestSupport.TempDir();
        var tiny = new ZooRecipe("base", "tiny", "llama", new FateLlm.Training.Models.ModelShape(32, 2, 2, 1, 64, 128),
            new ZooTokenizer("sentencepiece-bpe", 320), 4, 4, 1e-3, 0.1, 5);
        var settings = new ExperimentSettings
        {
            OutDir = Path.Combine(dir, "out"), Seeds = [1], Methods = ["lora"], FullFineTuningBaseline = false, Rounds = 2, TrainPerParty = 16,
            DevPerParty = 4, TestPerParty = 6, MaxNewTokens = 6, WordNetDir = TestSupport.WordNetDictionary(60),
            Zoo = new FateLlm.Host.Zoo.ZooCatalog(Path.Combine(dir, "zoo"), "base", 10, [tiny]), ZooRoot = Path.Combine(dir, "zoo"),
        };
        var log = new List<string>();
        var result = await new PaperExperiment(settings, l => { lock (log) log.Add(l); }).RunAsync();

        Assert.Equal(["zero-shot", "local:nature", "local:things", "local:actions", "centralized", "federated"], result.Runs.Select(r => r.Setting));
        Assert.Equal(18, result.Examples.Count);
        Assert.All(result.Runs, r => Assert.Equal(18, r.Scores.RougeLPerExample.Length));
        Assert.All(result.Runs, r => Assert.Equal(18, r.Scores.Predictions.Length));
        Assert.Equal("base", result.Base.Name);
        Assert.Equal(["animal", "artifact", "contact", "food", "motion", "plant"], result.Runs[0].Scores.RougeLByDomain.Keys.Order());
        Assert.True(File.Exists(Path.Combine(settings.ZooRoot!, "base", ModelZoo.CardFile)), "the experiment builds its base into the zoo");
        Assert.Equal(2, result.Communication.Single().Rounds);
        ExperimentReport.Write(result, settings.OutDir);
        Assert.True(File.Exists(Path.Combine(settings.OutDir, "rougeL_by_setting.png")));
        Assert.True(File.Exists(Path.Combine(settings.OutDir, "loss.png")), "the federated job's loss plot sits beside the comparison");
        Assert.Contains("| lora | ROUGE-L | centralized |", File.ReadAllText(Path.Combine(settings.OutDir, "results.md")));
    }
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class IprReportSpec
{
    [Fact]
    public void The_ipr_report_gives_each_rows_worst_case_p_and_counts_false_positives()
    {
        IprCheck Check(string condition, bool own, int matched) =>
            new(condition, 1, "p", own ? "own" : "foreign", own, 64, matched, BinomialTailLog10(64, matched), 8, 0, own && matched > 50, false);
        static double BinomialTailLog10(int n, int k) => Training.Ipr.BinomialTail.Log10P(n, k);
        var checks = new List<IprCheck>
        {
            Check(IprExperiment.Own, true, 64), Check(IprExperiment.Own, true, 62),
            Check(IprExperiment.Plain, false, 30), Check(IprExperiment.Plain, false, 40),
        };
        var quality = new List<RunResult>
        {
            new("watermarked", IprExperiment.Own, 1, ExperimentReportSpec.Scores(20, 1), 0), new("plain", IprExperiment.Plain, 1, ExperimentReportSpec.Scores(21, 1), 0),
        };
        var card = new ZooCard("base", "d", "llama", 1000, 4, 64, "sentencepiece-bpe", 4000, "digest", 100, 10, 5, 4, 1e-3, 42, 2, 60, 1000, 3, 20, 1.5, "f", DateTime.UtcNow);
        var md = IprExperiment.Markdown(new IprResult(new ExperimentSettings { OutDir = "x", Seeds = [1] }, new IprExperimentOptions(), card, quality, checks,
            new Dictionary<int, int> { [1] = 100 }, new Dictionary<int, double?> { [1] = 30.1 }, new Training.Ipr.VerifyThresholds(1e-9, 0.5), 60));
        // Own keys: the largest p (62 of 64 bits); foreign keys: the smallest (40 of 64), each the row's worst case.
        Assert.Contains($"| {IprExperiment.Own} | own | 2 | 96.9 – 100.0 % | {Math.Pow(10, Training.Ipr.BinomialTail.Log10P(64, 62)).ToString("G3", System.Globalization.CultureInfo.InvariantCulture)} |", md);
        Assert.Contains($"| {IprExperiment.Plain} | foreign | 2 | 46.9 – 62.5 % | {Math.Pow(10, Training.Ipr.BinomialTail.Log10P(64, 40)).ToString("G3", System.Globalization.CultureInfo.InvariantCulture)} |", md);
        Assert.Contains("False positives (keys on a model that does not carry them): 0 of 2.", md);
        Assert.Contains("Cost of the watermark (ROUGE-L, watermarked − plain", md);
    }
}
