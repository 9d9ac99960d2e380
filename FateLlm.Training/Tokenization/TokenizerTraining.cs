using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using FateLlm.Training.Data;

namespace FateLlm.Training.Tokenization;

public enum TokenizerKind { Gpt2Bpe, SentencePieceBpe }

/// <summary>
/// Trains BPE tokenizers on a public corpus, written in the formats HF and SentencePiece read unchanged:
/// byte-level BPE as GPT-2's <c>vocab.json</c> + <c>merges.txt</c> (and HF's <c>tokenizer.json</c>), SentencePiece BPE as
/// LLaMA's <c>tokenizer.model</c> (a ModelProto; <c>▁</c> word marker, dummy prefix, byte fallback).
/// </summary>
public static class TokenizerTraining
{
    public const string EndOfText = "<|endoftext|>";

    public static TokenizerKind ParseKind(string s) => s.ToLowerInvariant() switch
    {
        "gpt2-bpe" => TokenizerKind.Gpt2Bpe,
        "sentencepiece-bpe" => TokenizerKind.SentencePieceBpe,
        _ => throw new ArgumentException($"unknown tokenizer kind '{s}' (gpt2-bpe, sentencepiece-bpe)"),
    };

    /// <summary>Learns the merges, then writes the folder; a vocabulary too small for the corpus throws <see cref="ArgumentException"/> before anything is written.</summary>
    public static void Train(TokenizerKind kind, IReadOnlyList<string> texts, int vocabSize, string outDir)
    {
        if (kind == TokenizerKind.Gpt2Bpe) TrainGpt2(texts, vocabSize, outDir);
        else TrainSentencePiece(texts, vocabSize, outDir);
    }

