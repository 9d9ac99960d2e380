using System.CommandLine;
using FateLlm.Actors.Jobs;
using FateLlm.Host.Experiments;
using Spectre.Console;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>
/// <c>demo</c> (the embedded default) and <c>experiment paper</c>: the FATE-LLM experiment on WordNet through an
/// in-process federation (seed + arbiter + 3 parties as separate actor systems on 127.0.0.1).
/// </summary>
internal static class DemoCommand
{
    public static Command Build()
    {
        var outDir = Opt("--out", "Working folder (data, cached base model, node state, outputs)", Path.Combine("runs", "demo"));
        var rounds = Opt("--rounds", "Federated rounds", 3);
        return new Command("demo", "Federated LoRA on WordNet with 3 parties: live progress, then local vs federated vs centralized").With(p =>
        {
            var s = ExperimentSettings.Demo(Path.GetFullPath(p.GetValue(outDir)!)) with { Rounds = TrainingCommands.Positive(p.GetValue(rounds), "--rounds") };
            AnsiConsole.MarkupLine("[bold]FateLlm demo[/]: WordNet definition generation, 3 organizations with non-IID domains, FedAvg LoRA");
            Run(s);
        }, outDir, rounds);
    }

    public static Command Experiment()
    {
        var quick = Opt("--quick", "The quick variant (3 seeds, 500 examples per party, 3 rounds; ≈ 30 min on 2 cores)", false);
        var outDir = Opt("--out", "Working folder", Path.Combine("runs", "paper"));
        var seeds = Opt("--seeds", "Comma-separated seeds", "1,2,3");
        var paper = new Command("paper", "Reproduce the FATE-LLM comparison: zero-shot, local, federated, centralized; LoRA and P-Tuning v2; communication").With(p =>
        {
            var dir = Path.GetFullPath(p.GetValue(outDir)!);
            var s = p.GetValue(quick) ? ExperimentSettings.Quick(dir) : ExperimentSettings.Full(dir);
            try { s = s with { Seeds = p.GetValue(seeds)!.Split(',').Select(int.Parse).ToArray() }; }
            catch (FormatException) { throw new UsageException($"--seeds '{p.GetValue(seeds)}' must be comma-separated integers"); }
            Run(s);
        }, quick, outDir, seeds);
        var cmd = new Command("experiment", "Experiments");
        cmd.Subcommands.Add(paper);
        return cmd;
    }

    static void Run(ExperimentSettings s)
    {
        var printed = new Dictionary<string, int>();
        var progress = new Progress(st =>
        {
            var n = printed.GetValueOrDefault(st.JobId);
            for (; n < st.Rounds.Length; n++)
            {
                AnsiConsole.MarkupLine($"[grey]{st.JobId}[/]");
                JobCommands.PrintRound(st.Rounds[n], st.TotalRounds);
            }
            printed[st.JobId] = n;
        });
        var result = new PaperExperiment(s, line => AnsiConsole.WriteLine(line)).RunAsync(progress).GetAwaiter().GetResult();
        ExperimentReport.Write(result, s.OutDir);
        Render(result);
        AnsiConsole.MarkupLine($"results.md, results.json and plots in [bold]{s.OutDir}[/] ({result.Seconds / 60:F1} min)");
    }

    sealed class Progress(Action<JobStatus> report) : IProgress<JobStatus>
    {
        public void Report(JobStatus value) => report(value);
    }

    static void Render(ExperimentResult r)
    {
        var table = new Table().Title("all-domain test set: local vs federated vs centralized")
            .AddColumns("method", "setting", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4", "loss");
        foreach (var x in ExperimentReport.Summarize(r.Runs))
            table.AddRow(x.Method, x.Setting, $"{x.Rouge1:F2}", $"{x.Rouge2:F2}", $"{x.RougeL:F2}", $"{x.Bleu4:F2}", $"{x.Loss:F3}");
        AnsiConsole.Write(table);
        var comm = new Table().Title("communication").AddColumns("method", "trainable params", "% of model", "sent per party per round", "total (up + down)");
        foreach (var c in r.Communication)
            comm.AddRow(c.Method, $"{c.TrainableParameters:N0}", $"{c.PercentOfModel:F3} %", Bytes(c.BytesPerPartyPerRound), Bytes(c.TotalBytes));
        AnsiConsole.Write(comm);
    }

    static string Bytes(long b) => b >= 1 << 20 ? $"{b / 1048576.0:F2} MiB" : b >= 1024 ? $"{b / 1024.0:F1} KiB" : $"{b} B";
}
