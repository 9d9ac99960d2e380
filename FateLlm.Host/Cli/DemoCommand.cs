using System.CommandLine;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Spectre.Console;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>
/// The embedded default: seed + arbiter + one party per domain as separate actor systems on 127.0.0.1 in this
/// process, a tiny model, the non-IID demo corpus, a few rounds of FedAvg LoRA, live progress and a final table.
/// </summary>
internal static class DemoCommand
{
    public static Command Build()
    {
        var outDir = Opt("--out", "Working folder (model, data, node state, outputs)", Path.Combine("runs", "demo"));
        var rounds = Opt("--rounds", "Federated rounds", 3);
        var epochs = Opt("--local-epochs", "Local epochs per round", 2);
        var dropRate = Opt("--drop-rate", "Fraction of transfer chunks to drop (fault injection)", 0.0);
        return new Command("demo", "Run a whole federation on this machine: 3 parties, FedAvg LoRA, live progress, final table").With(p =>
        {
            var root = Path.GetFullPath(p.GetValue(outDir)!);
            var n = TrainingCommands.Positive(p.GetValue(rounds), "--rounds");
            if (p.GetValue(dropRate) is < 0 or >= 1) throw new UsageException("--drop-rate must be in [0, 1)");
            Run(root, n, TrainingCommands.Positive(p.GetValue(epochs), "--local-epochs"), p.GetValue(dropRate)).GetAwaiter().GetResult();
        }, outDir, rounds, epochs, dropRate);
    }

    static async Task Run(string root, int rounds, int localEpochs, double dropRate)
    {
        var model = Path.Combine(root, "model");
        if (!File.Exists(Path.Combine(model, HfCheckpoint.SingleFile)))
        {
            var m = CausalLm.Create(ModelPresets.Create("llama", "tiny"));
            m.InitializeWeights(42);
            HfCheckpoint.Save(m, model);
            ByteTokenizer.Save(model);
        }
        var (parties, _) = DemoCorpus.Write(Path.Combine(root, "data"), repeats: 2);
        var nodes = Path.Combine(root, "nodes");
        if (Directory.Exists(nodes)) Directory.Delete(nodes, recursive: true);
        var config = ConfigurationFactory.ParseString($"""
            # The demo prints its own progress; node shutdown chatter would only bury it.
            akka.loglevel = OFF
            akka.stdout-loglevel = OFF
            akka.remote.log-remote-lifecycle-events = off
            akka.cluster.split-brain-resolver.stable-after = 5s
            akka.cluster.sharding.retry-interval = 300ms
            fate-llm.round.resend-interval = 1s
            fate-llm.transfer.drop-rate = {dropRate.ToString(System.Globalization.CultureInfo.InvariantCulture)}
            fate-llm.transfer.chunk-size = 32KiB
            fate-llm.transfer.chunk-timeout = 1s
            """);
        AnsiConsole.MarkupLine($"[bold]FateLlm demo[/]: seed + arbiter + {parties.Count} parties on 127.0.0.1 (one process, separate actor systems)");
        var datasets = parties.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, string>)new Dictionary<string, string>
        {
            ["train"] = kv.Value.Train, ["dev"] = kv.Value.Dev,
        });
        await using var fed = await LocalFederation.StartAsync(nodes, datasets, config);
        AnsiConsole.MarkupLine($"cluster up, seed at {fed.SeedAddress}");
        var jobId = "demo-" + DateTime.UtcNow.ToString("HHmmss");
        var spec = new JobSpec
        {
            JobId = jobId, ModelPath = model, Parties = parties.Keys.Select(o => new PartySpec(o, "train", "dev")).ToArray(),
            Rounds = rounds, LocalEpochs = localEpochs, Quorum = 2, RoundDeadlineSeconds = 120, BatchSize = 8, LearningRate = 5e-3,
            LoraR = 8, LoraTargets = ["all-linear"], LoraDropout = 0, EvalLimit = 8, EvalMaxNewTokens = 24, MaxTotalTokens = 96,
            OutputDir = Path.Combine(root, "output", jobId),
        };
        if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"demo job rejected: {r.Reason}");
        AnsiConsole.MarkupLine($"job [bold]{jobId}[/] submitted: {rounds} rounds of FedAvg LoRA over parties {string.Join(", ", parties.Keys)}");
        int printed = 0;
        var final = await fed.WaitAsync(jobId, TimeSpan.FromMinutes(15), progress: new Progress(s =>
        {
            for (; printed < s.Rounds.Length; printed++) JobCommands.PrintRound(s.Rounds[printed], s.TotalRounds);
        }));
        for (; printed < final.Rounds.Length; printed++) JobCommands.PrintRound(final.Rounds[printed], final.TotalRounds);
        if (final.State != JobState.Completed) throw new InvalidOperationException($"demo job {final.State}: {final.Reason}");
        Render(final);
        AnsiConsole.MarkupLine($"outputs (PEFT adapter, rounds.jsonl, events.jsonl, evaluation.json) in [bold]{final.OutputDir}[/]");
    }

    sealed class Progress(Action<JobStatus> report) : IProgress<JobStatus>
    {
        public void Report(JobStatus value) => report(value);
    }

    static void Render(JobStatus s)
    {
        var rounds = new Table().Title("per round").AddColumns("round", "party", "samples", "train loss", "eval loss (global in)", "sent ↑", "received ↓", "retransmits");
        foreach (var r in s.Rounds)
            foreach (var p in r.Parties)
                rounds.AddRow(r.Round.ToString(), p.Org, p.Samples.ToString(), p.Succeeded ? $"{p.FirstLoss:F3} → {p.LastLoss:F3}" : "[red]dropped[/]",
                    p.EvalLoss?.ToString("F3") ?? "-", Bytes(p.UploadBytes), Bytes(p.DownloadBytes), p.Retransmissions.ToString());
        AnsiConsole.Write(rounds);
        var eval = new Table().Title("final global adapter, each party's dev set").AddColumns("party", "loss", "ppl", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4");
        foreach (var e in s.FinalEvaluation)
            eval.AddRow(e.Org, $"{e.Loss:F3}", $"{e.Perplexity:F2}", $"{e.Rouge1:F2}", $"{e.Rouge2:F2}", $"{e.RougeL:F2}", $"{e.Bleu4:F2}");
        AnsiConsole.Write(eval);
        var up = s.Rounds.SelectMany(r => r.Parties).Sum(p => p.UploadBytes);
        var down = s.Rounds.SelectMany(r => r.Parties).Sum(p => p.DownloadBytes);
        AnsiConsole.MarkupLine($"bytes sent by parties: {Bytes(up)}; received by parties: {Bytes(down)}");
    }

    static string Bytes(long b) => b >= 1 << 20 ? $"{b / 1048576.0:F2} MiB" : b >= 1024 ? $"{b / 1024.0:F1} KiB" : $"{b} B";
}
