using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// <c>bench federation --config config.json</c>: a real-size job through real processes, as a new user runs one. Seed,
/// arbiter and parties are separate <c>fate-llm</c> processes on one machine; the base is random bf16 weights of the
/// exact config (written once, reused) with FateLlm's byte tokenizer; each party trains on its own small file. Printed
/// per round from rounds.jsonl: wall, the slowest party's seconds by stage, and what is left for transfer and
/// aggregation; then every process's peak RSS, against the goals of issue 24 and a single-process <c>bench train</c>
/// of the same config in the same run.
/// </summary>
internal static class RealSizeFederationBench
{
    public sealed record Options(string ConfigPath, int Parties, int Rounds, int Steps, int Seq, string? WorkDir, bool Baseline);

    public static void Run(Options o, TextWriter output)
    {
        output.WriteLine(BenchMachine.Line());
        var config = ModelConfig.Load(o.ConfigPath);
        var name = Path.GetFileNameWithoutExtension(o.ConfigPath);
        var work = Path.GetFullPath(o.WorkDir ?? Path.Combine(Path.GetTempPath(), "fate-llm-bench", name + "-federation"));
        var models = Path.Combine(work, "models");
        var model = Path.Combine(models, name);
        var sw = Stopwatch.StartNew();
        if (CheckpointBench.EnsureCheckpoint(config, o.ConfigPath, ScalarType.BFloat16, model))
            output.WriteLine($"wrote a random bf16 checkpoint of {name} in {sw.Elapsed.TotalSeconds:F0} s");
        if (!TokenizerLoader.Files.Any(f => File.Exists(Path.Combine(model, f)) && f != TokenizerLoader.ConfigFile)) ByteTokenizer.Save(model);
        var weights = HfCheckpoint.WeightFiles(model).Sum(f => new FileInfo(f).Length);

        var run = Path.Combine(work, "run-" + DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture));
        Directory.CreateDirectory(run);
        var orgs = Enumerable.Range(1, o.Parties).Select(i => $"p{i}").ToArray();
        foreach (var org in orgs) WriteData(Path.Combine(run, $"{org}-train.jsonl"), org, o.Steps, o.Seq);
        var jobFile = Path.Combine(run, "job.conf");
        File.WriteAllText(jobFile, $$"""
            job {
              id = bench
              model = "{{name}}"
              parties = [ {{string.Join(", ", orgs.Select(org => $"{{ org = {org}, data = train }}"))}} ]
              rounds = {{o.Rounds}}
              peft { method = lora, r = 8, dropout = 0.0 }
              local { steps = {{o.Steps}}, batch-size = 1, schedule = constant }
              data { max-tokens = {{o.Seq}} }
              evaluation { limit = 1, max-new-tokens = 1 }
              export { merged = off }
              output = "{{Path.Combine(run, "out")}}"
            }
            """);

        double? baseline = null;
        if (o.Baseline)
        {
            var (code, text) = RunToEnd(["bench", "train", "--config", o.ConfigPath, "--work", model, "--dtype", "bf16", "--batch", "1", "--seq", o.Seq.ToString(CultureInfo.InvariantCulture),
                "--steps", "2", "--warmup", "0", "--gen-tokens", "1", "--json"], Path.Combine(run, "bench-train.log"));
            if (code == 0 && JsonNode.Parse(text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last()) is JsonObject r) baseline = (double)r["peak_rss_train_mib"]!;
        }

