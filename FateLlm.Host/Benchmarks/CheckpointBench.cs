using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using TorchSharp;
using static TorchSharp.torch;

using FateLlm.Host.Cli;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// <c>bench train --config config.json</c>: a model of a real HF config (random weights made here, written as a sharded
/// checkpoint one tensor at a time) is loaded, generates, and takes LoRA steps, with the figures a party needs before it
/// commits a machine: load time, peak RSS per phase, ms/token, ms/step, CPU and FLOP utilization.
/// </summary>
internal static class CheckpointBench
{
    public sealed record Options(string ConfigPath, ScalarType Dtype, string? WorkDir, int Batch, int Seq, int Steps, int Warmup,
        int GenerateTokens, int LoraR, string[] LoraTargets, bool Json);

    public static void Run(Options o, TextWriter output)
    {
        if (!o.Json) output.WriteLine(BenchMachine.Line());
        var config = ModelConfig.Load(o.ConfigPath);
        var dir = o.WorkDir ?? Path.Combine(Path.GetTempPath(), "fate-llm-bench", Path.GetFileNameWithoutExtension(o.ConfigPath) + "-" + DtypeName(o.Dtype));
        var sw = Stopwatch.StartNew();
        var wrote = EnsureCheckpoint(config, o.ConfigPath, o.Dtype, dir);
        var writeSeconds = sw.Elapsed.TotalSeconds;
        var files = HfCheckpoint.WeightFiles(dir);
        var bytes = files.Sum(f => new FileInfo(f).Length);

        var rssBefore = Rss();
        ResetPeak();
        sw.Restart();
        using var model = HfCheckpoint.Load(dir, o.Dtype);
        var loadSeconds = sw.Elapsed.TotalSeconds;
        var loadPeak = PeakRss();
        var loadRss = Rss();
        model.eval();

        // Greedy generation with the KV cache from an 8-token prompt.
        ResetPeak();
        var prompt = Enumerable.Range(0, 8).Select(i => (i * 7919 + 13) % config.VocabSize).ToArray();
        sw.Restart();
        var generated = TextGeneration.Generate(model, prompt, new SamplingOptions { MaxNewTokens = o.GenerateTokens, Temperature = 0, StopAtEos = false }, null);
        var msPerToken = sw.Elapsed.TotalMilliseconds / Math.Max(1, generated.Count);
        var generatePeak = PeakRss();

        // LoRA steps: fp32 adapters on the (possibly bf16) frozen base.
        PeftModel.Apply(model, new PeftConfig { Method = PeftMethod.Lora, LoraR = o.LoraR, LoraAlpha = 2 * o.LoraR, LoraDropout = 0, LoraTargets = o.LoraTargets });
        var trainable = PeftModel.TrainableParameters(model);
        using var optimizer = new Training.Trainer.AdamW(trainable.Select(t => t.Param), 1e-4);
        model.train();
        manual_seed(1);
        using var ids = randint(0, config.VocabSize, [o.Batch, o.Seq], dtype: ScalarType.Int64);
        var batch = new Batch(ids, ids.clone(), ones_like(ids), o.Batch * o.Seq);
        double Step()
        {
            var t = Stopwatch.StartNew();
            using var scope = NewDisposeScope();
            LanguageModelLoss.Compute(model, batch).backward();
            optimizer.Step();
            optimizer.ZeroGrad();
            return t.Elapsed.TotalMilliseconds;
        }
        ResetPeak();
        for (int i = 0; i < o.Warmup; i++) Step();
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        sw.Restart();
        var times = Enumerable.Range(0, o.Steps).Select(_ => Step()).ToList();
        var wall = sw.Elapsed.TotalSeconds;
        var cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpuBefore).TotalSeconds;
        var trainPeak = PeakRss();
        var threads = get_num_threads();
        var flops = TrainBench.StepFlops(model, PeftMethod.Lora, o.Batch, o.Seq);
        var achieved = flops / (times.Average() / 1000) / 1e9;
        var sgemm = TrainBench.SgemmGflops();
        var parameters = model.BaseParameters().Sum(p => p.Param.numel());

