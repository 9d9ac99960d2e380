using System.CommandLine;
using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Trainer;
using FateLlm.Actors.Transfer;
using FateLlm.Host.Benchmarks;
using TorchSharp;
using static FateLlm.Host.Cli.CliApp;
using static TorchSharp.torch;

namespace FateLlm.Host.Cli;

/// <summary>Benchmarks print figures; they assert nothing.</summary>
internal static class BenchCommands
{
    public static Command Build(Terminal t)
    {
        var cmd = new Command("bench", "Benchmarks (figures, not tests)");
        cmd.Subcommands.Add(TrainCommand(t));
        cmd.Subcommands.Add(SecAggCommand(t));
        cmd.Subcommands.Add(WireCommand(t));
        cmd.Subcommands.Add(CodecCommand(t));
        var sizes = CliApp.Opt("--sizes", "Adapter sizes in MiB for the transfer bench", "1,16,64");
        var noRound = CliApp.Opt("--no-round", "Skip the real 3-party round", false);
        var window = CliApp.Opt("--window", "Chunks in flight per transfer", TransferSettings.Default.Window);
        var chunkKiB = CliApp.Opt("--chunk-kib", "Chunk size in KiB (≤ 4096)", TransferSettings.Default.ChunkSize >> 10);
        var config = CliApp.Opt("--config", "A real model's config.json: run a job through seed, arbiter and party processes on random bf16 weights of it", "");
        var parties = CliApp.Opt("--parties", "With --config: party processes", 3);
        var rounds = CliApp.Opt("--rounds", "With --config: rounds", 2);
        var steps = CliApp.Opt("--steps", "With --config: local steps per round (batch 1)", 4);
        var seq = CliApp.Opt("--seq", "With --config: tokens per example", 64);
        var work = CliApp.Opt("--work", "With --config: folder for the checkpoint and the runs (default: the temp folder)", "");
        var noBaseline = CliApp.Opt("--no-baseline", "With --config: skip the single-process bench train the parties' memory is compared with", false);
        cmd.Subcommands.Add(new Command("federation", "Transfer MB/s vs raw TCP, wire overhead, FedAvg vs memcpy, round overhead, rounds/s; with --config, a real-size job through processes").With(p =>
        {
            if (p.GetValue(config) is { Length: > 0 } path)
            {
                RealSizeFederationBench.Run(new RealSizeFederationBench.Options(path, TrainingCommands.Positive(p.GetValue(parties), "--parties"),
                    TrainingCommands.Positive(p.GetValue(rounds), "--rounds"), TrainingCommands.Positive(p.GetValue(steps), "--steps"),
                    TrainingCommands.Positive(p.GetValue(seq), "--seq"), p.GetValue(work) is { Length: > 0 } w ? w : null, !p.GetValue(noBaseline)), t.Out);
                return;
            }
            FederationBench.Run(ParseSizes(p.GetValue(sizes)!), p.GetValue(noRound), TransferSettings.Default with
            {
                Window = TrainingCommands.Positive(p.GetValue(window), "--window"),
                ChunkSize = Math.Min(4096, TrainingCommands.Positive(p.GetValue(chunkKiB), "--chunk-kib")) << 10,
            }, t.Out).GetAwaiter().GetResult();
        }, sizes, noRound, window, chunkKiB, config, parties, rounds, steps, seq, work, noBaseline));
        var port = CliApp.Opt("--port", "", 0);
        var rawPort = CliApp.Opt("--raw-port", "", 0);
        var dir = CliApp.Opt("--dir", "", "");
        cmd.Subcommands.Add(new Command("blob-server", "(internal) the serving process of bench federation") { Hidden = true }.With(p =>
            FederationBench.Serve(p.GetValue(port), p.GetValue(rawPort), ParseSizes(p.GetValue(sizes)!), p.GetValue(dir)!, t.Out), port, rawPort, sizes, dir));
        return cmd;
    }

    static int[] ParseSizes(string s)
    {
        try { return s.Split(',').Select(x => int.Parse(x.Trim(), System.Globalization.CultureInfo.InvariantCulture)).Where(x => x > 0).ToArray(); }
        catch (FormatException) { throw new UsageException($"--sizes '{s}' must be comma-separated MiB counts"); }
    }

    static Command SecAggCommand(Terminal t)
    {
        var parties = Opt("--parties", "Comma-separated party counts", "10,50,200");
        var length = Opt("--length", "Adapter values per party (gpt2-small LoRA r=8 on c_attn ≈ 295k)", 100_000);
        var dropout = Opt("--dropout", "Fraction of parties that drop after sharing keys", 0.05);
        return new Command("secagg", "SecAgg+ masking/unmasking MB/s and per-round overhead vs plain FedAvg for 10, 50, 200 parties").With(p =>
            SecAggBench.Run(p.GetValue(parties)!.Split(',').Select(x => int.TryParse(x, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var v) && v >= 3 ? v : throw new UsageException($"--parties '{x}' must be integers ≥ 3")).ToArray(),
                TrainingCommands.Positive(p.GetValue(length), "--length"), p.GetValue(dropout), t.Out), parties, length, dropout);
    }

