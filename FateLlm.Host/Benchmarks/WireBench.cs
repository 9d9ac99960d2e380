using System.Diagnostics;
using System.Globalization;
using System.Text;
using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Serialization;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// bench wire: per message kind, the wire schema's encoded size and encode+decode time against Hyperion (what the wire
/// used before), measured side by side in one run on the same messages; with <c>--fuzz N</c>, N mutated payloads per
/// kind through the decoder (<see cref="WireFuzz"/>).
/// </summary>
internal static class WireBench
{
    public sealed record Options(int Items, int Iterations, int Repeats, int Fuzz, int Seed);

    public static void Run(Options o, TextWriter output)
    {
        using var system = ActorSystem.Create("bench-wire", ConfigurationFactory.ParseString("""
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp.port = 0
            akka.loglevel = ERROR
            akka.stdout-loglevel = ERROR
            """).WithFallback(FederationNode.Reference()));
        var extended = (ExtendedActorSystem)system;
        var wire = (SerializerWithStringManifest)system.Serialization.FindSerializerForType(typeof(Actors.Transfer.LocateBlob));
        var hyperion = new HyperionSerializer(extended, HyperionSerializerSettings.Default);
        output.WriteLine(BenchMachine.Line());
        output.WriteLine($"wire protocol {WireSchema.Version}: {WireSchema.All.Count} message kinds, {o.Items} element(s) per list, median of {o.Repeats} × {o.Iterations} encode+decode");
        output.WriteLine($"{"message",-32} {"wire B",8} {"hyperion B",11} {"size ×",7} | {"wire µs",8} {"hyperion µs",12} {"time ×",7}");
        var sizeRatios = new List<double>();
        var timeRatios = new List<double>();
        long wireTotal = 0, hyperionTotal = 0;
        foreach (var (type, manifest) in WireSchema.All.OrderBy(m => m.Value, StringComparer.Ordinal))
        {
            var message = WireSamples.Of(type, extended, o.Items);
            var wireBytes = wire.ToBinary(message).Length;
            var hyperionBytes = hyperion.ToBinary(message).Length;
            var (wireMicros, hyperionMicros) = SideBySide(
                () => wire.FromBinary(wire.ToBinary(message), manifest),
                () => hyperion.FromBinary(hyperion.ToBinary(message), type), o);
            wireTotal += wireBytes;
            hyperionTotal += hyperionBytes;
            sizeRatios.Add((double)wireBytes / hyperionBytes);
            timeRatios.Add(wireMicros / hyperionMicros);
            output.WriteLine($"{manifest,-32} {wireBytes,8} {hyperionBytes,11} {sizeRatios[^1],7:F2} | {wireMicros,8:F1} {hyperionMicros,12:F1} {timeRatios[^1],7:F2}");
        }
        output.WriteLine($"{"all kinds",-32} {wireTotal,8} {hyperionTotal,11} {(double)wireTotal / hyperionTotal,7:F2} | geometric mean of time × {GeoMean(timeRatios):F2}, of size × {GeoMean(sizeRatios):F2}");
        if (o.Fuzz > 0) Fuzz(system, wire, o, output);
    }

    /// <summary>Alternates the two in each repeat so that a busy machine slows both alike; µs per encode+decode, medians.</summary>
    static (double A, double B) SideBySide(Action a, Action b, Options o)
    {
        a(); b(); // warm up (JIT, caches)
        var ta = new List<double>();
        var tb = new List<double>();
        for (var r = 0; r < o.Repeats; r++)
        {
            ta.Add(Time(a, o.Iterations));
            tb.Add(Time(b, o.Iterations));
        }
        return (Median(ta), Median(tb));
    }

    static double Time(Action action, int iterations)
    {
        var sw = Stopwatch.StartNew();
        for (var i = 0; i < iterations; i++) action();
        return sw.Elapsed.TotalMicroseconds / iterations;
    }

    static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
    static double GeoMean(List<double> xs) => Math.Exp(xs.Average(Math.Log));

    static void Fuzz(ActorSystem system, SerializerWithStringManifest wire, Options o, TextWriter output)
    {
        output.WriteLine();
        output.WriteLine($"fuzz: {o.Fuzz:N0} mutated payloads per kind ({string.Join(", ", WireFuzz.Mutations)}), seed {o.Seed}");
        output.WriteLine($"{"message",-32} {"payloads",9} {"refused",8} {"decoded",8} {"crashed",8} {"max alloc B",12}");
        int payloads = 0, refused = 0, decoded = 0, crashed = 0;
        long maxAllocated = 0;
        foreach (var (type, manifest) in WireSchema.All.OrderBy(m => m.Value, StringComparer.Ordinal))
        {
            var t = WireFuzz.Run(wire, manifest, wire.ToBinary(WireSamples.Of(type, (ExtendedActorSystem)system, o.Items)), o.Fuzz, o.Seed);
            output.WriteLine($"{manifest,-32} {t.Payloads,9} {t.Refused,8} {t.Decoded,8} {t.Crashed,8} {t.MaxAllocated,12}");
            foreach (var crash in t.Crashes.Take(3)) output.WriteLine($"    crash: {crash}");
            (payloads, refused, decoded, crashed) = (payloads + t.Payloads, refused + t.Refused, decoded + t.Decoded, crashed + t.Crashed);
            maxAllocated = Math.Max(maxAllocated, t.MaxAllocated);
        }
        var frame = system.Settings.Config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size") ?? 0;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{"all kinds",-32} {payloads,9} {refused,8} {decoded,8} {crashed,8} {maxAllocated,12}   (frame limit {frame} B)"));
        // The most a decode can be made to allocate: lists of the smallest elements JSON allows, at the frame limit (refused
        // unread) and at the largest count the decoder accepts.
        foreach (var count in new[] { (int)(frame - 32) / 3, 30_000, 40_000 })
        {
            var payload = Encoding.UTF8.GetBytes("{\"JobIds\":[" + string.Join(",", Enumerable.Repeat("\"\"", count)) + "],\"Problem\":null}");
            var before = GC.GetAllocatedBytesForCurrentThread();
            string outcome;
            try { outcome = $"decoded ({((Actors.Jobs.JobList)wire.FromBinary(payload, "JobList.v1")).JobIds.Length:N0} ids)"; }
            catch (WireRefusal e) { outcome = "refused: " + e.Message; }
            output.WriteLine($"worst case: a {payload.Length:N0}-byte JobList of {count:N0} empty strings: {GC.GetAllocatedBytesForCurrentThread() - before:N0} bytes allocated, {outcome}");
        }
    }
}