        var r = new JsonObject
        {
            ["config"] = Path.GetFullPath(o.ConfigPath), ["model_type"] = config.ModelType, ["parameters"] = parameters,
            ["machine"] = BenchMachine.Line(), ["dtype"] = DtypeName(o.Dtype), ["checkpoint_bytes"] = bytes, ["shards"] = files.Count,
            ["checkpoint_written_seconds"] = wrote ? Math.Round(writeSeconds, 1) : null,
            ["load_seconds"] = Math.Round(loadSeconds, 4), ["rss_before_load_mib"] = Math.Round(rssBefore), ["rss_after_load_mib"] = Math.Round(loadRss),
            ["peak_rss_load_mib"] = Math.Round(loadPeak), ["peak_rss_generate_mib"] = Math.Round(generatePeak), ["peak_rss_train_mib"] = Math.Round(trainPeak),
            ["ms_per_token"] = Math.Round(msPerToken, 1), ["generated_tokens"] = generated.Count,
            ["batch"] = o.Batch, ["seq"] = o.Seq, ["lora_r"] = o.LoraR, ["trainable_parameters"] = trainable.Sum(t => t.Param.numel()),
            ["ms_per_step"] = Math.Round(times.Average(), 1), ["ms_per_step_min"] = Math.Round(times.Min(), 1), ["steps"] = o.Steps,
            ["threads"] = threads, ["cpu_utilization"] = Math.Round(cpu / (wall * threads), 2),
            ["achieved_gflops"] = Math.Round(achieved, 1), ["sgemm_gflops"] = Math.Round(sgemm, 1), ["flop_utilization"] = Math.Round(achieved / sgemm, 2),
        };
        if (o.Json)
        {
            output.WriteLine(r.ToJsonString());
            return;
        }
        var w = output;
        w.WriteLine($"model             {config.ModelType} from {o.ConfigPath} ({parameters:N0} params, base in {DtypeName(o.Dtype)})");
        w.WriteLine($"checkpoint        {bytes / 1048576.0:N0} MiB in {files.Count} shard(s) at {dir}{(wrote ? $" (written in {writeSeconds:F1} s)" : " (reused)")}");
        w.WriteLine($"load              {loadSeconds:F2} s; RSS {rssBefore:N0} → {loadRss:N0} MiB, peak {loadPeak:N0} MiB (checkpoint {bytes / 1048576.0:N0} MiB)");
        w.WriteLine($"generate          {msPerToken:F1} ms/token ({generated.Count} tokens, KV cache), peak RSS {generatePeak:N0} MiB");
        w.WriteLine($"LoRA step         {times.Average():F0} ms/step (min {times.Min():F0}, {o.Steps} steps of {o.Batch} x {o.Seq} tokens, r = {o.LoraR}, {trainable.Sum(t => t.Param.numel()):N0} trainable)");
        w.WriteLine($"peak RSS (train)  {trainPeak:N0} MiB");
        w.WriteLine($"utilization       CPU {cpu / (wall * threads):P0} of {threads} threads; {achieved:F1} GFLOP/s = {achieved / sgemm:F2} of fp32 sgemm ({sgemm:F1} GFLOP/s)");
    }

    static string DtypeName(ScalarType t) => t switch { ScalarType.BFloat16 => "bf16", ScalarType.Float16 => "fp16", _ => "fp32" };

    /// <summary>
    /// Writes config.json and random N(0, 0.02) weights (norms one, Gemma's zero) as shards of at most 2 GiB, one tensor
    /// in memory at a time; reuses a folder already written for the same config and dtype.
    /// </summary>
    internal static bool EnsureCheckpoint(ModelConfig config, string configPath, ScalarType dtype, string dir)
    {
        var stamp = Path.Combine(dir, ".bench-stamp");
        var key = File.ReadAllText(configPath) + "|" + dtype;
        if (File.Exists(stamp) && File.ReadAllText(stamp) == key) return false;
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(dir);
        config.Save(Path.Combine(dir, HfCheckpoint.ConfigFile));
        List<(string Name, ScalarType DType, long[] Shape)> layout;
        // Parameters of an unloaded model are allocated but never touched: only names and shapes are read here.
        using (BaseDtype.Use(dtype))
        using (var shape = CausalLm.Create(config))
            layout = shape.BaseParameters().Select(p => (p.Name, dtype, p.Param.shape)).ToList();
        const long shardBytes = 2L << 30;
        var shards = new List<List<(string, ScalarType, long[])>> { new() };
        long current = 0, elementSize = dtype == ScalarType.Float32 ? 4 : 2;
        foreach (var entry in layout.OrderBy(l => l.Name, StringComparer.Ordinal))
        {
            var size = entry.Shape.Aggregate(1L, (a, b) => a * b) * elementSize;
            if (current > 0 && current + size > shardBytes) { shards.Add(new()); current = 0; }
            shards[^1].Add(entry);
            current += size;
        }
        var shapes = layout.ToDictionary(l => l.Name, l => l.Shape);
        var weightMap = new JsonObject();
        var gen = new Generator(1234);
        for (int i = 0; i < shards.Count; i++)
        {
            var file = shards.Count == 1 ? HfCheckpoint.SingleFile : $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            SafeTensors.WriteStreaming(Path.Combine(dir, file), shards[i], name =>
            {
                var shape = shapes[name];
                using var scope = NewDisposeScope();
                var t = name.EndsWith("norm.weight") || name.Contains("layernorm.")
                    ? (config.GemmaNorm ? zeros(shape, dtype: dtype) : ones(shape, dtype: dtype))
                    : name.EndsWith(".bias") ? zeros(shape, dtype: dtype)
                    : normal(0, 0.02, shape, generator: gen).to_type(dtype);
                return t.MoveToOuterDisposeScope();
            });
            foreach (var (name, _, _) in shards[i]) weightMap[name] = file;
        }
        if (shards.Count > 1)
            File.WriteAllText(Path.Combine(dir, HfCheckpoint.IndexFile), new JsonObject
            {
                ["metadata"] = new JsonObject { ["total_size"] = layout.Sum(l => l.Shape.Aggregate(1L, (a, b) => a * b) * elementSize) },
                ["weight_map"] = weightMap,
            }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(stamp, key);
        return true;
    }

    static double Rss() => Status("VmRSS:");
    /// <summary>Peak resident set in MiB (VmHWM) of this process, or of another one by pid while it still runs.</summary>
    internal static double PeakRss(string pid = "self") => Status("VmHWM:", pid);

    static double Status(string field, string pid = "self")
    {
        var path = $"/proc/{pid}/status";
        try
        {
            foreach (var line in File.Exists(path) ? File.ReadLines(path) : [])
                if (line.StartsWith(field))
                    return long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / 1024.0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return double.NaN; } // the process ended meanwhile
        return pid == "self" ? Process.GetCurrentProcess().WorkingSet64 / 1048576.0 : double.NaN;
    }

    // Linux resets the peak-RSS mark (VmHWM) when "5" is written to clear_refs, so each phase reports its own peak.
    static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
