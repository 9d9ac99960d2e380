using System.Text;

namespace FateLlm.Training.Metrics;

public readonly record struct RougeScore(double Precision, double Recall, double F1);

/// <summary>
/// ROUGE-1/2/L as Google's <c>rouge_score</c> computes them (no stemming): lowercase, non-[a-z0-9] runs are
/// separators, F1 = 2PR/(P+R). CJK characters, which that tokenizer would drop, count as one token each.
/// </summary>
public static class Rouge
{
    public static List<string> Tokenize(string text)
    {
        var tokens = new List<string>();
        var current = new StringBuilder();
        void Flush()
        {
            if (current.Length > 0) tokens.Add(current.ToString());
            current.Clear();
        }
        foreach (var ch in text.ToLowerInvariant())
        {
            if (ch is >= 'a' and <= 'z' or >= '0' and <= '9') current.Append(ch);
            else if (IsCjk(ch)) { Flush(); tokens.Add(ch.ToString()); }
            else Flush();
        }
        Flush();
        return tokens;
    }

    static bool IsCjk(char c) =>
        c is >= '\u4e00' and <= '\u9fff' or >= '\u3400' and <= '\u4dbf' or >= '\uf900' and <= '\ufaff'
          or >= '\u3040' and <= '\u30ff' or >= '\uac00' and <= '\ud7af';

    public static RougeScore N(IReadOnlyList<string> target, IReadOnlyList<string> prediction, int n)
    {
        var t = NGrams.Count(target, n);
        var p = NGrams.Count(prediction, n);
        var overlap = t.Sum(kv => Math.Min(kv.Value, p.GetValueOrDefault(kv.Key)));
        var precision = overlap / (double)Math.Max(p.Values.Sum(), 1);
        var recall = overlap / (double)Math.Max(t.Values.Sum(), 1);
        return new RougeScore(precision, recall, F(precision, recall));
    }

    public static RougeScore L(IReadOnlyList<string> target, IReadOnlyList<string> prediction)
    {
        if (target.Count == 0 || prediction.Count == 0) return new RougeScore(0, 0, 0);
        var lcs = NGrams.LongestCommonSubsequence(target, prediction);
        double precision = lcs / (double)prediction.Count, recall = lcs / (double)target.Count;
        return new RougeScore(precision, recall, F(precision, recall));
    }

    static double F(double p, double r) => p + r > 0 ? 2 * p * r / (p + r) : 0;
}

/// <summary>
/// Sentence BLEU-4 as nltk's <c>sentence_bleu(weights=(0.25,)*4, smoothing_function=SmoothingFunction().method3)</c>:
/// clipped n-gram precisions with unnormalised denominators max(1, hypothesis n-grams), NIST geometric smoothing
/// of zero counts (1 / (2^k · denominator)), brevity penalty against the closest reference length.
/// </summary>
public static class Bleu
{
    public static double Sentence(IReadOnlyList<IReadOnlyList<string>> references, IReadOnlyList<string> hypothesis, int maxN = 4) =>
        Corpus([(references, hypothesis)], maxN);

    /// <summary>Corpus BLEU: clipped n-gram matches and lengths summed over all segments before the ratios are taken.</summary>
    public static double Corpus(IReadOnlyList<(IReadOnlyList<IReadOnlyList<string>> References, IReadOnlyList<string> Hypothesis)> segments, int maxN = 4)
    {
        var numerators = new long[maxN + 1];
        var denominators = new long[maxN + 1];
        long hypLen = 0, refLen = 0;
        foreach (var (references, hypothesis) in segments)
        {
            if (references.Count == 0) throw new ArgumentException("at least one reference is needed", nameof(segments));
            for (int n = 1; n <= maxN; n++)
            {
                var counts = NGrams.Count(hypothesis, n);
                var maxRef = new Dictionary<string, int>();
                foreach (var r in references)
                    foreach (var (g, c) in NGrams.Count(r, n))
                        maxRef[g] = Math.Max(maxRef.GetValueOrDefault(g), c);
                numerators[n] += counts.Sum(kv => Math.Min(kv.Value, maxRef.GetValueOrDefault(kv.Key)));
                denominators[n] += counts.Values.Sum();
            }
            hypLen += hypothesis.Count;
            refLen += references.Select(r => r.Count).OrderBy(l => Math.Abs(l - hypothesis.Count)).ThenBy(l => l).First();
        }
        double bp = hypLen > refLen ? 1 : hypLen == 0 ? 0 : Math.Exp(1 - refLen / (double)hypLen);
        if (numerators[1] == 0) return 0;
        double sum = 0;
        int k = 1;
        for (int n = 1; n <= maxN; n++)
        {
            double p;
            var denominator = Math.Max(1, denominators[n]);
            if (numerators[n] == 0) { p = 1.0 / (Math.Pow(2, k) * denominator); k++; }
            else p = numerators[n] / (double)denominator;
            sum += Math.Log(p) / maxN;
        }
        return bp * Math.Exp(sum);
    }

    public static double Sentence(IReadOnlyList<string> reference, IReadOnlyList<string> hypothesis) =>
        Sentence([reference], hypothesis);
}

internal static class NGrams
{
    public static Dictionary<string, int> Count(IReadOnlyList<string> tokens, int n)
    {
        var d = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i + n <= tokens.Count; i++)
        {
            var key = n == 1 ? tokens[i] : string.Join('\u0001', Enumerable.Range(i, n).Select(j => tokens[j]));
            d[key] = d.GetValueOrDefault(key) + 1;
        }
        return d;
    }

    public static int LongestCommonSubsequence(IReadOnlyList<string> a, IReadOnlyList<string> b)
    {
        var prev = new int[b.Count + 1];
        var cur = new int[b.Count + 1];
        for (int i = 1; i <= a.Count; i++)
        {
            for (int j = 1; j <= b.Count; j++)
                cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : Math.Max(prev[j], cur[j - 1]);
            (prev, cur) = (cur, prev);
        }
        return prev[b.Count];
    }
}

/// <summary>Per-sample generation metrics, averaged (the AdvertiseGen convention), all in [0, 100].</summary>
public sealed record GenerationScores(double Rouge1, double Rouge2, double RougeL, double Bleu4, int Samples)
{
    /// <summary>One sample's ROUGE-1/2/L F1 and sentence BLEU-4, in [0, 100].</summary>
    public static GenerationScores Of(string reference, string prediction)
    {
        var t = Rouge.Tokenize(reference);
        var p = Rouge.Tokenize(prediction);
        return new GenerationScores(100 * Rouge.N(t, p, 1).F1, 100 * Rouge.N(t, p, 2).F1, 100 * Rouge.L(t, p).F1, t.Count == 0 ? 0 : 100 * Bleu.Sentence(t, p), 1);
    }

    public static GenerationScores Average(IReadOnlyList<(string Reference, string Prediction)> pairs)
    {
        if (pairs.Count == 0) return new GenerationScores(0, 0, 0, 0, 0);
        var each = pairs.Select(x => Of(x.Reference, x.Prediction)).ToList();
        return new GenerationScores(each.Average(x => x.Rouge1), each.Average(x => x.Rouge2), each.Average(x => x.RougeL), each.Average(x => x.Bleu4), pairs.Count);
    }
}
