using System.Diagnostics;
using FateLlm.Training.Compression;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// bench codec: encode and decode throughput of each update compression scheme on one thread, over a delta of the given
/// size, against memcpy of the same bytes in the same run (repeats alternate all of them, so a busy machine slows each
/// alike); with the size on the wire and the error each scheme leaves.
/// </summary>
internal static class CodecBench
{
    public sealed record Options(int MiB, int Repeats, int BlockSize, double TopKFraction);

    const double GoalGBps = 1.0;

    public static void Run(Options o, TextWriter output)
    {
        var n = o.MiB * (1 << 20) / 4;
        var delta = Delta(n);
        var copy = new float[n];
        var decoded = new float[n];
        var schemes = Enum.GetValues<CompressionScheme>();
        output.WriteLine(BenchMachine.Line());
        output.WriteLine($"codec: a {o.MiB} MiB fp32 delta ({n:N0} values, LoRA-like: normal values, scale varying by block), one thread, block {o.BlockSize}, " +
            $"top-k {o.TopKFraction:P1}; median of {o.Repeats}; GB/s of fp32 input");
        var memcpy = new List<double>();
        var encode = schemes.ToDictionary(s => s, _ => new List<double>());
        var decode = schemes.ToDictionary(s => s, _ => new List<double>());
        var bodies = new Dictionary<CompressionScheme, byte[]>();
        for (int r = 0; r < o.Repeats + 1; r++) // the first pass warms up (JIT, pages) and is not counted
        {
            var counted = r > 0;
            var t = Seconds(() => delta.AsSpan().CopyTo(copy));
            if (counted) memcpy.Add(t);
            foreach (var s in schemes)
            {
                byte[] body = [];
                t = Seconds(() => body = VectorCodec.Encode(s, delta, o.BlockSize, o.TopKFraction));
                if (counted) encode[s].Add(t);
                bodies[s] = body;
                t = Seconds(() => VectorCodec.Decode(s, body, decoded, o.BlockSize));
                if (counted) decode[s].Add(t);
            }
        }
        double GBps(List<double> seconds) => 4.0 * n / Median(seconds) / 1e9;
        var copyRate = GBps(memcpy);
        output.WriteLine($"{"scheme",-6} {"size % fp32",12} {"encode GB/s",12} {"× memcpy",9} {"decode GB/s",12} {"× memcpy",9} {"rel. L2 error",14}");
        output.WriteLine($"{"memcpy",-6} {100.0,11:F2}% {copyRate,12:F2} {1.0,9:F3} {copyRate,12:F2} {1.0,9:F3} {0.0,14:E2}");
        foreach (var s in schemes)
        {
            VectorCodec.Decode(s, bodies[s], decoded, o.BlockSize);
            var (e, d) = (GBps(encode[s]), GBps(decode[s]));
            output.WriteLine($"{CompressionOptions.Name(s),-6} {100.0 * bodies[s].Length / (4.0 * n),11:F2}% {e,12:F2} {e / copyRate,9:F3} {d,12:F2} {d / copyRate,9:F3} {RelativeError(delta, decoded),14:E2}");
        }
        foreach (var s in new[] { CompressionScheme.Int8, CompressionScheme.Nf4 })
        {
            var (e, d) = (GBps(encode[s]), GBps(decode[s]));
            output.WriteLine($"goal: {CompressionOptions.Name(s)} ≥ {GoalGBps:F1} GB/s per core each way — encode {e:F2}, decode {d:F2}: {(Math.Min(e, d) >= GoalGBps ? "met" : "NOT met")}");
        }
    }

    /// <summary>Normal values whose scale changes by block of 4096 over four orders of magnitude, seeded: what LoRA deltas look like across modules.</summary>
    static float[] Delta(int n)
    {
        var rng = new Random(17);
        var x = new float[n];
        double scale = 1e-3;
        for (int i = 0; i < n; i++)
        {
            if (i % 4096 == 0) scale = Math.Pow(10, -2 - 3 * rng.NextDouble());
            var u = 1 - rng.NextDouble();
            x[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        }
        return x;
    }

    static double RelativeError(float[] x, float[] y)
    {
        double num = 0, den = 0;
        for (int i = 0; i < x.Length; i++)
        {
            num += (double)(x[i] - y[i]) * (x[i] - y[i]);
            den += (double)x[i] * x[i];
        }
        return Math.Sqrt(num / den);
    }

    static double Seconds(Action a)
    {
        var sw = Stopwatch.StartNew();
        a();
        return sw.Elapsed.TotalSeconds;
    }

    static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
}