        var seedPort = LocalFederation.FreePort();
        var seed = $"akka.tcp://fate-llm@127.0.0.1:{seedPort}";
        var nodes = new List<(string Name, Process Process)>();
        try
        {
            nodes.Add(("seed", Start(["seed", "--port", seedPort.ToString(CultureInfo.InvariantCulture), "--data-dir", Path.Combine(run, "seed")], Path.Combine(run, "seed.log"))));
            nodes.Add(("arbiter", Start(["arbiter", "--seed", seed, "--data-dir", Path.Combine(run, "arbiter"), "--models-root", models], Path.Combine(run, "arbiter.log"))));
            foreach (var org in orgs)
                nodes.Add((org, Start(["party", "--org", org, "--seed", seed, "--data-dir", Path.Combine(run, org), "--models-root", models,
                    "--data", $"train={Path.Combine(run, $"{org}-train.jsonl")}"], Path.Combine(run, $"{org}.log"))));
            sw.Restart();
            var (code, _) = RunToEnd(["job", "submit", jobFile, "--seed", seed, "--wait", "--timeout", "120"], Path.Combine(run, "submit.log"));
            var wall = sw.Elapsed.TotalSeconds;
            var peaks = nodes.ToDictionary(n => n.Name, n => CheckpointBench.PeakRss(n.Process.Id.ToString(CultureInfo.InvariantCulture)));
            if (code != 0) throw new InvalidOperationException($"the job failed (exit {code}); see {Path.Combine(run, "submit.log")} and the nodes' logs in {run}");
            Report(output, o, name, config, weights, run, wall, peaks, baseline);
        }
        finally
        {
            foreach (var (_, p) in nodes)
            {
                try { if (!p.HasExited) p.Kill(entireProcessTree: true); }
                catch (InvalidOperationException) { /* exited meanwhile */ }
                p.Dispose();
            }
        }
    }

    static void Report(TextWriter output, Options o, string name, ModelConfig config, long weights, string run, double wall,
        Dictionary<string, double> peaks, double? baseline)
    {
        var lines = File.ReadAllLines(Path.Combine(run, "out", "rounds.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var adapterBytes = lines.Max(l => (long)l["upload_bytes"]!);
        output.WriteLine($"{name}: {config.ParameterCount() / 1e9:F2} B parameters, bf16 weights {weights / 1048576.0:N0} MiB; {o.Parties} parties × {o.Rounds} rounds × " +
            $"{o.Steps} steps of 1 × {o.Seq} tokens; adapter {adapterBytes / 1048576.0:F1} MiB; job wall {wall:F1} s (submit to completion, final evaluation included)");
        output.WriteLine($"{"round",5} {"wall s",8} {"download",9} {"hash",6} {"load",7} {"eval",6} {"train",7} {"other",7} {"wall/train",11} {"goal",6}");
        foreach (var round in lines.GroupBy(l => (int)l["round"]!).OrderBy(g => g.Key))
        {
            double Max(string stage) => round.Max(l => (double?)l["seconds"]?[stage] ?? 0);
            var roundWall = (double)round.First()["round_seconds"]!;
            var slowest = round.OrderByDescending(l => (double)l["train_seconds"]!).First();
            double S(string stage) => (double?)slowest["seconds"]?[stage] ?? 0;
            var other = roundWall - S("download") - S("hash") - S("load") - S("eval") - S("train");
            var ratio = roundWall / Math.Max(1e-9, Max("train"));
            output.WriteLine($"{round.Key,5} {roundWall,8:F1} {S("download"),9:F2} {S("hash"),6:F2} {S("load"),7:F1} {S("eval"),6:F1} {S("train"),7:F1} {other,7:F1} {ratio,11:F2} " +
                $"{(round.Key >= 2 ? (ratio <= 1.05 ? "≤1.05 ✓" : "≤1.05 ✗") : ""),6}");
        }
        var arbiterGoal = 1024 + 3 * adapterBytes / 1048576.0;
        output.WriteLine($"peak RSS: arbiter {peaks["arbiter"]:N0} MiB (goal ≤ 1 GiB + 3 × adapter = {arbiterGoal:N0} MiB {(peaks["arbiter"] <= arbiterGoal ? "✓" : "✗")}); seed {peaks["seed"]:N0} MiB");
        foreach (var (org, peak) in peaks.Where(p => p.Key.StartsWith('p')))
            output.WriteLine($"  party {org}: {peak:N0} MiB" + (baseline is { } b ? $" = {peak / b:F2} × bench train's {b:N0} MiB (goal within 10 %: {(Math.Abs(peak / b - 1) <= 0.10 ? "✓" : "✗")})" : ""));
        output.WriteLine($"rounds 2+: base loads {lines.Where(l => (int)l["round"]! >= 2).Sum(l => (double?)l["seconds"]?["load"] ?? 0):F1} s, hashing {lines.Where(l => (int)l["round"]! >= 2).Sum(l => (double?)l["seconds"]?["hash"] ?? 0):F2} s (goal: none)");
        output.WriteLine($"logs and rounds.jsonl: {run}");
    }

    /// <summary>Each party's examples: a prompt and a response of random words, about <paramref name="seq"/> byte tokens together.</summary>
    static void WriteData(string path, string org, int steps, int seq)
    {
        var rng = new Random(org.GetHashCode(StringComparison.Ordinal) & 0x7fffffff);
        string Words(int chars) => string.Join(' ', Enumerable.Range(0, chars / 6).Select(_ => new string(Enumerable.Range(0, 5).Select(_ => (char)('a' + rng.Next(26))).ToArray())));
        File.WriteAllLines(path, Enumerable.Range(0, Math.Max(4, steps)).Select(_ =>
            JsonSerializer.Serialize(new Dictionary<string, string> { ["content"] = Words(seq / 2), ["summary"] = Words(seq / 2) })));
    }

    /// <summary>This same <c>fate-llm</c> (the apphost, or dotnet with this assembly) with other arguments.</summary>
    internal static ProcessStartInfo Fatellm(IEnumerable<string> args, bool redirectError = true)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = redirectError };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") psi.ArgumentList.Add(typeof(RealSizeFederationBench).Assembly.Location);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    static Process Start(IEnumerable<string> args, string log)
    {
        var p = Process.Start(Fatellm(args))!;
        var writer = new StreamWriter(log) { AutoFlush = true };
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (writer) writer.WriteLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (writer) writer.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    static (int Code, string Output) RunToEnd(IEnumerable<string> args, string log)
    {
        using var p = Process.Start(Fatellm(args))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        File.WriteAllText(log, stdout.Result + stderr.Result);
        return (p.ExitCode, stdout.Result);
    }
}
