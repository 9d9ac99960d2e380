using System.Globalization;
using System.Text;
using System.Text.Json;
using FateLlm.Training.Metrics;
using FateLlm.Training.Reporting;

namespace FateLlm.Host.Experiments;

/// <summary>results.json, results.md (tables, claims with intervals, example generations) and PNG plots for an experiment.</summary>
public static class ExperimentReport
{
    /// <summary>One setting: mean ± sample std over seeds, and 95 % bootstrap intervals over evaluation examples (each example's score averaged over seeds).</summary>
    public sealed record Row(string Method, string Setting, int Seeds, double Rouge1, double Rouge1Std, double Rouge2, double Rouge2Std,
        double RougeL, double RougeLStd, Interval RougeLInterval, double Bleu4, double Bleu4Std, Interval Bleu4Interval, double Loss);

    /// <summary>Federated minus another setting on the same examples (paired bootstrap), and whether the paper's claim holds.</summary>
    public sealed record Claim(string Method, string Metric, string Versus, Interval Difference, string Expectation, string Verdict);

    public const string ZeroShot = "zero-shot", Federated = "federated", Centralized = "centralized";

    /// <summary>A paradigm experiment's results-NAME.json (named floats allowed: a diverged run's NaN stays visible) and results-NAME.md.</summary>
    public static void WriteResults(string outDir, string name, object json, string markdown)
    {
        File.WriteAllText(Path.Combine(outDir, $"results-{name}.json"), JsonSerializer.Serialize(json,
            new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
        File.WriteAllText(Path.Combine(outDir, $"results-{name}.md"), markdown);
    }

    /// <summary>The quality table of a paradigm experiment: one row per (model, setting) in the given order, ROUGE-L and BLEU-4 with 95 % intervals.</summary>
    public static void QualityTable(StringBuilder sb, IReadOnlyList<RunResult> runs, bool modelColumn, Func<RunResult, string>? extra = null, string? extraHeader = null)
    {
        var order = runs.Select(q => (q.Method, q.Setting)).Distinct().ToList();
        // The likelihood tasks (built-in WordNet tasks over the same synsets) where every run has them.
        var likelihood = runs.All(r => r.Scores.Likelihood is not null);
        sb.AppendLine($"| {(modelColumn ? "model | " : "")}setting | seeds | ROUGE-L [95 % CI] | BLEU-4 [95 % CI] | loss |{(likelihood ? " gloss acc_norm % [95 % CI] | bits/byte [95 % CI] |" : "")}" +
            $"{(extraHeader is null ? "" : $" {extraHeader} |")}");
        sb.AppendLine($"|{(modelColumn ? "---|" : "")}---|---|---|---|---|{(likelihood ? "---|---|" : "")}{(extraHeader is null ? "" : "---|")}");
        foreach (var row in Summarize(runs).OrderBy(x => order.FindIndex(k => k.Method == x.Method)).ThenBy(x => order.IndexOf((x.Method, x.Setting))))
        {
            var mine = runs.Where(x => x.Method == row.Method && x.Setting == row.Setting).ToList();
            sb.AppendLine($"| {(modelColumn ? row.Method + " | " : "")}{row.Setting} | {row.Seeds} | {row.RougeL:F2} [{row.RougeLInterval.Low:F2}, {row.RougeLInterval.High:F2}] | " +
                $"{row.Bleu4:F2} [{row.Bleu4Interval.Low:F2}, {row.Bleu4Interval.High:F2}] | {row.Loss:F3} |" +
                $"{(likelihood ? $" {LikelihoodCell(mine, x => x.GlossAccNorm)} | {LikelihoodCell(mine, x => x.BitsPerByte)} |" : "")}{(extra is null ? "" : $" {extra(mine[0])} |")}");
        }
    }

    /// <summary>A likelihood metric of one setting: each document averaged over seeds, its mean and 95 % bootstrap interval.</summary>
    static string LikelihoodCell(IReadOnlyList<RunResult> runs, Func<LikelihoodScores, double[]> metric)
    {
        var i = Bootstrap.Mean(PerExample(runs, x => metric(x.Likelihood!)));
        return $"{F(i.Estimate)} {CI(i)}";
    }

    /// <summary>One line: a paired difference of per-example ROUGE-L (each example averaged over seeds) with its 95 % interval.</summary>
    public static string PairedLine(string name, IReadOnlyList<RunResult> a, IReadOnlyList<RunResult> b)
    {
        var d = Bootstrap.PairedDifference(PerExample(a, x => x.RougeLPerExample), PerExample(b, x => x.RougeLPerExample));
        return $"- ROUGE-L {name} (paired over examples, scores averaged over seeds): {Signed(d)}";
    }

    /// <summary>A difference and its interval, signed to two decimals; a figure that rounds to zero prints +0.00 (never -+0.00 or -0.00).</summary>
    public static string Signed(Interval d)
    {
        static string S(double x) => (Math.Round(x, 2) is var r && r == 0 ? 0 : r).ToString("+0.00;-0.00", CultureInfo.InvariantCulture);
        return $"{S(d.Estimate)} [{S(d.Low)}, {S(d.High)}]";
    }

    static string Label(string setting) => setting.StartsWith("local:") ? "local " + setting[6..] : setting;

    /// <summary>Each example's score averaged over the seeds of one (method, setting).</summary>
    public static double[] PerExample(IEnumerable<RunResult> runs, Func<Scores, double[]> metric) => PerExampleOf(runs, r => metric(r.Scores));

    /// <summary>Each example's score averaged over runs of any kind (seeds of one setting), for paired bootstrap.</summary>
    public static double[] PerExampleOf<T>(IEnumerable<T> runs, Func<T, double[]> metric)
    {
        var list = runs.Select(metric).ToList();
        if (list.Count == 0) return [];
        return Enumerable.Range(0, list[0].Length).Select(i => list.Average(x => x[i])).ToArray();
    }

    /// <summary>
    /// A claim's verdict from a paired difference: "above" holds when the interval is above 0; otherwise the claim is
    /// "within <paramref name="tolerance"/>" of the other setting.
    /// </summary>
    public static string Verdict(Interval d, bool above, double tolerance) => above
        ? d.Low > 0 ? "holds" : d.Estimate > 0 ? "holds on the mean; the interval includes 0" : "does not hold"
        : d.Estimate >= -tolerance ? d.Low >= -tolerance ? "holds" : $"holds on the mean; the interval reaches below −{tolerance.ToString(CultureInfo.InvariantCulture)}" : "does not hold";

    static IEnumerable<IGrouping<(string Method, string Setting), RunResult>> Settings(IReadOnlyList<RunResult> runs) =>
        runs.GroupBy(r => (r.Method, r.Setting));

    public static List<Row> Summarize(IReadOnlyList<RunResult> runs)
    {
        var rows = Settings(runs).Select(g =>
        {
            var p = g.ToList();
            (double, double) MS(Func<Scores, double> f) => (p.Average(r => f(r.Scores)), Std(p.Select(r => f(r.Scores)).ToList()));
            var (r1, r1s) = MS(x => x.Rouge1);
            var (r2, r2s) = MS(x => x.Rouge2);
            var (rl, rls) = MS(x => x.RougeL);
            var (b, bs) = MS(x => x.Bleu4);
            return new Row(g.Key.Method, g.Key.Setting, p.Count, r1, r1s, r2, r2s, rl, rls, Bootstrap.Mean(PerExample(p, x => x.RougeLPerExample)),
                b, bs, Bootstrap.Mean(PerExample(p, x => x.Bleu4PerExample)), p.Average(r => r.Scores.Loss));
        }).ToList();
        int Order(string setting) => setting == ZeroShot ? 0 : setting.StartsWith("local:") ? 1 : setting == Federated ? 2 : 3;
        return rows.OrderBy(r => r.Method == "none" ? "" : r.Method).ThenBy(r => Order(r.Setting)).ThenBy(r => r.Setting, StringComparer.Ordinal).ToList();
    }

    /// <summary>
    /// The paper's claim per PEFT method and metric: federated above every single party and above the zero-shot base,
    /// and within one point of centralized. Differences are paired over examples (scores averaged over seeds).
    /// </summary>
    public static List<Claim> Claims(IReadOnlyList<RunResult> runs)
    {
        var claims = new List<Claim>();
        var zero = runs.Where(r => r.Setting == ZeroShot).ToList();
        var metrics = new List<(string Name, Func<Scores, double[]> Values, double Tolerance, string Unit)>
        {
            ("ROUGE-L", x => x.RougeLPerExample, 1, "point"), ("BLEU-4", x => x.Bleu4PerExample, 1, "point"),
        };
        if (runs.All(r => r.Scores.Likelihood is not null))
        {
            metrics.Add(("gloss acc_norm %", x => x.Likelihood!.GlossAccNorm, 1, "point"));
            // Lower is better: negated, so "above" means fewer bits.
            metrics.Add(("−bits/byte", x => [.. x.Likelihood!.BitsPerByte.Select(v => -v)], 0.05, "bits/byte"));
        }
        foreach (var method in runs.Where(r => r.Setting == Federated && r.Method is not ("none" or "full")).Select(r => r.Method).Distinct())
            foreach (var (metric, f, tolerance, unit) in metrics)
            {
                var mine = runs.Where(r => r.Method == method).ToList();
                var fed = PerExample(mine.Where(r => r.Setting == Federated), f);
                var others = mine.Where(r => r.Setting.StartsWith("local:")).GroupBy(r => r.Setting).OrderBy(g => g.Key, StringComparer.Ordinal)
                    .Select(g => (Label(g.Key), g.AsEnumerable(), "above")).ToList();
                if (zero.Count > 0) others.Add((ZeroShot, zero, "above"));
                var within = $"within {tolerance.ToString(CultureInfo.InvariantCulture)} {unit}";
                if (mine.Any(r => r.Setting == Centralized)) others.Add((Centralized, mine.Where(r => r.Setting == Centralized), within));
                foreach (var (versus, other, expectation) in others)
                {
                    var d = Bootstrap.PairedDifference(fed, PerExample(other, f));
                    claims.Add(new Claim(method, metric, versus, d, expectation, Verdict(d, expectation == "above", tolerance)));
                }
            }
        return claims;
    }

    static double Std(IReadOnlyList<double> xs)
    {
        if (xs.Count < 2) return 0;
        var m = xs.Average();
        return Math.Sqrt(xs.Sum(x => (x - m) * (x - m)) / (xs.Count - 1));
    }

    public static void Write(ExperimentResult r, string outDir)
    {
        var json = new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
        var rows = Summarize(r.Runs);
        var claims = Claims(r.Runs);
        File.WriteAllText(Path.Combine(outDir, "results.json"), JsonSerializer.Serialize(new { summary = rows, claims, result = r }, json));
        File.WriteAllText(Path.Combine(outDir, "results.md"), Markdown(r, rows, claims));
        var fed = r.Communication.Where(c => c.BytesPerRound.Length > 0).ToList();
        if (fed.Count > 0)
        {
            LineChart.Save(Path.Combine(outDir, "bytes_per_round.png"), "bytes exchanged per round (all parties, up + down)", "round", "MiB",
                fed.Select(c => new Series(c.Method, Enumerable.Range(1, c.BytesPerRound.Length).Select(i => (double)i).ToArray(), c.BytesPerRound.Select(b => b / 1048576).ToArray())));
            LineChart.Save(Path.Combine(outDir, "eval_loss_per_round.png"), "federated: parties' dev loss of the global state they receive", "round", "loss",
                fed.Select(c => new Series(c.Method, Enumerable.Range(1, c.MeanEvalLossPerRound.Length).Select(i => (double)i).ToArray(), c.MeanEvalLossPerRound)));
        }
        var zero = rows.FirstOrDefault(x => x.Setting == ZeroShot);
        var bars = new List<BarValue>();
        foreach (var method in rows.Where(x => x.Method is not ("none" or "full")).Select(x => x.Method).Distinct())
        {
            if (zero is not null) bars.Add(new BarValue(method, ZeroShot, zero.RougeL, zero.RougeLInterval.Low, zero.RougeLInterval.High));
            foreach (var x in rows.Where(x => x.Method == method))
                bars.Add(new BarValue(method, Label(x.Setting), x.RougeL, x.RougeLInterval.Low, x.RougeLInterval.High));
        }
        var set = r.Settings.EvaluateOn == EvaluationSet.Test ? "all-domain test set" : "pooled dev sets";
        if (bars.Count > 0)
            BarChart.Save(Path.Combine(outDir, "rougeL_by_setting.png"), $"ROUGE-L on the {set} (95 % bootstrap intervals, {r.Settings.Seeds.Length} seed(s))", "ROUGE-L", bars);
        // The federated job's per-round losses, beside the comparison.
        if (r.LossPlot is not null) File.Copy(r.LossPlot, Path.Combine(outDir, "loss.png"), overwrite: true);
    }

    static string F(double x) => x.ToString("F2", CultureInfo.InvariantCulture);
    static string PM(double m, double s, int n) => n > 1 ? $"{F(m)} ± {F(s)}" : F(m);
    static string CI(Interval i) => $"[{F(i.Low)}, {F(i.High)}]";
    static string Signed(double x) => (x >= 0 ? "+" : "−") + F(Math.Abs(x));

    public static string Markdown(ExperimentResult r, List<Row> rows, List<Claim> claims)
    {
        var s = r.Settings;
        var b = r.Base;
        var md = new StringBuilder();
        var set = s.EvaluateOn == EvaluationSet.Test ? "all-domain test set" : "parties' pooled dev sets (tuning run: not the test set)";
        md.AppendLine("# FATE-LLM experiment at small scale: WordNet definition generation");
        md.AppendLine();
        md.AppendLine($"Base: zoo model `{b.Name}` ({b.Arch}, {b.Parameters:N0} parameters, {b.Layers} blocks, {b.Tokenizer} tokenizer of {b.Vocab:N0}) pretrained here from scratch " +
            $"on {b.TrainExamples:N0} public WordNet glosses of domains no party holds: {b.Steps} steps in {b.WallSeconds / 60:F1} min; dev perplexity " +
            $"{F(b.DevPerplexityPerToken)} per token, {b.DevPerplexityPerByte:F3} per byte.");
        md.AppendLine($"Data: {string.Join(", ", r.DataCounts.Select(kv => $"{kv.Key} {kv.Value}"))}. Parties are non-IID by domain; the test set covers all of them equally.");
        md.AppendLine($"Every setting makes the same number of local passes ({s.Rounds} rounds × {s.LocalEpochs} local epoch = {s.Rounds * s.LocalEpochs} epochs over its data); " +
            $"learning rate {s.LoraLearningRate:G3} (LoRA r = 8 on q/v), {s.PrefixLearningRate:G3} (P-Tuning v2, 16 virtual tokens), batch {s.BatchSize}; seeds {string.Join(", ", s.Seeds)}; " +
            $"greedy decoding, ≤ {s.MaxNewTokens} new tokens. Federated runs go through the Akka federation (in-process cluster, FedAvg).");
        md.AppendLine();
        md.AppendLine($"## Scores on the {set} ({r.Examples.Count} examples)");
        md.AppendLine();
        md.AppendLine("Mean ± std over seeds; in brackets the 95 % bootstrap interval over examples (each example's score averaged over seeds, 2,000 resamples).");
        md.AppendLine();
        md.AppendLine("| method | setting | seeds | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-L 95 % | BLEU-4 | BLEU-4 95 % | loss |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var x in rows)
            md.AppendLine($"| {x.Method} | {Label(x.Setting)} | {x.Seeds} | {PM(x.Rouge1, x.Rouge1Std, x.Seeds)} | {PM(x.Rouge2, x.Rouge2Std, x.Seeds)} | " +
                $"{PM(x.RougeL, x.RougeLStd, x.Seeds)} | {CI(x.RougeLInterval)} | {PM(x.Bleu4, x.Bleu4Std, x.Seeds)} | {CI(x.Bleu4Interval)} | {x.Loss:F3} |");
        md.AppendLine();
        LikelihoodTable(r, md);
        md.AppendLine("## The paper's claim, checked");
        md.AppendLine();
        md.AppendLine("Federated minus each other setting, paired over the same examples (95 % bootstrap interval). \"Above\" holds when the interval is above 0; " +
            "\"within\" centralized holds when the difference is at least minus the tolerance (1 point of ROUGE, BLEU or accuracy; 0.05 bits per byte). " +
            "−bits/byte is the held-out glosses' bits per byte negated, so that higher is better there too.");
        md.AppendLine();
        md.AppendLine("| method | metric | federated vs | difference | 95 % | claim | verdict |");
        md.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var c in claims)
            md.AppendLine($"| {c.Method} | {c.Metric} | {c.Versus} | {Signed(c.Difference.Estimate)} | {CI(c.Difference)} | {c.Expectation} | {c.Verdict} |");
        md.AppendLine();
        md.AppendLine("## ROUGE-L per domain (mean over seeds)");
        md.AppendLine();
        var domains = r.Runs.SelectMany(x => x.Scores.RougeLByDomain.Keys).Distinct().Order().ToList();
        md.AppendLine("| method | setting | " + string.Join(" | ", domains) + " |");
        md.AppendLine("|---|---|" + string.Concat(domains.Select(_ => "---|")));
        foreach (var g in Settings(r.Runs))
            md.AppendLine($"| {g.Key.Method} | {Label(g.Key.Setting)} | " + string.Join(" | ", domains.Select(d => F(g.Average(x => x.Scores.RougeLByDomain.GetValueOrDefault(d))))) + " |");
        md.AppendLine();
        Generations(r, md);
        md.AppendLine("## Communication (measured through the federation)");
        md.AppendLine();
        md.AppendLine("| method | trainable params | % of model | bytes per party per round (up) | total bytes (up + down, all rounds) |");
        md.AppendLine("|---|---|---|---|---|");
        foreach (var c in r.Communication)
            md.AppendLine($"| {c.Method} | {c.TrainableParameters:N0} | {c.PercentOfModel:F3} % | {c.BytesPerPartyPerRound:N0} | {c.TotalBytes:N0} |");
        md.AppendLine();
        md.AppendLine("## Trainable share for published configs (analytic, from config alone)");
        md.AppendLine();
        md.AppendLine("Paper (ChatGLM-6B): LoRA 0.059 %, P-Tuning v2 0.473 %.");
        md.AppendLine();
        md.AppendLine("| model | parameters | LoRA | LoRA params | LoRA % | P-Tuning v2 | prefix params | prefix % |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var a in r.Analytic)
            md.AppendLine($"| {a.Model} | {a.Parameters:N0} | {a.LoraSetting} | {a.LoraParameters:N0} | {a.LoraPercent:F3} % | {a.PrefixSetting} | {a.PrefixParameters:N0} | {a.PrefixPercent:F3} % |");
        md.AppendLine();
        md.AppendLine($"Wall time: {r.Seconds / 60:F1} min.");
        return md.ToString();
    }

    /// <summary>The likelihood tasks per setting (when the experiment ran them): accuracy in percent and bits per byte, with 95 % intervals over documents.</summary>
    static void LikelihoodTable(ExperimentResult r, StringBuilder md)
    {
        if (r.Runs.Any(x => x.Scores.Likelihood is null)) return;
        var first = r.Runs[0].Scores.Likelihood!;
        md.AppendLine($"## Likelihood tasks on the same synsets (`fate-llm evaluate`'s built-in WordNet tasks)");
        md.AppendLine();
        md.AppendLine($"Choose among 4 by log-likelihood (chance 25 %): the definition of a synset given the attributes the experiments prompt with " +
            $"(`wordnet_gloss`, {first.GlossAcc.Length} documents), the word of a definition (`wordnet_word`, {first.WordAcc.Length}), the hypernym of a word " +
            $"(`wordnet_kind`, {first.KindAcc.Length}); and bits per byte of the held-out definitions (`wordnet_gloss_ppl`, lower is better). Mean over seeds, " +
            "95 % bootstrap interval over documents (each document's score averaged over seeds).");
        md.AppendLine();
        md.AppendLine("| method | setting | seeds | gloss acc % | gloss acc_norm % | word acc % | kind acc % | bits/byte |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var row in Summarize(r.Runs))
        {
            var p = r.Runs.Where(x => x.Method == row.Method && x.Setting == row.Setting).ToList();
            md.AppendLine($"| {row.Method} | {Label(row.Setting)} | {row.Seeds} | {LikelihoodCell(p, x => x.GlossAcc)} | {LikelihoodCell(p, x => x.GlossAccNorm)} | " +
                $"{LikelihoodCell(p, x => x.WordAcc)} | {LikelihoodCell(p, x => x.KindAcc)} | {LikelihoodCell(p, x => x.BitsPerByte)} |");
        }
        md.AppendLine();
    }

    /// <summary>The same few prompts (two per domain) through every setting of the first method and seed: what federated learning changed.</summary>
    static void Generations(ExperimentResult r, StringBuilder md)
    {
        var method = r.Settings.Methods.FirstOrDefault();
        var seed = r.Settings.Seeds.FirstOrDefault();
        var chosen = r.Examples.Select((e, i) => (e, i)).GroupBy(x => x.e.Domain).OrderBy(g => g.Key, StringComparer.Ordinal)
            .SelectMany(g => g.Take(2)).Select(x => x.i).ToList();
        var settings = r.Runs.Where(x => x.Setting == ZeroShot || (x.Method == method && x.Seed == seed))
            .OrderBy(x => x.Setting == ZeroShot ? 0 : x.Setting.StartsWith("local:") ? 1 : x.Setting == Federated ? 2 : 3).ThenBy(x => x.Setting, StringComparer.Ordinal).ToList();
        if (chosen.Count == 0 || settings.Count == 0) return;
        md.AppendLine($"## Example generations ({method}, seed {seed}; greedy)");
        md.AppendLine();
        static string Cell(string t) => t.Replace("|", "\\|").Replace("\n", " ");
        foreach (var i in chosen)
        {
            var e = r.Examples[i];
            md.AppendLine($"**`{Cell(e.Prompt)}`** — reference: *{Cell(e.Reference)}*");
            md.AppendLine();
            md.AppendLine("| setting | generation | ROUGE-L |");
            md.AppendLine("|---|---|---|");
            foreach (var x in settings)
                md.AppendLine($"| {Label(x.Setting)} | {Cell(x.Scores.Predictions[i])} | {F(x.Scores.RougeLPerExample[i])} |");
            md.AppendLine();
        }
    }
}
