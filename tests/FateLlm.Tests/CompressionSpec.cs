using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Compression;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>Compressed uploads: each scheme's error bound, error feedback, the payload's refusals, and a job that sends them.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class CompressionSpec
{
    const int Block = 64;

    /// <summary>Values over six orders of magnitude, a zero block and a partial last block.</summary>
    static float[] Vector(int n = 64 * 40 + 17, int seed = 7)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            var block = i / Block;
            x[i] = block == 3 ? 0 : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(10, -(block % 6)));
        }
        return x;
    }

    static float[] RoundTrip(CompressionScheme scheme, float[] x, double topk = 0.01)
    {
        var body = VectorCodec.Encode(scheme, x, Block, topk);
        var back = new float[x.Length];
        VectorCodec.Decode(scheme, body, back, Block);
        return back;
    }

    static float AbsMax(float[] x, int block) => x.Skip(block * Block).Take(Block).Select(Math.Abs).Max();

    [Theory]
    [InlineData(CompressionScheme.None)]
    [InlineData(CompressionScheme.Fp16)]
    [InlineData(CompressionScheme.Bf16)]
    [InlineData(CompressionScheme.Int8)]
    [InlineData(CompressionScheme.Nf4)]
    public void Each_dense_scheme_round_trips_within_its_bound(CompressionScheme scheme)
    {
        var x = Vector();
        var back = RoundTrip(scheme, x);
        for (int i = 0; i < x.Length; i++)
        {
            var bound = scheme switch
            {
                CompressionScheme.None => 0,
                CompressionScheme.Fp16 => Math.Max(Math.Abs(x[i]) * Math.Pow(2, -11), Math.Pow(2, -25)),
                CompressionScheme.Bf16 => Math.Abs(x[i]) * Math.Pow(2, -8),
                CompressionScheme.Int8 => AbsMax(x, i / Block) / 127 / 2 * (1 + 1e-5),
                _ => AbsMax(x, i / Block) * VectorCodec.Nf4HalfGap * (1 + 1e-5),
            };
            Assert.True(Math.Abs(x[i] - back[i]) <= bound, $"{scheme} value {i}: {x[i]} came back as {back[i]}, bound {bound}");
        }
        // The zero block comes back exactly zero; blocks keep their own scale, so small blocks stay accurate.
        Assert.All(back.Skip(3 * Block).Take(Block), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Nf4_is_QLoRAs_code_book_its_codes_come_back_exactly_and_its_lookup_never_straddles_a_midpoint()
    {
        var book = VectorCodec.Nf4CodeBook.ToArray();
        Assert.Equal(16, book.Length);
        Assert.Equal(-1f, book[0]);
        Assert.Equal(0f, book[7]);
        Assert.Equal(1f, book[15]);
        Assert.Equal(0.15190360f, VectorCodec.Nf4HalfGap, 6);
        // A block whose absmax is 1 holding every code decodes to the codes themselves.
        var codes = Enumerable.Range(0, Block).Select(i => book[i % 16]).ToArray();
        Assert.Equal(codes, RoundTrip(CompressionScheme.Nf4, codes));
        // The encoder finds the nearest code through 512 buckets of [-1, 1] and one comparison: each midpoint must lie
        // clearly inside a bucket, never on an edge where rounding could pick a neighbour.
        for (int i = 0; i < 15; i++)
        {
            var mid = (book[i] + book[i + 1]) / 2.0;
            var edge = Math.Round((mid + 1) * 256) / 256 - 1;
            Assert.True(Math.Abs(mid - edge) > 1e-4, $"midpoint {mid} is {Math.Abs(mid - edge)} from a bucket edge");
        }
        // An odd block size starts every other block mid-byte (the scalar path) and still decodes within the bound.
        var x = Vector(63 * 20 + 5);
        var back = new float[x.Length];
        VectorCodec.Decode(CompressionScheme.Nf4, VectorCodec.Encode(CompressionScheme.Nf4, x, 63, 0), back, 63);
        for (int i = 0; i < x.Length; i++)
        {
            var absmax = x.Skip(i / 63 * 63).Take(63).Select(Math.Abs).Max();
            Assert.True(Math.Abs(x[i] - back[i]) <= absmax * VectorCodec.Nf4HalfGap * (1 + 1e-5), $"value {i} at block size 63");
        }
        // Sizes: one fp32 scale per 64 values plus half a byte a value is 14.06 % of fp32, NVFlare's published 4-bit figure.
        var body = VectorCodec.Encode(CompressionScheme.Nf4, new float[64 * 1000], Block, 0);
        Assert.Equal(0.140625, body.Length / (4.0 * 64 * 1000), 6);
        Assert.Equal(0.265625, VectorCodec.Encode(CompressionScheme.Int8, new float[64 * 1000], Block, 0).Length / (4.0 * 64 * 1000), 6);
    }

    [Fact]
    public void Topk_sends_exactly_the_k_largest_magnitudes_exactly_with_ties_broken_by_index()
    {
        var x = Vector();
        var k = VectorCodec.TopK(x.Length, 0.01);
        var back = RoundTrip(CompressionScheme.TopK, x);
        var kept = Enumerable.Range(0, x.Length).Where(i => back[i] != 0).ToList();
        Assert.Equal(k, kept.Count);
        var threshold = x.Select(Math.Abs).OrderDescending().ElementAt(k - 1);
        Assert.All(kept, i => Assert.Equal(x[i], back[i]));
        Assert.All(kept, i => Assert.True(Math.Abs(x[i]) >= threshold));
        // Ties: a vector of equal magnitudes keeps the first k indices.
        var flat = Enumerable.Repeat(0.5f, 1000).Select((v, i) => i % 2 == 0 ? v : -v).ToArray();
        var tied = RoundTrip(CompressionScheme.TopK, flat, 0.013);
        Assert.Equal(Enumerable.Range(0, 13), Enumerable.Range(0, 1000).Where(i => tied[i] != 0));
        // Index gaps under 128 take one byte: 1 % of a vector costs about 1.25 % of its fp32 bytes.
        var body = VectorCodec.Encode(CompressionScheme.TopK, Vector(100_000, 3), Block, 0.01);
        Assert.InRange(body.Length / 400_000.0, 0.0125, 0.0140);
    }

    static Dictionary<string, Tensor> Layout() => new(StringComparer.Ordinal)
    {
        ["a.lora_A.weight"] = zeros(8, 100), ["a.lora_B.weight"] = zeros(100, 8), ["b.lora_A.weight"] = zeros(4, 37),
    };

    static byte[] Update(IReadOnlyDictionary<string, Tensor> layout, int seed)
    {
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator((ulong)seed);
        return SafeTensors.ToBytes(layout.ToDictionary(kv => kv.Key, kv => randn(kv.Value.shape, generator: g) * 0.01f));
    }

    static float[] Flat(IReadOnlyDictionary<string, Tensor> layout, byte[] update)
    {
        using var scope = NewDisposeScope();
        return AdapterVector.Flatten(layout, SafeTensors.FromBytes(update), "p");
    }

    static CompressionOptions Options(CompressionScheme up, bool feedback = true) => CompressionOptions.Off with { Up = up, ErrorFeedback = feedback };

    [Theory]
    [InlineData(CompressionScheme.TopK)]
    [InlineData(CompressionScheme.Nf4)]
    public void Error_feedback_keeps_exactly_what_was_not_sent_and_over_rounds_loses_nothing(CompressionScheme scheme)
    {
        using var scope = NewDisposeScope();
        var layout = Layout();
        var options = Options(scheme);
        var residual = Path.Combine(TestSupport.TempDir(), "uplink", "fit.residual");
        var signature = UpdateCompression.Signature(layout);
        var n = (int)AdapterVector.Length(layout);
        var sentTotal = new double[n];
        var trainedTotal = new double[n];
        var carried = new float[n];
        for (int round = 1; round <= 4; round++)
        {
            var update = Update(layout, round);
            var x = Flat(layout, update);
            var payload = UpdateCompression.Compress(options, layout, update, residual, round);
            var sent = UpdateCompression.Decode(payload, layout, options);
            var left = ErrorFeedback.Load(residual, signature, n, round + 1);
            for (int i = 0; i < n; i++)
            {
                // What was not sent is the residual, bit for bit: (x + carried) − sent, in float as the party computes it.
                Assert.Equal(x[i] + carried[i] - sent[i], left[i]);
                sentTotal[i] += sent[i];
                trainedTotal[i] += x[i];
            }
            carried = left;
        }
        // Nothing is lost, only delayed: all that was sent plus what is still carried is all that was trained.
        for (int i = 0; i < n; i++) Assert.Equal(trainedTotal[i], sentTotal[i] + carried[i], 5);
    }

    [Fact]
    public void A_round_fitted_again_starts_from_the_residual_its_first_fit_started_from_and_a_restart_keeps_it()
    {
        using var scope = NewDisposeScope();
        var layout = Layout();
        var options = Options(CompressionScheme.TopK);
        var residual = Path.Combine(TestSupport.TempDir(), "uplink", "fit.residual");
        UpdateCompression.Compress(options, layout, Update(layout, 1), residual, round: 1);
        var first = UpdateCompression.Compress(options, layout, Update(layout, 2), residual, round: 2);
        // Round 2 again (a second attempt, or the party restarted and fits it again): the same input gives the same
        // upload, so round 1's loss is not counted twice. The residual lives in the file, as a restarted node finds it.
        var again = UpdateCompression.Compress(options, layout, Update(layout, 2), residual, round: 2);
        Assert.Equal(first, again);
        // Another layout (the job changed shape) starts from nothing.
        var other = new Dictionary<string, Tensor>(layout) { ["c.lora_A.weight"] = zeros(2, 2) };
        Assert.All(ErrorFeedback.Load(residual, UpdateCompression.Signature(other), (int)AdapterVector.Length(other), 3), v => Assert.Equal(0f, v));
        // Without error feedback no residual is written.
        var none = Path.Combine(TestSupport.TempDir(), "none.residual");
        UpdateCompression.Compress(Options(CompressionScheme.TopK, feedback: false), layout, Update(layout, 1), none, 1);
        Assert.False(File.Exists(none));
    }

    [Fact]
    public void A_truncated_mislabelled_or_foreign_upload_is_refused_naming_what_is_wrong()
    {
        using var scope = NewDisposeScope();
        var layout = Layout();
        var options = Options(CompressionScheme.Int8, feedback: false);
        var payload = UpdateCompression.Compress(options, layout, Update(layout, 1), null, 1);
        string Refused(byte[] bytes, CompressionOptions? o = null, IReadOnlyDictionary<string, Tensor>? l = null) =>
            Assert.Throws<CompressedUpdateException>(() => UpdateCompression.Decode(bytes, l ?? layout, o ?? options)).Message;

        Assert.Contains("truncated", Refused(payload[..^10]));
        Assert.Contains("trailing bytes", Refused([.. payload, 0]));
        Assert.Contains("not a compressed update", Refused(Update(layout, 1)));
        Assert.Contains("labelled int8, but this job sends updates up as nf4", Refused(payload, Options(CompressionScheme.Nf4)));
        var relabelled = (byte[])payload.Clone();
        relabelled[5] = (byte)CompressionScheme.Nf4;
        Assert.Contains("labelled nf4", Refused(relabelled));
        Assert.Contains("blocks of 64, this job uses 128", Refused(payload, options with { BlockSize = 128 }));
        var other = new Dictionary<string, Tensor>(StringComparer.Ordinal)
        {
            ["a.lora_A.weight"] = zeros(100, 8), ["a.lora_B.weight"] = zeros(8, 100), ["b.lora_A.weight"] = zeros(37, 4),
        };
        Assert.Contains("another layout", Refused(payload, l: other));
        var badScale = (byte[])payload.Clone();
        BitConverter.GetBytes(float.NaN).CopyTo(badScale, UpdateCompression.BodyOffset);
        Assert.Contains("block 0 has scale NaN", Refused(badScale));

        var topk = Options(CompressionScheme.TopK, feedback: false);
        var sparse = UpdateCompression.Compress(topk, layout, Update(layout, 1), null, 1);
        Assert.Contains("truncated", Refused(sparse[..^1], topk));
        var outside = (byte[])sparse.Clone();
        outside[^1] = 0x7F; // the last gap jumps past the end of the vector
        Assert.Contains("outside the vector", Refused(outside, topk));
    }

    [Fact]
    public void A_job_sends_int8_and_top_k_uploads_that_the_arbiter_decodes_before_validation_and_aggregation()
    {
        var g = FederationFixture.Prepare();
        SimulationResult Run(string id, CompressionScheme up) =>
            SimulationSpec.Simulate(g, FederationFixture.Job(g, id, rounds: 2) with { Compression = CompressionOptions.Off with { Up = up } }, run: id);
        var plain = Run("fp32", CompressionScheme.None);
        var int8 = Run("int8", CompressionScheme.Int8);
        var topk = Run("topk", CompressionScheme.TopK);

        foreach (var run in new[] { plain, int8, topk })
        {
            Assert.All(run.Steps, s => Assert.Empty(s.Rejected));
            Assert.All(run.Steps, s => Assert.Equal(3, s.Contributors.Count));
        }
        double Ratio(SimulationResult r) => r.Fits.Average(f => f.UploadBytes / (double)f.Update!.Update.Length);
        Assert.InRange(Ratio(plain), 1, 1);
        Assert.InRange(Ratio(int8), 0.25, 0.27);   // 8 bits and a scale per 64 values over fp32 and its safetensors header
        Assert.InRange(Ratio(topk), 0.005, 0.02);
        using var scope = NewDisposeScope();
        Dictionary<string, Tensor> Global(SimulationResult r) => SafeTensors.FromBytes(r.Store.Read(r.State.Get(AlgorithmState.Global)));
        var (a, b) = (Global(plain), Global(int8));
        var diff = Math.Sqrt(a.Keys.Sum(k => (a[k] - b[k]).pow(2).sum().item<float>()));
        var norm = Math.Sqrt(a.Keys.Sum(k => a[k].pow(2).sum().item<float>()));
        Assert.True(diff < 0.02 * norm, $"int8 global is {diff / norm:P2} away from the fp32 one");
    }

    [Fact]
    public void The_downlink_offers_the_global_as_a_delta_against_what_parties_hold_and_its_error_never_accumulates()
    {
        using var scope = NewDisposeScope();
        var store = new BlobStore(TestSupport.TempDir());
        var layout = Layout();
        var spec = JobFile.Default("down", "m", [new PartySpec("a", "train", null), new PartySpec("b", "train", null)], TestSupport.TempDir()) with
        {
            Compression = CompressionOptions.Off with { Down = CompressionScheme.Int8 },
        };
        var exact = SafeTensors.FromBytes(Update(layout, 1));
        var held = store.Put(SafeTensors.ToBytes(exact));
        Exchange Fit(string global) => Exchange.Broadcast("fit", ["a", "b"], PartyInstruction.Of(new Dictionary<string, string> { ["global"] = global }), vectorLayout: "global");
        // Round 1: nothing held yet, the global goes in full.
        var firstRound = Downlink.Offer(store, spec, AlgorithmState.Of(("global", held)), Fit(held));
        Assert.Equal(["global"], firstRound.Instructions["a"].Downloads.Keys);
        Assert.Empty(firstRound.Instructions["a"].Parameters);
        for (int round = 2; round <= 8; round++)
        {
            // The plug-in's exact global moves by a fresh step; the arbiter offers it against what parties hold.
            exact = exact.ToDictionary(kv => kv.Key, kv => kv.Value + SafeTensors.FromBytes(Update(layout, round))[kv.Key]);
            var target = store.Put(SafeTensors.ToBytes(exact));
            var offered = Downlink.Offer(store, spec, AlgorithmState.Of(("global", target), (AlgorithmState.Downlink, held)), Fit(target));
            var instruction = offered.Instructions["a"];
            var shadow = instruction.Downloads["global"];
            var delta = store.Read(instruction.Downloads[Downlink.DeltaOf("global")]);
            Assert.Equal(held, Downlink.BaseOf(instruction.Parameters, "global"));
            Assert.Equal(offered.Instructions["b"].Downloads, instruction.Downloads);
            // A party holding the base rebuilds exactly the offered global, bit for bit; int8 moves about a quarter of it.
            Assert.Equal(store.Read(shadow), Downlink.Rebuild(store.Read(held), delta, shadow));
            Assert.InRange(delta.Length / (double)store.Size(shadow), 0.2, 0.3);
            // What the encoding lost rides on the next delta: the offered global stays within one step of this delta's
            // quantization of the exact one, however many rounds have passed.
            var rebuilt = Flat(layout, store.Read(shadow));
            var truth = AdapterVector.Flatten(layout, exact, "exact");
            var previous = Flat(layout, store.Read(held));
            var change = truth.Zip(previous, (x, y) => Math.Abs(x - y)).Max();
            Assert.All(truth.Zip(rebuilt), p => Assert.True(Math.Abs(p.Item1 - p.Item2) <= change / 127 / 2 * 1.001 + 1e-7, $"{p.Item1} offered as {p.Item2}"));
            held = shadow;
        }
        // A delta rebuilt on the wrong base is refused by the digest, never trained on.
        var other = store.Put(Update(layout, 99));
        var last = Downlink.Offer(store, spec, AlgorithmState.Of((AlgorithmState.Downlink, other)), Fit(held)).Instructions["a"];
        var e = Assert.Throws<CompressedUpdateException>(() => Downlink.Rebuild(store.Read(held), store.Read(last.Downloads[Downlink.DeltaOf("global")]), last.Downloads["global"]));
        Assert.Contains("rebuilt from its delta has digest", e.Message);
    }

    [Fact]
    public void A_job_sends_the_global_down_as_int8_deltas_and_a_party_that_missed_a_round_fetches_it_in_full()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "down", rounds: 3, quorum: 2) with { Compression = CompressionOptions.Off with { Down = CompressionScheme.Int8 } };
        var result = new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec, g.Model, SimulationSpec.Parties(g), Path.Combine(g.Root, "down"))
            .Run(dropout: (round, _, party) => round == 2 && party == "food");

        var full = result.Fits.Where(f => f.Round == 1).Select(f => f.DownloadBytes).Distinct().Single();
        var byRound = result.Fits.Where(f => f.Update is not null).ToLookup(f => (f.Round, f.Party), f => f.DownloadBytes);
        Assert.InRange(byRound[(2, "animal")].Single() / (double)full, 0.2, 0.3);
        Assert.InRange(byRound[(3, "animal")].Single() / (double)full, 0.2, 0.3);
        // food holds round 1's global, not round 2's: it gets round 3's in full.
        Assert.Equal(full, byRound[(3, "food")].Single());
        Assert.All(result.Steps, s => Assert.Empty(s.Rejected));
        // The plug-in's state keeps the exact global; what parties were last sent is the framework's own artifact.
        Assert.NotEqual(result.State.Get(AlgorithmState.Global), result.State.Get(AlgorithmState.Downlink));
    }

    static JobSpec Parse(string job) => JobFile.FromConfig(ConfigurationFactory.ParseString(job), "job.conf", TestSupport.TempDir(), AlgorithmCatalog.BuiltIn);

    const string Minimal = "job { model = m, parties = [{ org = a }, { org = b }, { org = c }]\n";

    [Fact]
    public void The_job_file_reads_compression_and_refuses_what_cannot_apply_naming_the_field()
    {
        Assert.Equal(CompressionOptions.Off, Parse(Minimal + "}").Compression);
        var spec = Parse(Minimal + "compression { up = nf4, block-size = 128, error-feedback = off } }");
        Assert.Equal(CompressionOptions.Off with { Up = CompressionScheme.Nf4, BlockSize = 128, ErrorFeedback = false }, spec.Compression);
        Assert.Equal(spec.Compression, JobSpec.FromJson(spec.ToJson(), "round trip").Compression);

        string Refused(string job) => Assert.ThrowsAny<Exception>(() => Parse(Minimal + job + " }")).Message;
        Assert.Contains("compression.up", Refused("compression.up = int4"));
        Assert.Contains("job.compression.down cannot be topk", Refused("compression.down = topk"));
        Assert.Contains("job.compression.topk-fraction must be in (0, 1]", Refused("compression { up = topk, topk-fraction = 0 }"));
        Assert.Contains("job.compression.block-size", Refused("compression { up = int8, block-size = 4 }"));
        Assert.Contains("job.compression.up cannot be nf4 under secure aggregation", Refused("secure-aggregation = on, compression.up = nf4"));
        Assert.Contains("job.compression cannot apply: algorithm 'fedkseed'", Refused("algorithm = fedkseed, compression.up = int8"));
    }
}
