using FateLlm.Training.Privacy.SecureAggregation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>SecAgg+ as pure protocol code: five parties, threshold three, run step by step without a cluster.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class SecureAggregationSpec
{
    static readonly string[] Five = ["acme", "globex", "initech", "umbrella", "wayne"];

    static SecAggSession Session(int parties = 5, int threshold = 3, int length = 1000, int? degree = null) => new()
    {
        SessionId = "job-1/3/1", Parties = parties == 5 ? Five : Enumerable.Range(0, parties).Select(i => $"org{i:D3}").ToArray(),
        Threshold = threshold, Degree = degree ?? SecAggSession.DefaultDegree(parties, threshold), GraphSeed = 1234, VectorLength = length, ClipRange = 1.0,
    };

    static Dictionary<string, float[]> Inputs(SecAggSession s, int seed = 5)
    {
        var rng = new Random(seed);
        return s.Parties.ToDictionary(p => p, _ => Enumerable.Range(0, s.VectorLength).Select(_ => (float)(rng.NextDouble() * 1.6 - 0.8)).ToArray());
    }

    /// <summary>Runs the four steps; parties in <paramref name="dropBeforeUpload"/> vanish after sharing keys, those in <paramref name="dropAfterUpload"/> after their masked upload.</summary>
    static (SecAggResult Result, Dictionary<string, uint[]> Masked) Run(SecAggSession s, Dictionary<string, float[]> x, ISet<string>? dropBeforeUpload = null,
        ISet<string>? dropAfterUpload = null, Func<UnmaskShares, UnmaskShares>? tamper = null)
    {
        dropBeforeUpload ??= new HashSet<string>();
        dropAfterUpload ??= new HashSet<string>();
        var clients = s.Parties.ToDictionary(p => p, p => new SecAggClient(s, p));
        var keys = clients.ToDictionary(c => c.Key, c => c.Value.Advertise());
        var bundles = clients.ToDictionary(c => c.Key, c => c.Value.ShareKeys(keys.Values.Where(k => k.Party != c.Key).ToList()));
        var inbox = SecAggServer.Route(bundles.Values);
        var masked = clients.Where(c => !dropBeforeUpload.Contains(c.Key))
            .ToDictionary(c => c.Key, c => s.Unpack(s.Pack(c.Value.MaskInput(x[c.Key], [1.0], inbox[c.Key], new Random(c.Key.Length))), c.Key)); // as sent
        var survivors = masked.Keys.ToList();
        var revealed = survivors.Where(p => !dropAfterUpload.Contains(p)).Select(p => clients[p].Unmask(survivors)).Select(r => tamper?.Invoke(r) ?? r).ToList();
        var result = SecAggServer.Unmask(s, keys, bundles, masked, revealed);
        foreach (var c in clients.Values) c.Dispose();
        return (result, masked);
    }

    static void AssertSumWithinQuantization(SecAggSession s, SecAggResult result, Dictionary<string, float[]> x, IEnumerable<string> contributors)
    {
        var (values, extras) = result.Decode(s);
        var members = contributors.ToList();
        Assert.Equal(members.Order(StringComparer.Ordinal), result.Contributors);
        var bound = members.Count * s.ValueEncoding.Step(s.ClipRange) + 1e-5;
        for (int i = 0; i < s.VectorLength; i++)
        {
            var plain = members.Sum(p => (double)x[p][i]);
            Assert.True(Math.Abs(values[i] - plain) <= bound, $"coordinate {i}: {values[i]} vs {plain} (bound {bound})");
        }
        Assert.Equal(members.Count, extras[0], 4);
    }

    [Fact]
    public void The_unmasked_sum_equals_the_plain_sum_within_the_quantization_bound()
    {
        var s = Session();
        var x = Inputs(s);
        var (result, _) = Run(s, x);
        AssertSumWithinQuantization(s, result, x, Five);
        Assert.Empty(result.RecoveredDropouts);
    }

    [Theory]
    [InlineData(8)]
    [InlineData(16)]
    public void Words_of_fewer_bits_still_unmask_to_the_sum_with_dropouts_and_travel_packed(int valueBits)
    {
        // 5 parties need 3 bits of headroom: int8's 11-bit words and fp16's 19-bit words, masked mod 2³², sent mod 2^B.
        var s = Session() with { WordBits = valueBits + 3 };
        Assert.Equal(valueBits, s.ValueEncoding.Bits);
        var x = Inputs(s);
        var (result, masked) = Run(s, x, dropBeforeUpload: new HashSet<string> { "globex" }, dropAfterUpload: new HashSet<string> { "umbrella" });
        AssertSumWithinQuantization(s, result, x, ["acme", "initech", "umbrella", "wayne"]);
        Assert.Equal((1000 * (valueBits + 3) + 7) / 8 + 4, s.Pack(masked["acme"]).Length);
        Assert.All(masked.Values, y => Assert.All(y.Take(s.VectorLength), w => Assert.True(w <= s.WordMask)));
        var e = Assert.Throws<SecAggException>(() => s.Unpack(s.Pack(masked["acme"])[..^1], "acme"));
        Assert.Contains("party 'acme' uploaded", e.Message);
        Assert.Throws<SecAggException>(() => (Session() with { WordBits = 10 }).Validate());
    }

    [Fact]
    public void A_party_dropping_before_its_masked_upload_and_another_after_it_are_both_recovered()
    {
        var s = Session();
        var x = Inputs(s);
        var (result, _) = Run(s, x, dropBeforeUpload: new HashSet<string> { "globex" }, dropAfterUpload: new HashSet<string> { "umbrella" });
        // umbrella's input counts (it uploaded); globex's pairwise masks are removed through its rebuilt key.
        AssertSumWithinQuantization(s, result, x, ["acme", "initech", "umbrella", "wayne"]);
        Assert.Equal(["globex"], result.RecoveredDropouts);
    }

    [Fact]
    public void Below_the_threshold_the_round_fails_clearly_naming_the_party()
    {
        var s = Session();
        var x = Inputs(s);
        var e = Assert.Throws<SecAggException>(() => Run(s, x, dropBeforeUpload: new HashSet<string> { "globex" },
            dropAfterUpload: new HashSet<string> { "umbrella", "wayne" }));
        Assert.Contains("threshold 3", e.Message);
        Assert.Matches("party '(acme|initech|umbrella|wayne|globex)'", e.Message);
    }

    [Fact]
    public void What_the_arbiter_receives_from_one_party_looks_uniform_and_is_uncorrelated_with_the_plaintext()
    {
        var s = Session(length: 50_000);
        var x = Inputs(s);
        var (_, masked) = Run(s, x);
        var y = masked["acme"].Take(s.VectorLength).Select(w => (double)w).ToArray();
        double n = y.Length, mean = y.Average(), variance = y.Sum(v => (v - mean) * (v - mean)) / n;
        // Uniform on [0, 2³²): mean 2³¹, variance 2⁶⁴/12; the standard error of the mean is ~2³²/√(12n).
        Assert.InRange(mean / Math.Pow(2, 31), 1 - 0.02, 1 + 0.02);
        Assert.InRange(variance / (Math.Pow(2, 64) / 12), 0.97, 1.03);
        var plain = x["acme"].Select(v => (double)v).ToArray();
        double pm = plain.Average();
        var cov = y.Zip(plain, (a, b) => (a - mean) * (b - pm)).Sum();
        var corr = cov / Math.Sqrt(y.Sum(v => (v - mean) * (v - mean)) * plain.Sum(v => (v - pm) * (v - pm)));
        Assert.InRange(corr, -4 / Math.Sqrt(n), 4 / Math.Sqrt(n));
    }

    [Fact]
    public void A_wrong_share_is_detected_and_its_revealer_named()
    {
        var s = Session();
        var x = Inputs(s);
        var (result, _) = Run(s, x, tamper: r => r.Party != "initech" ? r
            : r with { Shares = r.Shares.Select(sh => sh.Owner == "wayne" ? sh with { Y = sh.Y.Select((b, i) => i == 0 ? (byte)(b ^ 1) : b).ToArray() } : sh).ToList() });
        // Five revealers, threshold three: the wrong share is found, named, and left out.
        Assert.Contains(result.WrongShares, w => w.Contains("'initech'") && w.Contains("'wayne'"));
        AssertSumWithinQuantization(s, result, x, Five);

        var tight = Session();
        var e = Assert.Throws<SecAggException>(() => Run(tight, x, dropAfterUpload: new HashSet<string> { "acme", "globex" },
            tamper: r => r.Party != "initech" ? r : r with { Shares = r.Shares.Select(sh => sh with { Y = [1, 2, 3] }).ToList() }));
        Assert.Contains("wrong share detected", e.Message);
    }

    [Fact]
    public void A_tampered_ciphertext_is_refused_by_its_recipient()
    {
        var s = Session();
        var clients = s.Parties.ToDictionary(p => p, p => new SecAggClient(s, p));
        var keys = clients.Values.Select(c => c.Advertise()).ToList();
        var bundles = clients.ToDictionary(c => c.Key, c => c.Value.ShareKeys(keys.Where(k => k.Party != c.Key).ToList()));
        var inbox = SecAggServer.Route(bundles.Values);
        var forged = inbox["acme"].Select((sh, i) => i == 0 ? sh with { Ciphertext = sh.Ciphertext.Select(b => (byte)(b ^ 0xFF)).ToArray() } : sh).ToList();
        var e = Assert.Throws<SecAggException>(() => clients["acme"].MaskInput(new float[s.VectorLength], [1.0], forged));
        Assert.Contains("fails authentication", e.Message);
    }

    [Fact]
    public void A_party_asked_to_unmask_with_two_different_survivor_sets_refuses()
    {
        var s = Session();
        var x = Inputs(s);
        var clients = s.Parties.ToDictionary(p => p, p => new SecAggClient(s, p));
        var keys = clients.Values.Select(c => c.Advertise()).ToList();
        var bundles = clients.ToDictionary(c => c.Key, c => c.Value.ShareKeys(keys.Where(k => k.Party != c.Key).ToList()));
        var inbox = SecAggServer.Route(bundles.Values);
        foreach (var (p, c) in clients) c.MaskInput(x[p], [1.0], inbox[p]);
        clients["acme"].Unmask(Five);
        var e = Assert.Throws<SecAggException>(() => clients["acme"].Unmask(["acme", "globex", "initech"]));
        Assert.Contains("different survivor sets", e.Message);
    }

    [Fact]
    public void The_secagg_plus_graph_is_k_regular_with_k_logarithmic_in_n()
    {
        var s = Session(parties: 200, threshold: 9, length: 10);
        Assert.Equal(16, s.Degree);
        foreach (var p in s.Parties)
        {
            var n = s.Neighbours(p);
            Assert.Equal(16, n.Count);
            Assert.DoesNotContain(p, n);
            foreach (var v in n) Assert.Contains(p, s.Neighbours(v));
        }
        Assert.Equal(4, Session().Neighbours("acme").Count); // small n: the complete graph of the original SecAgg
    }

    [Fact]
    public void A_fifty_party_secagg_plus_session_with_dropouts_sums_correctly()
    {
        var s = Session(parties: 50, threshold: 7, length: 200);
        var x = Inputs(s, seed: 9);
        var (result, _) = Run(s, x, dropBeforeUpload: new HashSet<string> { "org003", "org017" }, dropAfterUpload: new HashSet<string> { "org040" });
        AssertSumWithinQuantization(s, result, x, s.Parties.Except(["org003", "org017"]));
        Assert.Equal(["org003", "org017"], result.RecoveredDropouts);
    }
}
