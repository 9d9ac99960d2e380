using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.HomoPeft;
using FateLlm.Training.IO;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

using FateLlm.Host.Cli;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// <c>bench federation</c>: adapter transfer between two processes vs raw TCP, wire overhead, FedAvg throughput vs
/// memcpy, round overhead of a real 3-party round, and round rate with 200 simulated parties. Prints figures only.
/// </summary>
internal static class FederationBench
{
    static Config Remote(int port) => ConfigurationFactory.ParseString($"""
        akka.actor.provider = remote
        akka.loglevel = ERROR
        akka.stdout-loglevel = ERROR
        akka.remote.dot-netty.tcp.port = {port}
        akka.remote.dot-netty.tcp.maximum-frame-size = 5MiB
        """).WithFallback(FederationNode.Reference());

    public static async Task Run(int[] sizesMiB, bool skipRound, TransferSettings transfer, TextWriter output)
    {
        output.WriteLine(BenchMachine.Line());
        output.WriteLine($"== adapter transfer between two processes over loopback ({transfer.ChunkSize >> 10} KiB chunks, window {transfer.Window})");
        await Transfer(sizesMiB, transfer, output);
        output.WriteLine();
        output.WriteLine("== FedAvg over 10 x 16 MiB adapters");
        FedAvgThroughput(output);
        output.WriteLine();
        output.WriteLine("== round protocol with 200 simulated parties (tiny adapters, in-process)");
        await SimulatedRounds(200, 20, output);
        if (skipRound) return;
        output.WriteLine();
        output.WriteLine("== one real round: 3 parties, tiny model, in-process cluster");
        await RealRound(output);
    }

    // ---- transfer ----

    /// <summary>The other process of the transfer bench: serves random blobs over the blob server and over raw TCP.</summary>
    public static void Serve(int port, int rawPort, int[] sizesMiB, string dir, TextWriter output)
    {
        var store = new BlobStore(dir);
        var rng = new Random(1);
        var blobs = sizesMiB.Select(mib => { var b = new byte[mib << 20]; rng.NextBytes(b); return b; }).ToList();
        var digests = blobs.Select(store.Put).ToList();
        using var system = ActorSystem.Create("bench", Remote(port));
        using var stream = new BlobStreamServer(store, "127.0.0.1", null);
        system.ActorOf(BlobServer.Props(store, stream: stream), BlobServer.Name);
        var listener = new TcpListener(IPAddress.Loopback, rawPort);
        listener.Start();
        output.WriteLine("READY " + string.Join(" ", digests));
        while (true)
        {
            using var client = listener.AcceptTcpClient();
            using var s = client.GetStream();
            var index = s.ReadByte();
            if (index < 0 || index >= blobs.Count) break;
            s.Write(blobs[index]);
        }
    }

    const int Repeats = 3, WarmUps = 3;