    static Command CodecCommand(Terminal t)
    {
        var mib = CliApp.Opt("--mib", "Size of the fp32 delta in MiB", 64);
        var repeats = CliApp.Opt("--repeats", "Timed repeats (medians are printed)", 5);
        var block = CliApp.Opt("--block-size", "Values per int8/NF4 scale", 64);
        var topk = CliApp.Opt("--topk-fraction", "Fraction of values top-k keeps", 0.01);
        return new Command("codec", "Encode and decode GB/s of each update compression scheme on one thread against memcpy, with size and error").With(p =>
            CodecBench.Run(new CodecBench.Options(TrainingCommands.Positive(p.GetValue(mib), "--mib"), TrainingCommands.Positive(p.GetValue(repeats), "--repeats"),
                TrainingCommands.Positive(p.GetValue(block), "--block-size"), p.GetValue(topk)), t.Out), mib, repeats, block, topk);
    }

    static Command WireCommand(Terminal t)
    {
        var items = Opt("--items", "Elements in each list and map of the sample messages (rounds, parties, shares)", 1);
        var iterations = Opt("--iterations", "Encode+decode per timing", 2000);
        var repeats = Opt("--repeats", "Timings per serializer and kind (the median is printed)", 5);
        var fuzz = Opt("--fuzz", "Mutated payloads per message kind through the decoder (0: none)", 0);
        var seed = Opt("--seed", "Seed of the mutations", 7);
        return new Command("wire", "Encoded size and encode+decode time per message kind, the wire schema against Hyperion; --fuzz N mutated payloads per kind").With(p =>
            WireBench.Run(new WireBench.Options(TrainingCommands.Positive(p.GetValue(items), "--items"), TrainingCommands.Positive(p.GetValue(iterations), "--iterations"),
                TrainingCommands.Positive(p.GetValue(repeats), "--repeats"), Math.Max(0, p.GetValue(fuzz)), p.GetValue(seed)), t.Out), items, iterations, repeats, fuzz, seed);
    }

    static Command TrainCommand(Terminal t)
    {
        var arch = Opt("--arch", "gpt2 | llama", "gpt2");
        var preset = Opt("--preset", "Model preset", "gpt2-small");
        var peft = Opt("--peft", "lora | ptuning-v2 | full", "lora");
        var threads = Opt("--threads", "Torch threads (0 = all cores)", 0);
        var steps = Opt("--steps", "Measured steps", 5);
        var warmupSteps = Opt("--warmup", "Unmeasured warm-up steps", 1);
        var batch = Opt("--batch", "Sequences per step", 4);
        var seq = Opt("--seq", "Tokens per sequence", 128);
        var loraTargets = Opt("--lora-targets", "LoRA targets", "");
        var config = Opt("--config", "A HF config.json: write a random checkpoint of that exact shape, then time load, generation and LoRA steps with peak RSS", "");
        var dtype = Opt("--dtype", "With --config: dtype of the frozen base (bf16 | fp16 | fp32); adapters train in fp32", "bf16");
        var work = Opt("--work", "With --config: folder for the generated checkpoint (reused while config and dtype match)", "");
        var genTokens = Opt("--gen-tokens", "With --config: tokens to generate greedily", 16);
        var loraR = Opt("--lora-r", "With --config: LoRA rank", 8);
        var json = Opt("--json", "With --config: one JSON object instead of the table", false);
        return new Command("train", "Time training steps: ms/step, tokens/s, FLOPs, achieved GFLOP/s vs sgemm; with --config, a real-size checkpoint's load, RSS and steps").With(p =>
        {
            TorchRuntime.SetThreads(p.GetValue(threads));
            if (p.GetValue(config) is { Length: > 0 } configPath)
            {
                var d = p.GetValue(dtype) switch
                {
                    "bf16" => ScalarType.BFloat16, "fp16" => ScalarType.Float16, "fp32" => ScalarType.Float32,
                    var other => throw new UsageException($"--dtype '{other}' must be bf16, fp16 or fp32"),
                };
                CheckpointBench.Run(new CheckpointBench.Options(configPath, d, p.GetValue(work) is { Length: > 0 } w ? w : null,
                    TrainingCommands.Positive(p.GetValue(batch), "--batch"), TrainingCommands.Positive(p.GetValue(seq), "--seq"),
                    TrainingCommands.Positive(p.GetValue(steps), "--steps"), p.GetValue(warmupSteps), p.GetValue(genTokens),
                    TrainingCommands.Positive(p.GetValue(loraR), "--lora-r"),
                    p.GetValue(loraTargets)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), p.GetValue(json)), t.Out);
                return;
            }
            TrainBench.Run(ModelPresets.Create(p.GetValue(arch)!, p.GetValue(preset)!), p.GetValue(preset)!,
                TrainingCommands.ParseEnum(() => PeftConfig.ParseMethod(p.GetValue(peft)!)),
                p.GetValue(loraTargets)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                p.GetValue(batch), p.GetValue(seq), p.GetValue(warmupSteps), TrainingCommands.Positive(p.GetValue(steps), "--steps"), t.Out);
        }, arch, preset, peft, threads, steps, warmupSteps, batch, seq, loraTargets, config, dtype, work, genTokens, loraR, json);
    }
}
