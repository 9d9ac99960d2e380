using System.CommandLine;
using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Trainer;
using FateLlm.Actors.Transfer;
using TorchSharp;
using static FateLlm.Host.Cli.CliApp;
using static TorchSharp.torch;

namespace FateLlm.Host.Cli;

/// <summary>Benchmarks print figures; they assert nothing.</summary>
internal static class BenchCommands
{
    public static Command Build()
    {
        var cmd = new Command("bench", "Benchmarks (figures, not tests)");
        cmd.Subcommands.Add(TrainBench());
        cmd.Subcommands.Add(SecAggBench.Build());
        var sizes = CliApp.Opt("--sizes", "Adapter sizes in MiB for the transfer bench", "1,16,64");
        var noRound = CliApp.Opt("--no-round", "Skip the real 3-party round", false);
        var window = CliApp.Opt("--window", "Chunks in flight per transfer", TransferSettings.Default.Window);
        var chunkKiB = CliApp.Opt("--chunk-kib", "Chunk size in KiB (≤ 4096)", TransferSettings.Default.ChunkSize >> 10);
        cmd.Subcommands.Add(new Command("federation", "Transfer MB/s vs raw TCP, wire overhead, FedAvg vs memcpy, round overhead, rounds/s").With(p =>
            FederationBench.Run(ParseSizes(p.GetValue(sizes)!), p.GetValue(noRound), TransferSettings.Default with
            {
                Window = TrainingCommands.Positive(p.GetValue(window), "--window"),
                ChunkSize = Math.Min(4096, TrainingCommands.Positive(p.GetValue(chunkKiB), "--chunk-kib")) << 10,
            }).GetAwaiter().GetResult(), sizes, noRound, window, chunkKiB));
        var port = CliApp.Opt("--port", "", 0);
        var rawPort = CliApp.Opt("--raw-port", "", 0);
        var dir = CliApp.Opt("--dir", "", "");
        cmd.Subcommands.Add(new Command("blob-server", "(internal) the serving process of bench federation") { Hidden = true }.With(p =>
            FederationBench.Serve(p.GetValue(port), p.GetValue(rawPort), ParseSizes(p.GetValue(sizes)!), p.GetValue(dir)!), port, rawPort, sizes, dir));
        return cmd;
    }

    static int[] ParseSizes(string s)
    {
        try { return s.Split(',').Select(x => int.Parse(x.Trim())).Where(x => x > 0).ToArray(); }
        catch (FormatException) { throw new UsageException($"--sizes '{s}' must be comma-separated MiB counts"); }
    }

