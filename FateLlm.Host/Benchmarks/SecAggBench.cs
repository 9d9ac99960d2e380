using System.Diagnostics;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Privacy.SecureAggregation;
using static TorchSharp.torch;

using FateLlm.Host.Cli;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// bench secagg: the cost of SecAgg+ per round for n parties — per-party masking (what each party spends, in
/// parallel in reality), the arbiter's unmasking with dropouts, MB/s of both — against plain FedAvg of the same updates.
/// </summary>
internal static class SecAggBench
{
    public static void Run(int[] parties, int length, double dropout, TextWriter output)
    {
        output.WriteLine(BenchMachine.Line());
        output.WriteLine($"vector {length:N0} values ({length * 4 / 1e6:F2} MB per party), {dropout:P0} dropouts after sharing keys, {Environment.ProcessorCount} cores");
        output.WriteLine($"{"n",5} {"k",4} {"t",4} | {"party: keys+shares",19} {"mask",9} {"mask MB/s",10} | {"arbiter unmask",15} {"unmask MB/s",12} | {"plain FedAvg",13} {"overhead",9}");
        foreach (var n in parties) Run(n, length, dropout, output);
    }

    static void Run(int n, int length, double dropout, TextWriter output)
    {
        var names = Enumerable.Range(0, n).Select(i => $"org{i:D3}").ToArray();
        var k = SecAggSession.DefaultDegree(n, 2);
        var t = Math.Max(2, (k + 1) / 2 + 1);
        var session = new SecAggSession { SessionId = $"bench/{n}", Parties = names, Threshold = t, Degree = k, GraphSeed = 7, VectorLength = length, ClipRange = 1 };
        var rng = new Random(1);
        var input = Enumerable.Range(0, length).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var clients = names.ToDictionary(x => x, x => new SecAggClient(session, x));
        var keys = clients.ToDictionary(c => c.Key, c => c.Value.Advertise());

        var sw = Stopwatch.StartNew();
        var bundles = clients.ToDictionary(c => c.Key, c => c.Value.ShareKeys(keys.Values.Where(v => v.Party != c.Key).ToList()));
        var shareSeconds = sw.Elapsed.TotalSeconds / n;
        var inbox = SecAggServer.Route(bundles.Values);
        var dropped = names.Where((_, i) => i % Math.Max(1, (int)Math.Round(1 / Math.Max(dropout, 1e-9))) == 1 && dropout > 0).Take((int)(n * dropout)).ToHashSet();
        sw.Restart();
        var masked = clients.Where(c => !dropped.Contains(c.Key)).ToDictionary(c => c.Key, c => c.Value.MaskInput(input, [1.0], inbox[c.Key], rng));
        var maskSeconds = sw.Elapsed.TotalSeconds / masked.Count;
        var survivors = masked.Keys.ToList();
        var revealed = survivors.Select(s => clients[s].Unmask(survivors)).ToList();
        sw.Restart();
        var result = SecAggServer.Unmask(session, keys, bundles, masked, revealed);
        var unmaskSeconds = sw.Elapsed.TotalSeconds;
        foreach (var c in clients.Values) c.Dispose();
        if (result.RecoveredDropouts.Count != dropped.Count) throw new InvalidOperationException("benchmark run did not recover its dropouts");

        using var scope = NewDisposeScope();
        var global = new Dictionary<string, Tensor> { ["w"] = zeros(length) };
        var deltas = survivors.Select(s => new AdapterDelta(s, new Dictionary<string, Tensor> { ["w"] = tensor(input) }, 10)).ToList();
        new FedAvg().Aggregate(global, deltas, new Dictionary<string, Tensor>());
        sw.Restart();
        new FedAvg().Aggregate(global, deltas, new Dictionary<string, Tensor>());
        var plainSeconds = sw.Elapsed.TotalSeconds;

        double mb = length * 4 / 1e6;
        // Per round the parties work in parallel: the added latency is one party's steps plus the arbiter's unmasking.
        var overhead = (shareSeconds + maskSeconds + unmaskSeconds) / plainSeconds;
        output.WriteLine($"{n,5} {Math.Min(k, n - 1),4} {t,4} | {shareSeconds * 1e3,16:F1} ms {maskSeconds * 1e3,6:F1} ms {mb / maskSeconds,10:F0} | {unmaskSeconds * 1e3,12:F0} ms {survivors.Count * mb / unmaskSeconds,12:F0} | {plainSeconds * 1e3,10:F1} ms {overhead,8:F1}×");
    }
}