    /// <summary>The texts of a JSONL corpus: the named string fields of every line, or every string field when none are named.</summary>
    public static List<string> ReadCorpus(string path, IReadOnlyCollection<string>? fields = null)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: file not found");
        var texts = new List<string>();
        int line = 0;
        foreach (var l in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(l)) continue;
            JsonDocument doc;
            try { doc = JsonDocument.Parse(l); }
            catch (JsonException e) { throw new DataFormatException($"{path}:{line}:{(e.BytePositionInLine ?? 0) + 1}: not valid JSON"); }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new DataFormatException($"{path}:{line}: expected a JSON object");
                texts.AddRange(doc.RootElement.EnumerateObject()
                    .Where(p => p.Value.ValueKind == JsonValueKind.String && (fields is null || fields.Contains(p.Name))).Select(p => p.Value.GetString()!));
            }
        }
        if (texts.Count == 0) throw new DataFormatException($"{path}: no text");
        return texts;
    }

    // ---- GPT-2 byte-level BPE ----

    /// <summary>GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with its leading space.</summary>
    public static readonly Regex Gpt2Pattern = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled);

    static void TrainGpt2(IReadOnlyList<string> texts, int vocabSize, string outDir)
    {
        var symbols = ByteLevel.AllSymbols.ToList(); // the 256 byte symbols, in byte order, so every text encodes
        if (vocabSize < symbols.Count + 1) throw new ArgumentException($"--vocab {vocabSize} is below the 257 a byte-level BPE needs (256 bytes + {EndOfText})");
        var ids = symbols.Select((s, i) => (s, i)).ToDictionary(x => x.s, x => x.i);
        var words = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (Match m in Gpt2Pattern.Matches(text))
            {
                var w = string.Concat(ByteLevel.SymbolsInOrder(m.Value));
                words[w] = words.GetValueOrDefault(w) + 1;
            }
        var sequences = words.Select(kv => (kv.Key.Select(c => ids[c.ToString()]).ToArray(), kv.Value)).ToList();
        var merges = Bpe.Learn(sequences, symbols, vocabSize - symbols.Count - 1);
        Directory.CreateDirectory(outDir);
        // Ids: the 256 byte symbols, <|endoftext|>, then each learned symbol in the order it was made.
        var vocab = new JsonObject();
        for (int i = 0; i < 256; i++) vocab[symbols[i]] = i;
        vocab[EndOfText] = 256;
        for (int i = 256; i < symbols.Count; i++) vocab[symbols[i]] = i + 1;
        var utf8 = new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        File.WriteAllText(Path.Combine(outDir, "vocab.json"), vocab.ToJsonString(utf8), new UTF8Encoding(false));
        File.WriteAllText(Path.Combine(outDir, "merges.txt"), "#version: 0.2\n" + string.Concat(merges.Select(m => $"{symbols[m.A]} {symbols[m.B]}\n")), new UTF8Encoding(false));
        // tokenizer.json's added token carries its id first; tokenizer_config.json's is keyed by it.
        JsonObject Eos(bool withId = false)
        {
            var o = withId ? new JsonObject { ["id"] = 256 } : new JsonObject();
            foreach (var (k, v) in new (string, JsonNode)[] { ("content", EndOfText), ("single_word", false), ("lstrip", false), ("rstrip", false), ("normalized", true), ("special", true) })
                o[k] = v;
            return o;
        }
        File.WriteAllText(Path.Combine(outDir, TokenizerLoader.ConfigFile), new JsonObject
        {
            ["tokenizer_class"] = "GPT2Tokenizer", ["bos_token"] = EndOfText, ["eos_token"] = EndOfText, ["unk_token"] = EndOfText,
            ["add_bos_token"] = false, ["add_prefix_space"] = false, ["model_max_length"] = 1024,
            ["added_tokens_decoder"] = new JsonObject { ["256"] = Eos() },
        }.ToJsonString(new JsonSerializerOptions(utf8) { WriteIndented = true }));
        File.WriteAllText(Path.Combine(outDir, "special_tokens_map.json"),
            new JsonObject { ["bos_token"] = EndOfText, ["eos_token"] = EndOfText, ["unk_token"] = EndOfText }.ToJsonString());
        // HF's fast tokenizer file, so AutoTokenizer (and HF's Rust library) read the same model directly.
        var byteLevel = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        File.WriteAllText(Path.Combine(outDir, "tokenizer.json"), new JsonObject
        {
            ["version"] = "1.0", ["truncation"] = null, ["padding"] = null,
            ["added_tokens"] = new JsonArray(Eos(withId: true)),
            ["normalizer"] = null, ["pre_tokenizer"] = byteLevel.DeepClone(), ["post_processor"] = byteLevel.DeepClone(), ["decoder"] = byteLevel.DeepClone(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "", ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false, ["vocab"] = vocab.DeepClone(),
                ["merges"] = new JsonArray(merges.Select(m => (JsonNode)$"{symbols[m.A]} {symbols[m.B]}").ToArray()),
            },
        }.ToJsonString(utf8), new UTF8Encoding(false));
    }

    // ---- SentencePiece BPE ----

    public const string WordMarker = "▁";

    static void TrainSentencePiece(IReadOnlyList<string> texts, int vocabSize, string outDir)
    {
        const int specials = 3, bytes = 256;
        // Words as SentencePiece sees them: whitespace becomes ▁, which starts each word (with a dummy prefix for the first).
        var words = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (var w in SentencePieceWords(text)) words[w] = words.GetValueOrDefault(w) + 1;
        var chars = words.SelectMany(kv => Runes(kv.Key).Select(r => (r, kv.Value))).GroupBy(x => x.r).OrderByDescending(g => g.Sum(x => x.Value))
            .ThenBy(g => g.Key, StringComparer.Ordinal).Select(g => g.Key).ToList();
        var budget = vocabSize - specials - bytes - chars.Count;
        if (budget < 0) throw new ArgumentException($"--vocab {vocabSize} is below the {specials + bytes + chars.Count} a SentencePiece BPE needs here (3 special, 256 byte and {chars.Count} character pieces)");
        var ids = chars.Select((c, i) => (c, i)).ToDictionary(x => x.c, x => x.i, StringComparer.Ordinal);
        var symbols = chars.ToList();
        var sequences = words.Select(kv => (Runes(kv.Key).Select(r => ids[r]).ToArray(), kv.Value)).ToList();
        var merges = Bpe.Learn(sequences, symbols, budget);
        // Pieces: <unk> <s> </s>, the 256 byte pieces, then merges by rank (score −rank: earlier merges win), then characters.
        var pieces = new List<SentencePiece> { new("<unk>", 0, SentencePiece.Unknown), new("<s>", 0, SentencePiece.Control), new("</s>", 0, SentencePiece.Control) };
        for (int b = 0; b < bytes; b++) pieces.Add(new($"<0x{b:X2}>", 0, SentencePiece.Byte));
        var learned = symbols.Count - chars.Count;
        for (int k = 0; k < learned; k++) pieces.Add(new(symbols[chars.Count + k], -k, SentencePiece.Normal));
        for (int c = 0; c < chars.Count; c++) pieces.Add(new(chars[c], -(learned + c), SentencePiece.Normal));
        Directory.CreateDirectory(outDir);
        File.WriteAllBytes(Path.Combine(outDir, "tokenizer.model"), SentencePieceModel.Write(pieces, vocabSize));
        File.WriteAllText(Path.Combine(outDir, TokenizerLoader.ConfigFile), new JsonObject
        {
            ["tokenizer_class"] = "LlamaTokenizer", ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>",
            ["add_bos_token"] = true, ["add_eos_token"] = false, ["legacy"] = true, ["model_max_length"] = 1024,
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(outDir, "special_tokens_map.json"),
            new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>" }.ToJsonString());
    }

    /// <summary>A text's words as SentencePiece splits them after escaping whitespace: each starts with ▁.</summary>
    public static IEnumerable<string> SentencePieceWords(string text)
    {
        var escaped = WordMarker + text.Replace(" ", WordMarker);
        int start = 0;
        for (int i = 1; i <= escaped.Length; i++)
            if (i == escaped.Length || escaped[i] == WordMarker[0])
            {
                if (i > start) yield return escaped[start..i];
                start = i;
            }
    }

    static IEnumerable<string> Runes(string s) => s.EnumerateRunes().Select(r => r.ToString());
}

/// <summary>BPE merge learning over weighted symbol sequences: the most frequent adjacent pair is merged, repeatedly.</summary>
internal static class Bpe
{
    /// <summary>
    /// Learns merges until <paramref name="count"/> new symbols were added to <paramref name="symbols"/> (a merge whose
    /// string another merge already made reuses that symbol). Ties go to the ordinally smaller pair of strings, so
    /// training is deterministic. Pair counts are updated incrementally.
    /// </summary>
    public static List<(int A, int B)> Learn(List<(int[] Word, int Count)> words, List<string> symbols, int count)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < symbols.Count; i++) index.TryAdd(symbols[i], i);
        var target = symbols.Count + count;
        var seqs = words.Select(w => w.Word.ToList()).ToList();
        var pairCount = new Dictionary<(int, int), long>();
        var where = new Dictionary<(int, int), HashSet<int>>();
        var heap = new PriorityQueue<(int, int), (long, string, string)>(Comparer<(long, string, string)>.Create((x, y) =>
        {
            var c = y.Item1.CompareTo(x.Item1);
            if (c != 0) return c;
            c = string.CompareOrdinal(x.Item2, y.Item2);
            return c != 0 ? c : string.CompareOrdinal(x.Item3, y.Item3);
        }));
        void Count(int w, int sign, HashSet<(int, int)> touched)
        {
            var s = seqs[w];
            for (int i = 0; i + 1 < s.Count; i++)
            {
                var p = (s[i], s[i + 1]);
                pairCount[p] = pairCount.GetValueOrDefault(p) + sign * words[w].Count;
                if (sign > 0)
                {
                    if (!where.TryGetValue(p, out var set)) where[p] = set = new HashSet<int>();
                    set.Add(w);
                }
                touched.Add(p);
            }
        }
        var all = new HashSet<(int, int)>();
        for (int w = 0; w < seqs.Count; w++) Count(w, +1, all);
        foreach (var p in all) heap.Enqueue(p, (pairCount[p], symbols[p.Item1], symbols[p.Item2]));
        var merges = new List<(int, int)>();
        while (symbols.Count < target && heap.TryDequeue(out var best, out var priority))
        {
            var current = pairCount.GetValueOrDefault(best);
            if (current != priority.Item1) continue; // stale entry
            if (current <= 0) break;
            var text = symbols[best.Item1] + symbols[best.Item2];
            if (!index.TryGetValue(text, out var merged))
            {
                index[text] = merged = symbols.Count;
                symbols.Add(text);
            }
            merges.Add(best);
            var touched = new HashSet<(int, int)>();
            foreach (var w in where[best].ToList())
            {
                var s = seqs[w];
                if (!Contains(s, best)) continue;
                Count(w, -1, touched);
                for (int i = 0; i + 1 < s.Count; i++)
                    if (s[i] == best.Item1 && s[i + 1] == best.Item2)
                    {
                        s[i] = merged;
                        s.RemoveAt(i + 1);
                    }
                Count(w, +1, touched);
            }
            foreach (var p in touched)
                if (pairCount.GetValueOrDefault(p) > 0) heap.Enqueue(p, (pairCount[p], symbols[p.Item1], symbols[p.Item2]));
        }
        return merges;
    }

    static bool Contains(List<int> s, (int, int) p)
    {
        for (int i = 0; i + 1 < s.Count; i++)
            if (s[i] == p.Item1 && s[i + 1] == p.Item2) return true;
        return false;
    }
}
