using System.Text.RegularExpressions;
using FateLlm.Training.Metrics;

namespace FateLlm.Training.Evaluation.Harness;

/// <summary>An aggregated metric with its standard error (null where lm-eval reports N/A).</summary>
public readonly record struct MetricValue(double Value, double? StdErr);

/// <summary>
/// lm-eval's per-document metrics and their aggregations. Means report the sample standard error
/// (sd with n − 1, over √n); perplexity and corpus BLEU a bootstrap standard error over documents, as lm-eval's
/// bootstrappable metrics do; the weighted perplexities and bits per byte none, as in lm-eval.
/// </summary>
public static class TaskMetrics
{
    /// <summary>lm-eval's multiple_choice: the argmax of the log-likelihoods, and of the log-likelihoods over each choice's length in characters.</summary>
    public static (double Acc, double AccNorm) MultipleChoice(IReadOnlyList<double> logLikelihoods, IReadOnlyList<string> choices, IReadOnlyList<int> gold)
    {
        int ArgMax(Func<int, double> f) => Enumerable.Range(0, logLikelihoods.Count).MaxBy(f);
        var pred = ArgMax(i => logLikelihoods[i]);
        var predNorm = ArgMax(i => logLikelihoods[i] / Math.Max(1, choices[i].EnumerateRunes().Count()));
        return (gold.Contains(pred) ? 1 : 0, gold.Contains(predNorm) ? 1 : 0);
    }

    /// <summary>lm-eval's count_words: pieces between runs of whitespace.</summary>
    public static int Words(string text) => Regex.Split(text, @"\s+").Length;

    public static int Bytes(string text) => System.Text.Encoding.UTF8.GetByteCount(text);

    const string Punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"; // Python's string.punctuation

    /// <summary>Hugging Face evaluate's exact_match with lm-eval's options, 1 or 0 (the best over several references).</summary>
    public static double ExactMatch(string prediction, IReadOnlyList<string> references, bool ignoreCase, bool ignorePunctuation, IReadOnlyList<string> regexesToIgnore, bool ignoreNumbers)
    {
        string Clean(string s)
        {
            foreach (var r in regexesToIgnore) s = Regex.Replace(s, r, "");
            if (ignoreCase) s = s.ToLowerInvariant();
            if (ignorePunctuation) s = new string(s.Where(c => !Punctuation.Contains(c)).ToArray());
            if (ignoreNumbers) s = new string(s.Where(c => !char.IsAsciiDigit(c)).ToArray());
            return s;
        }
        var p = Clean(prediction);
        return references.Any(r => Clean(r) == p) ? 1 : 0;
    }

    /// <summary>ROUGE-L F1 in [0, 100], the best over references.</summary>
    public static double RougeL(string prediction, IReadOnlyList<string> references) =>
        references.Max(r => 100 * Rouge.L(Rouge.Tokenize(r), Rouge.Tokenize(prediction)).F1);

    public static MetricValue Mean(IReadOnlyList<double> xs)
    {
        if (xs.Count == 0) return new MetricValue(double.NaN, null);
        var mean = xs.Average();
        if (xs.Count < 2) return new MetricValue(mean, null);
        var sd = Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Count - 1));
        return new MetricValue(mean, sd / Math.Sqrt(xs.Count));
    }

    /// <summary>exp(−mean log-likelihood) of loglikelihood requests.</summary>
    public static MetricValue Perplexity(IReadOnlyList<double> logLikelihoods, int bootstrap, int seed) =>
        new(Math.Exp(-logLikelihoods.Average()), BootstrapStdErr(logLikelihoods.Count, idx => Math.Exp(-idx.Average(i => logLikelihoods[i])), bootstrap, seed));

    /// <summary>exp(−Σ log-likelihood / Σ weight), the weight being words or bytes.</summary>
    public static MetricValue WeightedPerplexity(IReadOnlyList<(double LogLikelihood, int Weight)> items) =>
        new(Math.Exp(-items.Sum(x => x.LogLikelihood) / items.Sum(x => x.Weight)), null);

    public static MetricValue BitsPerByte(IReadOnlyList<(double LogLikelihood, int Bytes)> items) =>
        new(-items.Sum(x => x.LogLikelihood) / items.Sum(x => x.Bytes) / Math.Log(2), null);

    /// <summary>Corpus BLEU-4 in [0, 100] over ROUGE's tokenization, with a bootstrap standard error.</summary>
    public static MetricValue CorpusBleu(IReadOnlyList<(IReadOnlyList<string> References, string Prediction)> items, int bootstrap, int seed)
    {
        var tokenized = items.Select(x => ((IReadOnlyList<IReadOnlyList<string>>)x.References.Select(r => (IReadOnlyList<string>)Rouge.Tokenize(r)).ToList(),
            (IReadOnlyList<string>)Rouge.Tokenize(x.Prediction))).ToList();
        double Score(IEnumerable<int> idx) => 100 * Bleu.Corpus(idx.Select(i => tokenized[i]).ToList());
        return new MetricValue(Score(Enumerable.Range(0, items.Count)), BootstrapStdErr(items.Count, Score, bootstrap, seed));
    }

    static double? BootstrapStdErr(int n, Func<IEnumerable<int>, double> statistic, int resamples, int seed)
    {
        if (n < 2 || resamples < 2) return null;
        var rng = new Random(seed);
        var values = new double[resamples];
        for (int b = 0; b < resamples; b++) values[b] = statistic(Enumerable.Range(0, n).Select(_ => rng.Next(n)).ToArray());
        var mean = values.Average();
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (resamples - 1));
    }
}
