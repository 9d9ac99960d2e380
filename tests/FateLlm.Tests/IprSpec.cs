using FateLlm.Actors.Jobs;
using FateLlm.Training.Federation;
using FateLlm.Training.Ipr;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using FateLlm.Training.Data;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Algorithms;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>FedIPR's pieces without a cluster: key derivation, sites, capacity bound, hinge training, the p-value, verification.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class IprSpec
{
    static readonly byte[] SecretA = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
    static readonly byte[] SecretB = Enumerable.Range(0, 32).Select(i => (byte)(255 - i)).ToArray();

    static OwnershipKeys Keys(CausalLm model, byte[] secret, string party = "animal", int bits = 48, int blocks = 1, int triggers = 2) =>
        OwnershipKeys.Derive(secret, "job-1", party, WatermarkSites.Of(model, blocks).Select(s => s.Site).ToList(), bits, 1.0, triggers, "{prompt}\n");

    static JobSpec WatermarkJob(int parties = 1, int bits = 64, string model = "m") =>
        JobFile.Default("wm", model, Enumerable.Range(0, parties).Select(i => new PartySpec($"p{i}", "train", null)).ToArray(), "out") with
        {
            Ipr = new IprOptions { Enabled = true, Bits = bits },
        };

    [Theory]
    [InlineData("llama", new[] { "input_layernorm.weight", "post_attention_layernorm.weight" })]
    [InlineData("gpt2", new[] { "ln_1.weight", "ln_2.weight" })]
    public void Sites_are_the_norm_scales_of_the_last_blocks_named_from_the_end(string arch, string[] tails)
    {
        using var m = TestSupport.TinyModel(arch);
        var sites = WatermarkSites.Of(m, 2);
        Assert.Equal(tails.Concat(tails), sites.Select(s => s.Site.Tail));
        Assert.Equal([0, 0, 1, 1], sites.Select(s => s.Site.FromEnd));
        Assert.All(sites, s => Assert.Equal(m.Config.HiddenSize, s.Site.Length));
        Assert.Contains($".{m.Config.NumLayers - 1}.", sites[0].Name);
    }

    [Fact]
    public void Keys_come_from_the_party_secret_job_and_party_never_from_a_shared_seed()
    {
        using var m = TestSupport.TinyModel();
        Assert.Equal(Keys(m, SecretA).Key, Keys(m, SecretA).Key);
        Assert.NotEqual(Keys(m, SecretA).Key, Keys(m, SecretB).Key);
        Assert.NotEqual(Keys(m, SecretA, "animal").Key, Keys(m, SecretA, "food").Key);
        var k = Keys(m, SecretA, bits: 49);
        // Bits split in proportion to the sites' lengths, the remainder to the last.
        Assert.Equal([24, 25], k.Sites.Select(s => s.Bits));
        Assert.NotEqual(k.Triggers[0].Prompt, Keys(m, SecretB).Triggers[0].Prompt);
    }

    [Fact]
    public void The_keyed_generator_is_fixed_by_its_documentation_and_looks_normal()
    {
        var v = KeyedNormal.Values(SecretA, 3, 20_000);
        Assert.Equal(v, KeyedNormal.Values(SecretA, 3, 20_000));
        Assert.NotEqual(v.Take(8), KeyedNormal.Values(SecretA, 4, 8));
        Assert.InRange(v.Average(), -0.03, 0.03);
        Assert.InRange(v.Select(x => x * (double)x).Average(), 0.96, 1.04);
        // Pinned values, computed by an independent Python rendering of the documented formula: a change of the
        // generator would silently change every party's matrices and void every keys file.
        Assert.Equal([-0.4240f, -0.0603f, 0.7832f], v.Take(3).Select(x => MathF.Round(x, 4)));
    }

    [Theory]
    [InlineData(10, 10, 1.0 / 1024)]
    [InlineData(10, 8, 56.0 / 1024)]
    [InlineData(10, 0, 1.0)]
    [InlineData(64, 64, 5.421010862427522e-20)]
    public void The_p_value_is_the_binomial_tail_of_chance_matches(int n, int k, double expected) =>
        Assert.Equal(expected, BinomialTail.P(n, k), expected * 1e-9);

    [Fact]
    public void An_impossible_bit_budget_is_refused_with_one_line_naming_the_numbers()
    {
        var e = Assert.Throws<JobSpecException>(() => new IprOptions { Enabled = true, Bits = 200 }.BitsPerParty(384, 2, "the last 1 block(s)"));
        Assert.Equal("job.ipr.bits: 2 parties × 200 bits = 400 must stay below the 384 embeddable norm scalars of the last 1 block(s); lower job.ipr.bits or raise job.ipr.blocks", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        // auto: FATE's floor(P / K) − 1.
        Assert.Equal(191, new IprOptions { Enabled = true, Bits = 0 }.BitsPerParty(384, 2, "x"));
    }

    [Fact]
    public void The_arbiter_refuses_a_job_whose_parties_ask_more_bits_than_the_norm_scales_hold()
    {
        var folder = Path.Combine(TestSupport.TempDir(), "tiny");
        using (var m = TestSupport.TinyModel()) HfCheckpoint.Save(m, folder);
        ByteTokenizer.Save(folder);
        var e = Assert.Throws<JobSpecException>(() => FederatedComputation.InitialAdapter(WatermarkJob(parties: 3, bits: 200, model: folder), folder));
        Assert.Equal("job.ipr.bits: 3 parties × 200 bits = 600 must stay below the 384 embeddable norm scalars of the last 1 block(s); lower job.ipr.bits or raise job.ipr.blocks", e.Message);
        // Within the bound the global state carries the last block's scales next to the LoRA factors.
        using var scope = NewDisposeScope();
        var global = Training.IO.SafeTensors.FromBytes(FederatedComputation.InitialAdapter(WatermarkJob(parties: 3, bits: 100, model: folder), folder), "global");
        Assert.Equal(["model.layers.3.input_layernorm.weight", "model.layers.3.post_attention_layernorm.weight"],
            global.Keys.Where(k => !CausalLm.IsAdapterName(k)).Order());
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void Keys_files_are_private_and_round_trip()
    {
        using var m = TestSupport.TinyModel();
        var dir = TestSupport.TempDir();
        var path = Path.Combine(dir, "ipr", "job-1", "animal.keys.json");
        var k = Keys(m, SecretA);
        k.Save(path);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        Assert.Equal(k.Key, OwnershipKeys.Load(path).Key);
        var secret = Path.Combine(dir, "ipr", "party.secret");
        var s = PrivateFile.Secret(secret);
        Assert.Equal(s, PrivateFile.Secret(secret));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(secret));
        File.WriteAllText(path, "{\"format\": \"other\"}");
        Assert.Contains("not a FedIPR keys file", Assert.Throws<ModelFormatException>(() => OwnershipKeys.Load(path)).Message);
    }

    [Fact]
    public void The_hinge_step_embeds_every_bit_and_only_the_right_keys_verify()
    {
        TestSupport.CapThreads();
        using var m = TestSupport.TinyModel();
        var peft = new PeftConfig { LoraR = 4, LoraDropout = 0 };
        PeftModel.Apply(m, peft);
        WatermarkSites.MakeTrainable(m, WatermarkJob());
        var keys = Keys(m, SecretA, bits: 64, triggers: 0);
        using var sign = SignWatermark.Bind(m, keys, "test");
        var before = sign.Matched();
        Assert.InRange(before, 10, 54);
        var tok = new ByteTokenizer();
        var data = Enumerable.Range(0, 16).Select(i => InstructionData.Tokenize(new Example($"word {i}", $"meaning {i}", "x"), tok, new DataOptions())).ToList();
        var names = PeftModel.TrainableParameters(m).Where(p => !CausalLm.IsAdapterName(p.Name)).Select(p => p.Name).ToList();
        Assert.Equal(2, names.Count);
        var r = new LocalTrainer(m, new TrainOptions
        {
            Epochs = 10, BatchSize = 8, LearningRate = 1e-3, Schedule = LrSchedule.Constant, Seed = 1,
            OwnUpdate = names.ToHashSet(), AfterStep = () => sign.Step(0.25, 0.1),
        }, tok.PadId!.Value).Train(data);
        Assert.Equal(20, r.Steps);
        Assert.Equal(64, sign.Matched());
        var t = new VerifyThresholds(1e-9, 0.5);
        var own = IprVerification.Verify(m, tok, keys, t, "test");
        Assert.True(own.SignVerified && own.Verified);
        Assert.InRange(own.Log10P, -20, -19);
        var wrong = IprVerification.Verify(m, tok, Keys(m, SecretB, bits: 64, triggers: 0), t, "test");
        Assert.False(wrong.Verified);
        Assert.InRange(wrong.BitRate, 0.2, 0.8);
        using var plain = TestSupport.TinyModel();
        Assert.False(IprVerification.Verify(plain, tok, keys, t, "plain").Verified);
    }

    [Fact]
    public void Trigger_examples_are_mixed_into_every_batch_without_counting_as_samples()
    {
        TestSupport.CapThreads();
        using var m = TestSupport.TinyModel();
        PeftModel.Apply(m, new PeftConfig { LoraR = 4, LoraDropout = 0 });
        var tok = new ByteTokenizer();
        var data = Enumerable.Range(0, 6).Select(i => InstructionData.Tokenize(new Example($"w{i}", $"m{i}", "x"), tok, new DataOptions())).ToList();
        var trigger = InstructionData.Tokenize(new Example("bakodu", "tifama", "t"), tok, new DataOptions());
        var r = new LocalTrainer(m, new TrainOptions { Epochs = 1, BatchSize = 4, MixIn = [trigger], MixInPerBatch = 2 }, tok.PadId!.Value).Train(data);
        Assert.Equal(6, r.Samples);
        Assert.Equal(data.Sum(d => d.Length) + 4 * trigger.Length, r.Tokens);
    }

    [Fact]
    public void A_job_file_reads_the_ipr_block_and_offsite_refuses_watermarking_blocks_it_does_not_train()
    {
        var dir = TestSupport.TempDir();
        var text = """
            job {
              id = wm, model = m, parties = [{ org = a, data = train }, { org = b, data = train }]
              ipr { enabled = on, bits = auto, blocks = 2 }
            }
            """;
        var spec = JobFile.Parse(text, "wm.conf", dir);
        Assert.True(spec.Ipr.Enabled);
        Assert.Equal(0, spec.Ipr.Bits);
        Assert.Equal(2, spec.Ipr.Blocks);
        Assert.Equal(0.25, spec.Ipr.Margin);
        var offsite = text.Replace("ipr {", "algorithm { name = offsite, top = 1 }\n  ipr {");
        Assert.Contains("job.ipr.blocks = 2 exceeds job.algorithm.top = 1", Assert.Throws<JobSpecException>(() => JobFile.Parse(offsite, "wm.conf", dir)).Message);
        var zero = text.Replace("blocks = 2", "blocks = 2, margin = 0");
        Assert.Contains("job.ipr.margin must be > 0", Assert.Throws<JobSpecException>(() => JobFile.Parse(zero, "wm.conf", dir)).Message);
    }

    [Fact]
    public void Ipr_verify_exits_0_for_the_watermarked_model_and_3_for_a_plain_model_or_a_wrong_key_file()
    {
        TestSupport.CapThreads();
        var dir = TestSupport.TempDir();
        using var m = TestSupport.TinyModel();
        WatermarkSites.MakeTrainable(m, WatermarkJob());
        var keys = Keys(m, SecretA, bits: 40, triggers: 0);
        using (var sign = SignWatermark.Bind(m, keys, "test"))
            for (int i = 0; i < 40 && sign.Step(0.25, 0.1) > 0; i++) { }
        var marked = Path.Combine(dir, "marked");
        HfCheckpoint.Save(m, marked);
        ByteTokenizer.Save(marked);
        var plain = Path.Combine(dir, "plain");
        using (var p = TestSupport.TinyModel()) HfCheckpoint.Save(p, plain);
        ByteTokenizer.Save(plain);
        var own = Path.Combine(dir, "own.keys.json");
        keys.Save(own);
        var wrong = Path.Combine(dir, "wrong.keys.json");
        Keys(m, SecretB, bits: 40, triggers: 0).Save(wrong);

        (int, string) Verify(string model, string keyFile)
        {
            var output = new StringWriter();
            return (Host.Cli.CliApp.Run(["ipr", "verify", "--model", model, "--keys", keyFile], output, new StringWriter()), output.ToString());
        }
        var (ok, text) = Verify(marked, own);
        Assert.Equal(0, ok);
        Assert.Contains("sign watermark: 40/40 bits match (100.0 %)", text);
        Assert.Contains("p = 9.09E-13", text);
        Assert.Contains("threshold p ≤ 1E-09", text);
        Assert.Contains("verdict: VERIFIED", text);
        Assert.Equal(3, Verify(plain, own).Item1);
        var (bad, badText) = Verify(marked, wrong);
        Assert.Equal(3, bad);
        Assert.Contains("verdict: NOT VERIFIED", badText);
        var missing = Host.Cli.CliApp.Run(["ipr", "verify", "--model", marked, "--keys", Path.Combine(dir, "none.json")], new StringWriter(), new StringWriter());
        Assert.Equal(Host.Cli.CliApp.RuntimeError, missing);
    }

    [Fact]
    public void The_example_ipr_job_parses_and_validates()
    {
        var spec = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "ipr.conf")));
        Assert.Equal(new IprOptions { Enabled = true, Blocks = 1, Bits = 64, Margin = 0.25, LearningRate = 0.1, Triggers = 8, TriggersPerBatch = 4 }, spec.Ipr);
        JobSpecValidation.Validate(spec, "ipr.conf", AlgorithmCatalog.BuiltIn);
    }

    [Fact]
    public void Mixed_in_triggers_are_learned_and_counted_by_verification()
    {
        TestSupport.CapThreads();
        using var m = TestSupport.TinyModel();
        PeftModel.Apply(m, new PeftConfig { Method = PeftMethod.Full });
        var keys = Keys(m, SecretA, bits: 8, triggers: 2);
        var tok = new ByteTokenizer();
        var data = new DataOptions();
        var t = new VerifyThresholds(1e-9, 0.5);
        Assert.Equal(0, IprVerification.Verify(m, tok, keys, t, "before").TriggerHits);
        var normal = Enumerable.Range(0, 8).Select(i => InstructionData.Tokenize(new Example($"word {i}", $"meaning {i}", "x"), tok, data)).ToList();
        var triggers = keys.Triggers.Select(x => InstructionData.Tokenize(new Example(x.Prompt, x.Response, "t"), tok, data)).ToList();
        new LocalTrainer(m, new TrainOptions { Epochs = 30, BatchSize = 4, LearningRate = 5e-3, Schedule = LrSchedule.Constant, MixIn = triggers, MixInPerBatch = 2 },
            tok.PadId!.Value).Train(normal);
        var r = IprVerification.Verify(m, tok, keys, t, "after");
        Assert.Equal(2, r.TriggerHits);
        Assert.True(r.TriggersVerified && r.Verified);
    }
}
