using FateLlm.Training.Inference;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using Xunit;

namespace FateLlm.Tests;

/// <summary>InferDPT's mechanism against its definition, and the kit's format and checks.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class InferDptSpec
{
    // Six tokens in 3-D: token 0's cosines to the others fall at distinct values.
    static readonly float[][] Rows =
    [
        [1, 0, 0], [0.9f, 0.3f, 0], [0.6f, 0.6f, 0.2f], [0.2f, 1, 0], [-0.5f, 0.5f, 0.5f], [0, 0, 1],
    ];

    static PerturbationKit HandKit(bool[]? covered = null) =>
        new(Rows.Length, 3, Rows.SelectMany(r => r).ToArray(), covered ?? Enumerable.Repeat(true, Rows.Length).ToArray(),
            PerturbationKit.SensitivityOf(Rows.SelectMany(r => r).ToArray(), covered ?? Enumerable.Repeat(true, Rows.Length).ToArray(), 3),
            KitCoverage.All, "hand", new Dictionary<string, byte[]>());

    static double Cos(float[] a, float[] b) =>
        a.Zip(b, (x, y) => (double)x * y).Sum() / Math.Sqrt(a.Sum(x => (double)x * x) * b.Sum(x => (double)x * x));

    /// <summary>Draws n samples and checks each candidate's frequency within 4.5 standard errors of its expected probability.</summary>
    static void AssertFrequencies(TokenPerturbation m, int x, double threshold, double epsilon, IReadOnlyDictionary<int, double> expected, int n = 40_000)
    {
        var rng = new Random(11);
        var counts = new Dictionary<int, int>();
        for (int i = 0; i < n; i++)
        {
            var y = m.SampleAt(x, threshold, epsilon, rng);
            counts[y] = counts.GetValueOrDefault(y) + 1;
        }
        Assert.Equal(expected.Keys.Order(), counts.Keys.Order()); // no draw outside the candidates
        foreach (var (y, p) in expected)
        {
            var se = Math.Sqrt(p * (1 - p) / n);
            Assert.InRange(counts[y] / (double)n, p - 4.5 * se, p + 4.5 * se);
        }
    }

    [Fact]
    public void Draws_follow_exp_of_half_epsilon_times_similarity_over_the_tokens_at_least_as_similar_as_the_threshold()
    {
        var m = new TokenPerturbation(HandKit());
        const double epsilon = 3, threshold = 0.15;
        // The definition, computed here from the raw rows: candidates y with cos(e_0, e_y) ≥ τ, weights exp(ε·cos/2).
        var sims = Rows.Select(r => Cos(Rows[0], r)).ToArray();
        var candidates = Enumerable.Range(0, Rows.Length).Where(y => sims[y] >= threshold).ToList();
        Assert.Equal([0, 1, 2, 3], candidates); // 4 and 5 are less similar than τ
        var z = candidates.Sum(y => Math.Exp(epsilon * sims[y] / 2));
        AssertFrequencies(m, 0, threshold, epsilon, candidates.ToDictionary(y => y, y => Math.Exp(epsilon * sims[y] / 2) / z));
        // ε → 0: uniform over the same candidates.
        AssertFrequencies(m, 0, threshold, 1e-9, candidates.ToDictionary(y => y, _ => 0.25));
        // Large ε: nearly all mass on the token itself (cos 1).
        Assert.True(m.Candidates(0, threshold, 400).Probabilities[0] > 0.999);
    }

    [Fact]
    public void The_threshold_comes_from_laplace_noise_scaled_by_sensitivity_over_epsilon()
    {
        var m = new TokenPerturbation(HandKit());
        var rng = new Random(5);
        // Large ε: little noise, τ near 1, so only the token itself is a candidate; tiny ε: τ spread over [−1, 1].
        var strict = Enumerable.Range(0, 2000).Select(_ => m.Threshold(0, 1e4, rng)).ToList();
        var loose = Enumerable.Range(0, 2000).Select(_ => m.Threshold(0, 1e-3, rng)).ToList();
        Assert.True(strict.Min() > 0.999, $"{strict.Min()}");
        Assert.InRange(loose.Average(), -0.2, 0.2);
        Assert.True(loose.Min() < -0.5 && loose.Max() > 0.5);
        // The full mechanism keeps the token most of the time at large ε and rarely at tiny ε.
        int Kept(double eps) => Enumerable.Range(0, 4000).Count(_ => m.PerturbCovered(0, eps, rng) == 0);
        Assert.True(Kept(1e4) > 3990);
        Assert.InRange(Kept(1e-3), 200, 1400); // about 1/6 to 1/3: uniform over roughly half to all of the six tokens
    }

    // One remote model with a word-level tokenizer for every spec here (training the tokenizer is the slow part).
    static readonly Lazy<(string Dir, ITextTokenizer Tok)> Word = new(MakeWordModel);
    static (string Dir, ITextTokenizer Tok) WordModel() => Word.Value;

    static (string Dir, ITextTokenizer Tok) MakeWordModel()
    {
        var root = TestSupport.TempDir();
        var texts = Enumerable.Range(0, 60).Select(i => $"the quick brown fox number {i} jumps over the lazy dog, again and again!").ToList();
        var tokDir = Path.Combine(root, "sp");
        TokenizerTraining.Train(TokenizerKind.SentencePieceBpe, texts, 600, tokDir);
        var tok = TokenizerLoader.Load(tokDir, null);
        var raw = (System.Text.Json.Nodes.JsonObject)ModelPresets.Create("llama", "tiny").Raw.DeepClone();
        raw["vocab_size"] = tok.VocabSize;
        var dir = Path.Combine(root, "remote");
        using (var model = CausalLm.Create(ModelConfig.FromJson(raw)))
        {
            model.InitializeWeights(3);
            HfCheckpoint.Save(model, dir);
        }
        TokenizerLoader.CopyFiles(tokDir, dir);
        return (dir, tok);
    }

    [Fact]
    public void Every_token_of_a_prompt_is_accounted_for_and_infinite_epsilon_returns_the_prompt_unchanged()
    {
        var (dir, tok) = WordModel();
        const string prompt = "the quick brown fox jumps over 42 lazy dogs!";
        var words = PerturbationKit.Build(dir, KitCoverage.Words);
        var m = new TokenPerturbation(words);
        var ids = tok.Encode(prompt).Where(i => i != tok.BosId).ToList();

        var masked = InferDpt.Perturb(m, tok, prompt, new PerturbationOptions(3, OutOfKit.Mask, Seed: 1), " _");
        Assert.Equal(ids, masked.Tokens.Select(t => t.Original)); // one outcome per token, in order
        Assert.All(masked.Tokens, t => Assert.Equal(m.InKit(t.Original) ? TokenFate.Perturbed : TokenFate.Masked, t.Fate));
        Assert.Contains(masked.Tokens, t => t.Fate == TokenFate.Masked); // digits and punctuation are outside a word kit
        Assert.Contains(masked.Tokens, t => t.Fate == TokenFate.Perturbed);
        Assert.All(masked.Tokens.Where(t => t.Replacement is not null), t => Assert.True(m.InKit(t.Replacement!.Value)));
        Assert.Equal(3.0 * masked.Tokens.Count(t => t.Fate != TokenFate.Masked), masked.EpsilonTotal, 9);
        Assert.Contains(" _", masked.Text);
        // With ε = ∞ only the masked tokens change (" 42" and the pieces of "dogs!"), and a word after a mask keeps its space.
        Assert.Equal("the quick brown fox jumps over _ lazy _ _ _ _", InferDpt.Perturb(m, tok, prompt, new PerturbationOptions(double.PositiveInfinity), " _").Text);

        var perturbed = InferDpt.Perturb(m, tok, prompt, new PerturbationOptions(3, OutOfKit.Perturb, Seed: 1), " _");
        Assert.DoesNotContain(perturbed.Tokens, t => t.Fate == TokenFate.Masked || t.Replacement is null);
        Assert.Contains(perturbed.Tokens, t => t.Fate == TokenFate.PerturbedOutOfKit);
        Assert.Equal(3.0 * ids.Count, perturbed.EpsilonTotal, 9);

        // Seeded: the same seed gives the same text.
        Assert.Equal(perturbed.Text, InferDpt.Perturb(m, tok, prompt, new PerturbationOptions(3, OutOfKit.Perturb, Seed: 1), " _").Text);

        // ε = ∞ with every token covered: the prompt goes out as it is.
        var all = new TokenPerturbation(PerturbationKit.Build(dir, KitCoverage.All));
        Assert.Equal(tok.Decode(ids), InferDpt.Perturb(all, tok, prompt, new PerturbationOptions(double.PositiveInfinity), " _").Text);
        Assert.Throws<ArgumentException>(() => InferDpt.Perturb(all, tok, prompt, new PerturbationOptions(0), " _"));
    }

    [Fact]
    public void A_kit_round_trips_with_its_digest_and_a_damaged_one_is_refused_naming_the_fault()
    {
        var (dir, _) = WordModel();
        var kit = PerturbationKit.Build(dir, KitCoverage.Words);
        var bytes = kit.ToBytes();
        var back = PerturbationKit.Parse(bytes);
        Assert.Equal(kit.Digest, back.Digest);
        Assert.Equal(HfCheckpoint.WeightsDigest(dir), back.ModelDigest);
        Assert.Equal(kit.Covered, back.Covered);
        Assert.True(back.Sensitivity.All(s => s > 0));
        // The tokenizer it carries tokenizes as the remote model's.
        var tok = back.OpenTokenizer(TestSupport.TempDir());
        Assert.Equal(TokenizerLoader.Load(dir, null).Encode("the lazy dog"), tok.Encode("the lazy dog"));

        Assert.Contains("truncated", Assert.Throws<FormatException>(() => PerturbationKit.Parse(bytes[..(bytes.Length / 2)])).Message);
        Assert.Contains("not an IDK1 kit", Assert.Throws<FormatException>(() => PerturbationKit.Parse([.. "XXXX"u8, .. bytes[4..]])).Message);
        var nan = (byte[])bytes.Clone();
        var headerEnd = 16 + BitConverter.ToInt32(bytes, 12);
        BitConverter.GetBytes(float.NaN).CopyTo(nan, headerEnd);
        Assert.Contains("embeddings holds a non-finite value", Assert.Throws<FormatException>(() => PerturbationKit.Parse(nan)).Message);
        Assert.Contains("trailing bytes", Assert.Throws<FormatException>(() => PerturbationKit.Parse([.. bytes, 0])).Message);
    }

    [Fact]
    public void Inversion_recovers_every_token_at_infinite_epsilon_almost_none_at_tiny_epsilon_and_never_a_masked_one()
    {
        var (dir, tok) = WordModel();
        var all = new TokenPerturbation(PerturbationKit.Build(dir, KitCoverage.All));
        const string prompt = "the quick brown fox jumps over the lazy dog";
        InversionAttack.Recovery Attack(double eps, TokenPerturbation m, OutOfKit policy = OutOfKit.Mask) =>
            InversionAttack.Run(m, InferDpt.Perturb(m, tok, prompt, new PerturbationOptions(eps, policy, Seed: 3), " _").Tokens, k: 3);
        var clear = Attack(double.PositiveInfinity, all);
        Assert.Equal((clear.Tokens, clear.Tokens), (clear.RecoveredTop1, clear.RecoveredTopK));
        Assert.True(Attack(1e-3, all).RateTop1 < 0.5);
        var words = new TokenPerturbation(PerturbationKit.Build(dir, KitCoverage.Words));
        var masked = InferDpt.Perturb(words, tok, "fox 42!", new PerturbationOptions(double.PositiveInfinity, OutOfKit.Mask), " _");
        var r = InversionAttack.Run(words, masked.Tokens, k: 3);
        Assert.Equal(masked.Tokens.Count - masked.Masked, r.RecoveredTop1); // the covered ones go out as they are; masked ones are lost to the attacker
    }

    [Fact]
    public void Pdss_training_learns_the_rationale_task_and_alpha_zero_ignores_rationales()
    {
        var (dir, tok) = WordModel();
        var data = Enumerable.Range(0, 12).Select(i => new RationaleExample($"fox number {i}", "lazy dog", "because the quick brown fox jumps")).ToList();
        var d = new FateLlm.Training.Data.DataOptions();
        var o = new RationaleOptions { Alpha = 0.5, Epochs = 4, BatchSize = 4, LearningRate = 1e-2, Seed = 2 };
        double RationaleCe(CausalLm m) => FateLlm.Training.Evaluation.Evaluator.Loss(m, data.Select(e => FateLlm.Training.Data.InstructionData.Tokenize(
            new FateLlm.Training.Data.Example(e.Prompt, e.Rationale, "r"), tok, d with { Template = o.RationaleTemplate })).ToList(), tok.PadId ?? 0, 4).Loss;
        byte[] Trained(RationaleOptions options, IReadOnlyList<RationaleExample> examples, out double before, out double after)
        {
            using var run = FateLlm.Training.Trainer.FineTuning.Open(dir, new FateLlm.Training.Peft.PeftConfig(), 1);
            before = RationaleCe(run.Model);
            var r = RationaleDistillation.Train(run.Model, run.Tokenizer, examples, d, options);
            Assert.Equal(12, r.Steps);
            after = RationaleCe(run.Model);
            return run.TrainableBytes();
        }
        Trained(o, data, out var before, out var after);
        Assert.True(after < before - 0.5, $"rationale CE {before:F3} → {after:F3}");
        var noRationale = o with { Alpha = 0 };
        var a = Trained(noRationale, data, out _, out _);
        var b = Trained(noRationale, [.. data.Select(e => e with { Rationale = "something else entirely" })], out _, out _);
        Assert.Equal(a, b);
        Assert.Throws<ArgumentException>(() => (o with { Alpha = 1.5 }).Check());
        Assert.Throws<ArgumentException>(() => (o with { RationaleTemplate = "no slot" }).Check());
    }

    [Fact]
    public void A_pdss_run_killed_at_step_k_resumes_at_its_checkpoint_and_ends_with_the_tensors_of_an_uninterrupted_run()
    {
        var (dir, tok) = WordModel();
        var data = Enumerable.Range(0, 12).Select(i => new RationaleExample($"fox number {i}", "lazy dog", "because the quick brown fox jumps")).ToList();
        var d = new FateLlm.Training.Data.DataOptions();
        var o = new RationaleOptions { Alpha = 0.5, Epochs = 4, BatchSize = 4, LearningRate = 1e-2, Seed = 2 };
        var peft = new FateLlm.Training.Peft.PeftConfig { LoraDropout = 0.1 }; // the dropout stream must be resumed too
        var folder = Path.Combine(TestSupport.TempDir(), "ckpt");
        byte[] Run(AdapterStepsCheckpoints? c, CancellationToken ct = default)
        {
            using var run = FateLlm.Training.Trainer.FineTuning.Open(dir, peft, 1);
            RationaleDistillation.Train(run.Model, run.Tokenizer, data, d, o, ct, c);
            return run.TrainableBytes();
        }
        var uninterrupted = Run(null);
        // Killed after step 7 (of 12; 3 a epoch): the checkpoint every 2 steps is step 6's, inside epoch 2.
        using (var cts = new CancellationTokenSource())
            Assert.ThrowsAny<OperationCanceledException>(() =>
                Run(new AdapterStepsCheckpoints(folder, 2, new Steps(s => { if (s == 7) cts.Cancel(); })), cts.Token));
        var steps = new List<int>();
        var resumed = Run(new AdapterStepsCheckpoints(folder, 2, new Steps(steps.Add)));
        Assert.Equal(Enumerable.Range(7, 6), steps);
        Assert.Equal(uninterrupted, resumed);
    }

    /// <summary>Reports each step a run takes (for killing a run at step k, and seeing where a resumed one starts).</summary>
    internal sealed class Steps(Action<int> onStep) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress p) => onStep(p.Step);
    }
}
