using System.CommandLine;
using System.Diagnostics;
using FateLlm.Training.Algorithms.KSeed;
using FateLlm.Training.Models;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary><c>fate-llm fedkseed replay</c>: rebuild a FedKSeed job's model anywhere from the base model and the job's history.</summary>
internal static class KSeedCommands
{
    public static Command Build(Terminal t)
    {
        var model = Required<string>("--model", "The job's base model folder (HF checkpoint)");
        var history = Required<string>("--history", "The job's history folder (<output>/history: fedkseed.json and round-NNNN.ksr)");
        var output = Required<string>("--out", "Folder for the rebuilt model (HF checkpoint with the base's tokenizer)");
        var threads = Opt("--threads", "Threads for the replay (the result is the same bits for any count)", 2);
        var replay = new Command("replay", "Replay a FedKSeed history onto its base model; prints the rebuilt weights' digest").With(p =>
        {
            if (p.GetValue(threads) < 1) throw new UsageException($"--threads {p.GetValue(threads)} must be ≥ 1");
            var sw = Stopwatch.StartNew();
            var (manifest, rounds) = FedKSeedAlgorithm.ReadHistory(p.GetValue(history)!);
            FedKSeedAlgorithm.Export(p.GetValue(model)!, manifest, rounds, p.GetValue(output)!, p.GetValue(threads));
            t.Out.WriteLine($"replayed {rounds.Count} rounds ({rounds.Sum(r => r.Entries.Count)} seed terms) onto {manifest.Parameters:N0} parameters in {sw.Elapsed.TotalSeconds:F1} s");
            t.Out.WriteLine($"weights {HfCheckpoint.WeightsDigest(p.GetValue(output)!)}");
        }, model, history, output, threads);
        var cmd = new Command("fedkseed", "FedKSeed: zeroth-order federated tuning with seeds");
        cmd.Subcommands.Add(replay);
        return cmd;
    }
}
