using System.Globalization;
using System.Text;
using System.Text.Json;
using FateLlm.Training.Reporting;

namespace FateLlm.Host.Experiments;

/// <summary>results.json, results.md (tables) and PNG plots for an experiment.</summary>
public static class ExperimentReport
{
    public sealed record Row(string Method, string Setting, int N, double Rouge1, double Rouge1Std, double Rouge2, double Rouge2Std,
        double RougeL, double RougeLStd, double Bleu4, double Bleu4Std, double Loss);

    /// <summary>Mean ± sample std over seeds; "local (mean of parties)" averages each party-alone run of a seed first.</summary>
    public static List<Row> Summarize(IReadOnlyList<RunResult> runs)
    {
        var groups = runs.GroupBy(r => (r.Method, Setting: r.Setting.StartsWith("local:") ? "local (mean of parties)" : r.Setting))
            .Select(g => (g.Key, PerSeed: g.GroupBy(r => r.Seed).Select(s => Mean(s.Select(r => r.Scores))).ToList()));
        var rows = groups.Select(g =>
        {
            var p = g.PerSeed;
            (double, double) MS(Func<Scores, double> f) => (p.Average(f), Std(p.Select(f).ToList()));
            var (r1, r1s) = MS(x => x.Rouge1);
            var (r2, r2s) = MS(x => x.Rouge2);
            var (rl, rls) = MS(x => x.RougeL);
            var (b, bs) = MS(x => x.Bleu4);
            return new Row(g.Key.Method, g.Key.Setting, p.Count, r1, r1s, r2, r2s, rl, rls, b, bs, p.Average(x => x.Loss));
        }).ToList();
        // Best single party per seed: the strongest "local" competitor.
        foreach (var m in runs.Where(r => r.Setting.StartsWith("local:")).GroupBy(r => r.Method))
        {
            var best = m.GroupBy(r => r.Seed).Select(s => s.MaxBy(r => r.Scores.RougeL)!.Scores).ToList();
            rows.Add(new Row(m.Key, "local (best party)", best.Count, best.Average(x => x.Rouge1), Std(best.Select(x => x.Rouge1).ToList()),
                best.Average(x => x.Rouge2), Std(best.Select(x => x.Rouge2).ToList()), best.Average(x => x.RougeL), Std(best.Select(x => x.RougeL).ToList()),
                best.Average(x => x.Bleu4), Std(best.Select(x => x.Bleu4).ToList()), best.Average(x => x.Loss)));
        }
        string[] order = ["zero-shot", "local (mean of parties)", "local (best party)", "federated", "centralized"];
        return rows.OrderBy(r => r.Method == "none" ? "" : r.Method).ThenBy(r => Array.IndexOf(order, r.Setting)).ToList();
    }

    static Scores Mean(IEnumerable<Scores> xs)
    {
        var l = xs.ToList();
        return new Scores(l.Average(x => x.Rouge1), l.Average(x => x.Rouge2), l.Average(x => x.RougeL), l.Average(x => x.Bleu4), l.Average(x => x.Loss),
            new Dictionary<string, double>());
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
        File.WriteAllText(Path.Combine(outDir, "results.json"), JsonSerializer.Serialize(new { summary = rows, result = r }, json));
        File.WriteAllText(Path.Combine(outDir, "results.md"), Markdown(r, rows));
        var fed = r.Communication.Where(c => c.BytesPerRound.Length > 0).ToList();
        if (fed.Count > 0)
        {
            LineChart.Save(Path.Combine(outDir, "bytes_per_round.png"), "bytes exchanged per round (all parties, up + down)", "round", "MiB",
                fed.Select(c => new Series(c.Method, Enumerable.Range(1, c.BytesPerRound.Length).Select(i => (double)i).ToArray(), c.BytesPerRound.Select(b => b / 1048576).ToArray())));
            LineChart.Save(Path.Combine(outDir, "eval_loss_per_round.png"), "federated: parties' dev loss of the global adapter they receive", "round", "loss",
                fed.Select(c => new Series(c.Method, Enumerable.Range(1, c.MeanEvalLossPerRound.Length).Select(i => (double)i).ToArray(), c.MeanEvalLossPerRound)));
        }
        var settings = rows.Where(x => x.Method != "none").ToList();
        LineChart.Save(Path.Combine(outDir, "rougeL_by_setting.png"), "ROUGE-L on the all-domain test set (x: 1 zero-shot, 2 local mean, 3 local best, 4 federated, 5 centralized)",
            "setting", "ROUGE-L", settings.GroupBy(x => x.Method).Select(g => new Series(g.Key,
                g.Select(x => (double)(Array.IndexOf(["zero-shot", "local (mean of parties)", "local (best party)", "federated", "centralized"], x.Setting) + 1)).ToArray(),
                g.Select(x => x.RougeL).ToArray())));
    }

    static string F(double x) => x.ToString("F2", CultureInfo.InvariantCulture);
    static string PM(double m, double s, int n) => n > 1 ? $"{F(m)} ± {F(s)}" : F(m);

    public static string Markdown(ExperimentResult r, List<Row> rows)
    {
        var s = r.Settings;
        var md = new StringBuilder();
        md.AppendLine("# FATE-LLM experiment at small scale: WordNet definition generation");
        md.AppendLine();
        md.AppendLine($"Base: LLaMA-family `{s.Preset}` preset ({r.Base.Parameters:N0} parameters, byte tokenizer) pretrained from scratch on {r.Base.TrainExamples:N0} public WordNet " +
            $"glosses of *other* domains: {r.Base.Steps} steps in {r.Base.Seconds:F0} s, dev perplexity {F(r.Base.DevPerplexity)} per byte.");
        md.AppendLine($"Data: {string.Join(", ", r.DataCounts.Select(kv => $"{kv.Key} {kv.Value}"))}. Parties are non-IID by domain; the test set covers all of them.");
        md.AppendLine($"Every setting makes the same number of local passes ({s.Rounds} rounds × {s.LocalEpochs} local epoch = {s.Rounds * s.LocalEpochs} epochs over its data); " +
            $"seeds {string.Join(", ", s.Seeds)}; greedy decoding, ≤ {s.MaxNewTokens} new tokens. Federated runs go through the Akka federation (in-process cluster, FedAvg).");
        md.AppendLine();
        md.AppendLine("## Test set (all domains), mean ± std over seeds");
        md.AppendLine();
        md.AppendLine("| method | setting | seeds | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU-4 | loss |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var x in rows)
            md.AppendLine($"| {x.Method} | {x.Setting} | {x.N} | {PM(x.Rouge1, x.Rouge1Std, x.N)} | {PM(x.Rouge2, x.Rouge2Std, x.N)} | {PM(x.RougeL, x.RougeLStd, x.N)} | {PM(x.Bleu4, x.Bleu4Std, x.N)} | {x.Loss:F3} |");
        md.AppendLine();
        md.AppendLine("## ROUGE-L per domain (mean over seeds)");
        md.AppendLine();
        var domains = r.Runs.SelectMany(x => x.Scores.RougeLByDomain.Keys).Distinct().Order().ToList();
        md.AppendLine("| method | setting | " + string.Join(" | ", domains) + " |");
        md.AppendLine("|---|---|" + string.Concat(domains.Select(_ => "---|")));
        foreach (var g in r.Runs.GroupBy(x => (x.Method, x.Setting)))
            md.AppendLine($"| {g.Key.Method} | {g.Key.Setting} | " + string.Join(" | ", domains.Select(d => F(g.Average(x => x.Scores.RougeLByDomain.GetValueOrDefault(d))))) + " |");
        md.AppendLine();
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
}
