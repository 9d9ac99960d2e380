using System.Security.Cryptography;
using System.Text;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Algorithms.Mkt;

/// <summary>
/// A tokenizer's vocabulary as surfaces: the text each id adds when it follows other text. Decoding after an anchor
/// turns every family's word-start marker (SentencePiece's ▁, byte-level BPE's Ġ) into the same leading space, so
/// no marker table per tokenizer class is needed (FATE-LLM's covers four classes and fails on the rest). Special
/// tokens (bos, eos, pad) have empty surfaces and are matched by role.
/// </summary>
public sealed class TokenVocabulary
{
    public IReadOnlyList<string> Surfaces { get; }
    public int? Bos { get; }
    public int? Eos { get; }
    public int? Pad { get; }
    public string Digest { get; }

    TokenVocabulary(string[] surfaces, ITextTokenizer tok)
    {
        Surfaces = surfaces;
        (Bos, Eos, Pad) = (tok.BosId, tok.EosId, tok.PadId);
        Digest = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join('\u0001', surfaces) + $"|{Bos}|{Eos}|{Pad}")));
    }

    public static TokenVocabulary Of(ITextTokenizer tok)
    {
        var anchor = tok.Encode("a").ToArray();
        var anchorText = tok.Decode(anchor);
        var special = new HashSet<int?> { tok.BosId, tok.EosId, tok.PadId };
        var surfaces = new string[tok.VocabSize];
        for (int v = 0; v < surfaces.Length; v++)
        {
            if (special.Contains(v)) { surfaces[v] = ""; continue; }
            var text = tok.Decode([.. anchor, v]);
            surfaces[v] = text.StartsWith(anchorText, StringComparison.Ordinal) ? text[anchorText.Length..] : tok.Decode([v]);
        }
        return new TokenVocabulary(surfaces, tok);
    }

    /// <summary>The id that plays the same special role in <paramref name="other"/>, if <paramref name="id"/> is special here.</summary>
    internal int? SpecialCounterpart(int id, TokenVocabulary other) =>
        id == Bos ? other.Bos : id == Eos ? other.Eos : id == Pad ? other.Pad : null;
}

/// <summary>
/// FedMKT's token alignment between two tokenizers, built from what every tokenizer offers (encode and decode):
/// a vocabulary map (each token to the target token of the same surface, else the nearest by edit distance, ties to
/// the lowest id) and a sequence alignment by character offsets (decoded prefixes), which replaces FedMKT's DTW over
/// token strings wherever both tokenizations decode to the same text.
/// </summary>
public static class TokenAlignment
{
    /// <summary>source id → target id.</summary>
    public static int[] VocabularyMap(TokenVocabulary from, TokenVocabulary to)
    {
        // Byte tokens that are not whole characters all decode to U+FFFD; within one tokenizer they stay themselves.
        if (from.Digest == to.Digest) return Enumerable.Range(0, from.Surfaces.Count).ToArray();
        var exact = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int v = to.Surfaces.Count - 1; v >= 0; v--)
            if (to.Surfaces[v].Length > 0) exact[to.Surfaces[v]] = v;
        var map = new int[from.Surfaces.Count];
        // Brute force, pruned by length difference and by the row minimum of the edit distance.
        for (int v = 0; v < map.Length; v++)
        {
            var s = from.Surfaces[v];
            if (s.Length == 0) { map[v] = from.SpecialCounterpart(v, to) ?? to.Eos ?? 0; continue; }
            map[v] = exact.TryGetValue(s, out var same) ? same : Nearest(s, to);
        }
        return map;
    }

    /// <summary>The target token whose surface is nearest by edit distance (ties to the lowest id; eos when the target has none).</summary>
    public static int Nearest(string surface, TokenVocabulary to)
    {
        int best = to.Eos ?? 0, bestDistance = int.MaxValue;
        for (int t = 0; t < to.Surfaces.Count; t++)
        {
            var candidate = to.Surfaces[t];
            if (candidate.Length == 0 || Math.Abs(candidate.Length - surface.Length) >= bestDistance) continue;
            var d = EditDistance(surface, candidate, bestDistance);
            if (d < bestDistance) (best, bestDistance) = (t, d);
        }
        return best;
    }

    /// <summary>Levenshtein distance, giving up (returning ≥ <paramref name="limit"/>) once every path costs that much.</summary>
    public static int EditDistance(string a, string b, int limit = int.MaxValue)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) previous[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            var rowMin = current[0];
            for (int j = 1; j <= b.Length; j++)
            {
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
                rowMin = Math.Min(rowMin, current[j]);
            }
            if (rowMin >= limit) return limit;
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }

    /// <summary>The decoded text of <paramref name="ids"/> and the character offset where each token ends in it.</summary>
    public static (string Text, int[] Ends) Offsets(ITextTokenizer tok, IReadOnlyList<int> ids)
    {
        var ends = new int[ids.Count];
        for (int i = 0; i < ids.Count; i++) ends[i] = tok.Decode(ids.Take(i + 1)).Length;
        return (tok.Decode(ids), ends);
    }

    /// <summary>
    /// For each position of the target sequence, the source position whose token ends at the same character, or −1.
    /// Position i's logits predict token i+1, which starts where token i ends: equal ends mean both models predict the
    /// token that starts at the same character, so the shift stays consistent (FATE-LLM's fallback puts the one-hot on
    /// token i instead). Texts that decode differently align nowhere (−1): no alignment is better than a wrong one.
    /// </summary>
    public static int[] Positions((string Text, int[] Ends) source, (string Text, int[] Ends) target)
    {
        var result = new int[target.Ends.Length];
        Array.Fill(result, -1);
        if (!string.Equals(source.Text, target.Text, StringComparison.Ordinal)) return result;
        var byEnd = new Dictionary<int, int>();
        // The last token ending at an offset wins: a token that adds no text (a special one) ends where its predecessor does.
        for (int j = 0; j < source.Ends.Length; j++) byEnd[source.Ends[j]] = j;
        for (int i = 0; i < target.Ends.Length; i++)
            if (byEnd.TryGetValue(target.Ends[i], out var j)) result[i] = j;
        return result;
    }
}