    static async Task Transfer(int[] sizesMiB, TransferSettings transfer, TextWriter output)
    {
        int port = LocalFederation.FreePort(), rawPort = LocalFederation.FreePort();
        var dir = Path.Combine(Path.GetTempPath(), "fate-llm-bench-" + Environment.ProcessId);
        var psi = RealSizeFederationBench.Fatellm(["bench", "blob-server", "--port", port.ToString(), "--raw-port", rawPort.ToString(), "--sizes", string.Join(",", sizesMiB),
            "--dir", Path.Combine(dir, "server")], redirectError: false);
        using var server = Process.Start(psi)!;
        try
        {
            var ready = await server.StandardOutput.ReadLineAsync() ?? "";
            if (!ready.StartsWith("READY ")) throw new InvalidOperationException($"bench server did not start: {ready}");
            var digests = ready[6..].Split(' ');
            using var system = ActorSystem.Create("bench-client", Remote(0));
            var remote = await system.ActorSelection($"akka.tcp://bench@127.0.0.1:{port}/user/{BlobServer.Name}").ResolveOne(TimeSpan.FromSeconds(20));
            output.WriteLine($"{"size",8} {"stream MB/s",12} {"chunks MB/s",12} {"raw TCP MB/s",13} {"stream/raw",11} {"goal",6} {"chunks/raw",11} {"wire/raw",9} {"retransmits",12}");
            // Warm-up: the first transfers pay for connections and first-call compilation; the cold rate is printed apart.
            // The hot paths (hashing, copying) may still run unoptimized after it: a busy process keeps postponing their
            // recompilation (docs/operations.md, Data plane).
            var largest = Array.IndexOf(sizesMiB, sizesMiB.Max());
            var warm = new BlobLocation(digests[largest], (long)sizesMiB[largest] << 20, remote);
            var cold = await Fetch(system, new BlobStore(Path.Combine(dir, "cold-stream")), warm, transfer with { Stream = true });
            for (int w = 0; w < WarmUps; w++)
            {
                await Fetch(system, new BlobStore(Path.Combine(dir, $"warm-chunks-{w}")), warm, transfer with { Stream = false });
                await Fetch(system, new BlobStore(Path.Combine(dir, $"warm-stream-{w}")), warm, transfer with { Stream = true });
                RawCopy(rawPort, largest, warm.Size);
            }
            for (int i = 0; i < sizesMiB.Length; i++)
            {
                var size = (long)sizesMiB[i] << 20;
                var location = new BlobLocation(digests[i], size, remote);
                // Side by side, the raw copy between the two others, so drift in the machine's load touches all three alike;
                // each the median of Repeats.
                var chunk = new List<double>();
                var raw = new List<(double Seconds, long Wire)>();
                var stream = new List<(double Seconds, long Wire, int Retransmits)>();
                for (int r = 0; r < Repeats; r++)
                {
                    chunk.Add((await Fetch(system, new BlobStore(Path.Combine(dir, $"chunks-{i}-{r}")), location, transfer with { Stream = false })).Seconds);
                    raw.Add(RawCopy(rawPort, i, size));
                    stream.Add(await Fetch(system, new BlobStore(Path.Combine(dir, $"stream-{i}-{r}")), location, transfer with { Stream = true }));
                }
                var chunkSeconds = chunk.Order().ElementAt(Repeats / 2);
                var (rawSeconds, rawWire) = raw.OrderBy(x => x.Seconds).ElementAt(Repeats / 2);
                var (streamSeconds, streamWire, _) = stream.OrderBy(x => x.Seconds).ElementAt(Repeats / 2);
                var retransmits = stream.Sum(x => x.Retransmits);
                var ratio = rawSeconds / streamSeconds;
                output.WriteLine($"{sizesMiB[i] + " MiB",8} {size / 1e6 / streamSeconds,12:F1} {size / 1e6 / chunkSeconds,12:F1} {size / 1e6 / rawSeconds,13:F1} {ratio,11:F2} " +
                    $"{(ratio >= 0.8 ? "met" : "MISSED"),6} {rawSeconds / chunkSeconds,11:F2} {streamWire / (double)rawWire,9:F3} {retransmits,12}");
            }
            output.WriteLine($"each figure the median of {Repeats} transfers after {WarmUps} warm-up transfers of {sizesMiB[largest]} MiB; retransmits summed over them");
            output.WriteLine($"cold: the process's first stream of {sizesMiB[largest]} MiB ran at {warm.Size / 1e6 / cold.Seconds:F1} MB/s (connections, unoptimized code)");
            output.WriteLine("stream: the data plane (ticket over Akka.Remote, bytes on their own TCP stream, digest checked into the store); goal ≥ 0.8 of raw TCP");
            output.WriteLine("chunks: the fallback over Akka.Remote; raw TCP: the same bytes copied socket to memory, no store, no hash");
            output.WriteLine("wire/raw: loopback bytes (TCP/IP headers included) for the stream ÷ for a raw TCP copy of the same bytes");
            ReceiverWork(sizesMiB.Max(), dir, output);
        }
        finally
        {
            using (var c = new TcpClient()) { try { c.Connect(IPAddress.Loopback, rawPort); c.GetStream().WriteByte(255); } catch (SocketException) { } }
            if (!server.WaitForExit(5000)) server.Kill(true);
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// What the stream's receiver does beyond a raw copy, each alone at full speed: hash the bytes and write them to the
    /// store's disk. Here both ends share the same cores, so this work competes with the sender's.
    /// </summary>
    static void ReceiverWork(int sizeMiB, string dir, TextWriter output)
    {
        var data = new byte[sizeMiB << 20];
        new Random(1).NextBytes(data);
        const int block = BlobStreamServer.BufferSize;
        double Best(Action run) => Enumerable.Range(0, 5).Min(_ => { var sw = Stopwatch.StartNew(); run(); return sw.Elapsed.TotalSeconds; });
        var hash = Best(() =>
        {
            using var h = new ContentDigest.Hasher(ContentDigest.Current);
            for (var o = 0; o < data.Length; o += block) h.Append(data.AsSpan(o, block));
            h.Finish();
        });
        Directory.CreateDirectory(dir);
        var n = 0;
        var write = Best(() =>
        {
            using var f = new FileStream(Path.Combine(dir, $"write-{n++}"), FileMode.Create, FileAccess.Write, FileShare.None, block);
            for (var o = 0; o < data.Length; o += block) f.Write(data.AsSpan(o, block));
        });
        output.WriteLine($"the receiver's own work on {sizeMiB} MiB, each alone: BLAKE3 {data.Length / 1e6 / hash:F0} MB/s, write to the store's disk {data.Length / 1e6 / write:F0} MB/s " +
            $"(sender and receiver share this machine's {Environment.ProcessorCount} cores)");
    }

    static async Task<(double Seconds, long Wire, int Retransmits)> Fetch(ActorSystem system, BlobStore store, BlobLocation source, TransferSettings transfer)
    {
        var before = LoopbackBytes();
        var sw = Stopwatch.StartNew();
        var result = await BlobDownload.Run(system, store, source, transfer).WaitAsync(TimeSpan.FromMinutes(5));
        var seconds = sw.Elapsed.TotalSeconds;
        if (result is FetchFailed f) throw new InvalidOperationException(f.Reason);
        return (seconds, LoopbackBytes() - before, ((FetchCompleted)result).Retransmissions);
    }

    static (double Seconds, long Wire) RawCopy(int port, int index, long size)
    {
        var buffer = new byte[1 << 20];
        var before = LoopbackBytes();
        var sw = Stopwatch.StartNew();
        using (var c = new TcpClient())
        {
            c.Connect(IPAddress.Loopback, port);
            var s = c.GetStream();
            s.WriteByte((byte)index);
            long got = 0;
            int n;
            while (got < size && (n = s.Read(buffer)) > 0) got += n;
        }
        return (sw.Elapsed.TotalSeconds, LoopbackBytes() - before);
    }

    /// <summary>Bytes received on the loopback interface so far (/proc/net/dev), or 0 where unavailable.</summary>
    static long LoopbackBytes()
    {
        if (!File.Exists("/proc/net/dev")) return 0;
        var line = File.ReadLines("/proc/net/dev").FirstOrDefault(l => l.TrimStart().StartsWith("lo:"));
        return line is null ? 0 : long.Parse(line.Split(':')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[0], System.Globalization.CultureInfo.InvariantCulture);
    }

    // ---- aggregation ----

    static void FedAvgThroughput(TextWriter output)
    {
        const int parties = 10, floats = 4 << 20; // 16 MiB each
        using var scope = NewDisposeScope();
        var global = new Dictionary<string, Tensor> { ["w"] = zeros(floats) };
        var deltas = Enumerable.Range(0, parties).Select(i => new AdapterDelta("p" + i, new Dictionary<string, Tensor> { ["w"] = randn(floats) }, 10 + i)).ToList();
        var fedavg = new FedAvg();
        fedavg.Aggregate(global, deltas, new Dictionary<string, Tensor>()); // warm-up
        var sw = Stopwatch.StartNew();
        const int reps = 5;
        for (int r = 0; r < reps; r++) fedavg.Aggregate(global, deltas, new Dictionary<string, Tensor>());
        var fedSeconds = sw.Elapsed.TotalSeconds / reps;
        var dst = empty(floats);
        sw.Restart();
        for (int r = 0; r < reps; r++)
            foreach (var d in deltas) dst.copy_(d.Tensors["w"]);
        var copySeconds = sw.Elapsed.TotalSeconds / reps;
        double bytes = (double)parties * floats * 4;
        output.WriteLine($"FedAvg {bytes / 1e9 / fedSeconds:F2} GB/s, memcpy of the same bytes {bytes / 1e9 / copySeconds:F2} GB/s, ratio {copySeconds / fedSeconds:F2} ({get_num_threads()} torch threads)");
    }

    // ---- round protocol ----

    /// <summary>Answers every work request at once with a distinct tiny delta served from its own store.</summary>
    sealed class SimulatedParties : ReceiveActor
    {
        public SimulatedParties(BlobStore store, IActorRef server, IReadOnlyDictionary<string, string> deltas)
        {
            Receive<WorkRequest>(r =>
            {
                var digest = deltas[r.Org];
                Sender.Tell(new UpdateReady(r.Org, r.Id, new BlobLocation(digest, store.Size(digest), server), 10, new Dictionary<string, double>(), 0, 0));
            });
        }
    }

    static async Task SimulatedRounds(int parties, int rounds, TextWriter output)
    {
        var dir = Path.Combine(Path.GetTempPath(), "fate-llm-bench-rounds-" + Environment.ProcessId);
        var partyStore = new BlobStore(Path.Combine(dir, "parties"));
        var arbiterStore = new BlobStore(Path.Combine(dir, "arbiter"));
        var orgs = Enumerable.Range(0, parties).Select(i => $"p{i:D3}").ToArray();
        Dictionary<string, Tensor> Adapter(float v) => new() { ["a.lora_A.weight"] = full(8, 64, v), ["a.lora_B.weight"] = full(64, 8, v) };
        var deltas = orgs.Select((o, i) => (o, partyStore.Put(SafeTensors.ToBytes(Adapter(i * 1e-3f))))).ToDictionary(x => x.o, x => x.Item2);
        var globalDigest = arbiterStore.Put(SafeTensors.ToBytes(Adapter(0)));
        using var system = ActorSystem.Create("bench-rounds", ConfigurationFactory.ParseString("akka.actor.provider = local\nakka.loglevel = ERROR").WithFallback(FederationNode.Reference()));
        var server = system.ActorOf(BlobServer.Props(partyStore), "party-blobs");
        var simulated = system.ActorOf(Props.Create(() => new SimulatedParties(partyStore, server, deltas)));
        var settings = new RoundSettings(arbiterStore, simulated, server, TransferSettings.Default, TimeSpan.FromSeconds(30));
        var spec = JobFile.Default("bench", "-", orgs.Select(o => new PartySpec(o, "train", null)).ToArray(), dir);
        spec = spec with { Round = spec.Round with { DeadlineSeconds = 60 } };
        var specDigest = arbiterStore.Put(spec.ToJson());
        var specBlob = new BlobLocation(specDigest, arbiterStore.Size(specDigest), server);
        var state = AlgorithmState.Of((HomoPeftAlgorithm.Global, globalDigest));
        var sw = Stopwatch.StartNew();
        for (int r = 1; r <= rounds; r++)
        {
            var finished = await RoundRunner.RunAsync(system, settings, new StartRound("bench", r, 1, spec, specBlob, state, orgs, null), TimeSpan.FromSeconds(60));
            if (!finished.Succeeded) throw new InvalidOperationException(finished.Reason);
            state = finished.State!;
        }
        output.WriteLine($"{rounds / sw.Elapsed.TotalSeconds:F2} rounds/s with {parties} parties ({sw.Elapsed.TotalMilliseconds / rounds:F0} ms per round: ask, pull {parties} deltas, aggregate, store)");
        await system.Terminate();
        try { Directory.Delete(dir, true); } catch (IOException) { }
    }

    static async Task RealRound(TextWriter output)
    {
        var root = Path.Combine(Path.GetTempPath(), "fate-llm-bench-round-" + Environment.ProcessId);
        var model = Path.Combine(root, "model");
        var m = CausalLm.Create(ModelPresets.Create("llama", "tiny"));
        m.InitializeWeights(1);
        HfCheckpoint.Save(m, model);
        ByteTokenizer.Save(model);
        var (parties, _) = DemoCorpus.Write(Path.Combine(root, "data"), repeats: 4);
        var datasets = parties.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, string>)new Dictionary<string, string> { ["train"] = kv.Value.Train });
        var config = ConfigurationFactory.ParseString("akka.loglevel = ERROR\nakka.stdout-loglevel = ERROR\nakka.cluster.sharding.retry-interval = 200ms\nfate-llm.round.resend-interval = 1s");
        await using var fed = await LocalFederation.StartAsync(Path.Combine(root, "nodes"), datasets, config);
        var spec = JobFile.Default("bench-round", model, parties.Keys.Select(o => new PartySpec(o, "train", null)).ToArray(), Path.Combine(root, "out"));
        spec = spec with { Rounds = 2, Local = spec.Local with { Epochs = 3 }, Round = spec.Round with { DeadlineSeconds = 120 } };
        await fed.SubmitAsync(spec);
        var s = await fed.WaitAsync(spec.JobId, TimeSpan.FromMinutes(5));
        foreach (var r in s.Rounds)
        {
            var slowest = r.Parties.Max(p => p.TrainSeconds);
            output.WriteLine($"round {r.Round}: wall {r.Seconds:F2}s, slowest party's local round {slowest:F2}s → overhead {100 * (r.Seconds / slowest - 1):F1}% (adapter {Bytes(r.Parties[0].UploadBytes)})");
        }
        output.WriteLine("(3 parties train concurrently on 2 cores here, so the slowest party's time includes sharing the CPU)");
        try { Directory.Delete(root, true); } catch (IOException) { }
    }

    static string Bytes(long b) => b >= 1 << 20 ? $"{b / 1048576.0:F2} MiB" : $"{b / 1024.0:F1} KiB";
}
