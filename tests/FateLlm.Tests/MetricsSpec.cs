using System.Text.Json;
using FateLlm.Training.Metrics;
using Xunit;

namespace FateLlm.Tests;

public class MetricsSpec
{
    [Fact]
    public void Rouge_tokenizes_like_rouge_score_and_splits_cjk_per_character()
    {
        Assert.Equal(["the", "cat", "s", "mat", "42"], Rouge.Tokenize("The cat's MAT-42!"));
        Assert.Equal(["广", "告", "ad", "copy"], Rouge.Tokenize("广告 ad-copy"));
    }

    [Fact]
    public void Rouge_n_and_l_match_hand_computed_values()
    {
        var target = Rouge.Tokenize("the cat sat on the mat");
        var pred = Rouge.Tokenize("the cat on the mat");
        // unigrams: overlap 5 (the×2, cat, on, mat); P = 5/5, R = 5/6
        var r1 = Rouge.N(target, pred, 1);
        Assert.Equal(1.0, r1.Precision, 9);
        Assert.Equal(5.0 / 6, r1.Recall, 9);
        Assert.Equal(2 * 1.0 * (5.0 / 6) / (1 + 5.0 / 6), r1.F1, 9);
        // bigrams: target {the cat, cat sat, sat on, on the, the mat}, pred {the cat, cat on, on the, the mat}: overlap 3
        var r2 = Rouge.N(target, pred, 2);
        Assert.Equal(3.0 / 4, r2.Precision, 9);
        Assert.Equal(3.0 / 5, r2.Recall, 9);
        // LCS = 5 (the cat on the mat)
        var rl = Rouge.L(target, pred);
        Assert.Equal(1.0, rl.Precision, 9);
        Assert.Equal(5.0 / 6, rl.Recall, 9);
        Assert.Equal(0, Rouge.L(target, []).F1);
        Assert.Equal(0, Rouge.N([], pred, 1).F1);
    }

    [Fact]
    public void Bleu4_equals_nltk_sentence_bleu_with_method3_smoothing()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestSupport.FixturePath("bleu_nltk.json")));
        foreach (var c in doc.RootElement.EnumerateArray())
        {
            var reference = c.GetProperty("reference").GetString()!.Split(' ');
            var hypothesis = c.GetProperty("hypothesis").GetString()!.Split(' ');
            Assert.Equal(c.GetProperty("bleu").GetDouble(), Bleu.Sentence(reference, hypothesis), 12);
        }
    }

    [Fact]
    public void Bleu4_of_an_empty_hypothesis_or_no_unigram_match_is_zero()
    {
        Assert.Equal(0, Bleu.Sentence(["a", "b"], []));
        Assert.Equal(0, Bleu.Sentence(["a", "b"], ["c"]));
    }

    [Fact]
    public void Generation_scores_average_per_sample_in_percent()
    {
        var s = GenerationScores.Average([("a b c d", "a b c d"), ("x y", "z")]);
        Assert.Equal(50, s.Rouge1, 9);
        Assert.Equal(50, s.RougeL, 9);
        Assert.Equal(50, s.Bleu4, 9);
        Assert.Equal(2, s.Samples);
    }
}