    static Command TrainBench()
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
        return new Command("train", "Time training steps: ms/step, tokens/s, FLOPs, achieved GFLOP/s vs sgemm").With(p =>
        {
            var n = p.GetValue(threads);
            TorchRuntime.SetThreads(n);
            var config = ModelPresets.Create(p.GetValue(arch)!, p.GetValue(preset)!);
            var method = TrainingCommands.ParseEnum(() => PeftConfig.ParseMethod(p.GetValue(peft)!));
            int b = p.GetValue(batch), s = p.GetValue(seq), measured = TrainingCommands.Positive(p.GetValue(steps), "--steps");
            var model = CausalLm.Create(config);
            model.InitializeWeights(1);
            manual_seed(1);
            PeftModel.Apply(model, new PeftConfig
            {
                Method = method,
                LoraTargets = p.GetValue(loraTargets)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
            });
            var trainable = PeftModel.TrainableParameters(model);
            var optimizer = optim.AdamW(trainable.Select(t => t.Param), lr: 1e-4);
            model.train();
            var ids = randint(0, config.VocabSize, [b, s], dtype: ScalarType.Int64);
            var batchData = new Batch(ids, ids.clone(), ones_like(ids), b * s);
            double Step()
            {
                var sw = Stopwatch.StartNew();
                using var scope = NewDisposeScope();
                LanguageModelLoss.Compute(model, batchData).backward();
                optimizer.step();
                optimizer.zero_grad();
                return sw.Elapsed.TotalMilliseconds;
            }
            for (int i = 0; i < p.GetValue(warmupSteps); i++) Step();
            var times = Enumerable.Range(0, measured).Select(_ => Step()).ToList();
            var ms = times.Average();
            var flops = StepFlops(model, method, b, s);
            var achieved = flops / (ms / 1000) / 1e9;
            var sgemm = SgemmGflops();
            var trainableCount = trainable.Sum(t => t.Param.numel());
            Console.WriteLine($"model            {config.ModelType} {p.GetValue(preset)} ({config.ParameterCount():N0} params), {PeftConfig.MethodName(method)}");
            Console.WriteLine($"threads          {get_num_threads()}");
            Console.WriteLine($"batch x seq      {b} x {s} = {b * s} tokens");
            Console.WriteLine($"trainable        {trainableCount:N0} params ({trainableCount * 4:N0} bytes)");
            Console.WriteLine($"ms/step          {ms:F1} (min {times.Min():F1}, max {times.Max():F1}, {measured} steps)");
            Console.WriteLine($"tokens/s         {b * s / (ms / 1000):F0}");
            Console.WriteLine($"model GFLOP/step {flops / 1e9:F1}");
            Console.WriteLine($"achieved GFLOP/s {achieved:F1}");
            Console.WriteLine($"sgemm GFLOP/s    {sgemm:F1} (2048x2048 fp32 matmul, same threads)");
            Console.WriteLine($"utilization      {achieved / sgemm:F2}");
            Console.WriteLine($"peak RSS         {PeakRssMiB():F0} MiB");
        }, arch, preset, peft, threads, steps, warmupSteps, batch, seq, loraTargets);
    }

    /// <summary>
    /// Matmul FLOPs of one step: forward 2·W·T over every projection and the output head, plus attention
    /// (QKᵀ and AV: 4·s·d per token per layer, causal work counted in full as the kernels compute it);
    /// backward always propagates input gradients (2·W·T) and adds weight gradients (2·W·T) only for trained weights.
    /// </summary>
    static double StepFlops(CausalLm model, PeftMethod method, int b, int s)
    {
        double tokens = (double)b * s;
        var c = model.Config;
        double frozen = 0, trained = 0;
        foreach (var (_, proj) in model.Projections())
        {
            double w = proj.InFeatures * proj.OutFeatures;
            if (method == PeftMethod.Full) trained += w; else frozen += w;
            if (proj.HasLora) trained += proj.LoraA!.weight.numel() + proj.LoraB!.weight.numel();
        }
        double head = (double)c.HiddenSize * c.VocabSize;
        if (method == PeftMethod.Full) trained += head; else frozen += head;
        double attention = 4.0 * c.NumLayers * s * c.NumHeads * c.HeadDim * tokens;
        var forward = 2 * (frozen + trained) * tokens + attention;
        var backward = 2 * (frozen + trained) * tokens + 2 * trained * tokens + 2 * attention;
        return forward + backward;
    }

    static double SgemmGflops()
    {
        const int n = 2048;
        using var a = randn(n, n);
        using var bm = randn(n, n);
        using (var w = a.matmul(bm)) { }
        var sw = Stopwatch.StartNew();
        int reps = 0;
        while (sw.Elapsed.TotalSeconds < 1.5 || reps < 3)
        {
            using var r = a.matmul(bm);
            reps++;
        }
        return 2.0 * n * n * n * reps / sw.Elapsed.TotalSeconds / 1e9;
    }

    static double PeakRssMiB()
    {
        foreach (var line in File.Exists("/proc/self/status") ? File.ReadLines("/proc/self/status") : [])
            if (line.StartsWith("VmHWM:"))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
        return Process.GetCurrentProcess().PeakWorkingSet64 / 1048576.0;
    }
}
