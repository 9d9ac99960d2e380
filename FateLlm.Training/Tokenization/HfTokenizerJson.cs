using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Models;

namespace FateLlm.Training.Tokenization;

/// <summary>
/// A HF fast tokenizer (<c>tokenizer.json</c>) run by HF's own Rust <c>tokenizers</c> library through Tokenizers.DotNet,
/// so every normalizer, pre-tokenizer (Llama 3's and Qwen2's split regexes), BPE with byte fallback and added or
/// special token behaves exactly as in transformers. The library always applies the post-processor, so it is given a
/// copy of the file without one; what the post-processor's single-sequence template adds (BOS, EOS) is read from the
/// file and reported as <see cref="AddBos"/> / <see cref="AddEos"/>, as every <see cref="ITextTokenizer"/> does.
/// </summary>
public sealed class HfTokenizerJson : ITextTokenizer, IDisposable
{
    public const string FileName = "tokenizer.json";
    readonly Tokenizers.DotNet.Tokenizer _inner;
    readonly object _gate = new();

    HfTokenizerJson(Tokenizers.DotNet.Tokenizer inner, int vocab, int? bos, int? eos, int? pad, bool addBos, bool addEos)
        => (_inner, VocabSize, BosId, EosId, PadId, AddBos, AddEos) = (inner, vocab, bos, eos, pad, addBos, addEos);

    public string Kind => "hf-tokenizer-json";
    public int VocabSize { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PadId { get; }
    public bool AddBos { get; }
    public bool AddEos { get; }

    // The native handle is not documented as thread-safe; data loading may tokenize from several threads.
    public IReadOnlyList<int> Encode(string text)
    {
        lock (_gate) return _inner.Encode(text).Select(i => (int)i).ToArray();
    }

    public string Decode(IEnumerable<int> ids)
    {
        var u = ids.Where(i => i >= 0).Select(i => (uint)i).ToArray();
        lock (_gate) return _inner.Decode(u);
    }

    public void Dispose() => (_inner as IDisposable)?.Dispose();

    /// <summary>
    /// Loads <c>folder/tokenizer.json</c>; special tokens come from <paramref name="tokenizerConfig"/>
    /// (<c>bos_token</c>, <c>eos_token</c>, <c>pad_token</c>, as strings or <c>{content}</c>), then config.json ids.
    /// </summary>
    public static HfTokenizerJson Load(string folder, JsonObject? tokenizerConfig, ModelConfig? config)
    {
        var path = Path.Combine(folder, FileName);
        JsonObject doc;
        try { doc = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new ModelFormatException($"{path}: not valid JSON ({e.Message})"); }
        if (doc["model"] is not JsonObject model) throw new ModelFormatException($"{path}: field 'model' is missing");
        var modelType = model["type"]?.GetValue<string>() ?? "BPE";
        if (modelType is not ("BPE" or "WordPiece" or "Unigram" or "WordLevel"))
            throw new ModelFormatException($"{path}: field 'model.type' = '{modelType}' is not a tokenizer model HF defines");

        // Every token string the file gives an id to: the model's vocabulary and the added tokens.
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        switch (model["vocab"])
        {
            case JsonObject v:
                foreach (var (piece, id) in v) ids[piece] = id!.GetValue<int>();
                break;
            case JsonArray a: // Unigram: [[piece, score], ...] in id order
                for (int i = 0; i < a.Count; i++) ids[a[i]![0]!.GetValue<string>()] = i;
                break;
            default:
                throw new ModelFormatException($"{path}: field 'model.vocab' is missing");
        }
        if (doc["added_tokens"] is JsonArray added)
            foreach (var t in added.OfType<JsonObject>())
                ids[t["content"]!.GetValue<string>()] = t["id"]!.GetValue<int>();
        var vocab = ids.Values.DefaultIfEmpty(-1).Max() + 1;

        int? Special(string field, int? fallback)
        {
            var text = TokenizerLoader.SpecialText(tokenizerConfig, field);
            if (text is null) return fallback;
            return ids.TryGetValue(text, out var id) ? id
                : throw new ModelFormatException($"{Path.Combine(folder, TokenizerLoader.ConfigFile)}: field '{field}' = '{text}' is not a token of {path}");
        }
        var (prefix, suffix) = Template(doc["post_processor"], path);
        var bos = Special("bos_token", config?.BosTokenId);
        var eos = Special("eos_token", config?.EosTokenId);
        var pad = Special("pad_token", config?.PadTokenId);
        int? Single(List<int> tokens, string side, int? expected)
        {
            if (tokens.Count == 0) return null;
            if (tokens.Count > 1 || (expected is int e && tokens[0] != e))
                throw new ModelFormatException($"{path}: field 'post_processor' adds [{string.Join(", ", tokens)}] at the {side} of a text; only the {(side == "start" ? "BOS" : "EOS")} token ({expected?.ToString() ?? "unset"}) is supported there");
            return tokens[0];
        }
        var templBos = Single(prefix, "start", bos);
        var templEos = Single(suffix, "end", eos);
        // LlamaTokenizerFast and GemmaTokenizerFast rebuild the template from these flags, so an explicit flag wins.
        bool Flag(string name, bool fromTemplate) =>
            tokenizerConfig?[name] is JsonValue v && v.TryGetValue<bool>(out var b) ? b : fromTemplate;
        var addBos = Flag("add_bos_token", templBos.HasValue);
        var addEos = Flag("add_eos_token", templEos.HasValue);
        bos ??= templBos;
        eos ??= templEos;
        if (addBos && bos is null) throw new ModelFormatException($"{path}: a BOS token is to be added but none is named (bos_token in {TokenizerLoader.ConfigFile})");
        if (addEos && eos is null) throw new ModelFormatException($"{path}: an EOS token is to be added but none is named (eos_token in {TokenizerLoader.ConfigFile})");

        // The native library reads a path: give it the file without its post-processor (cached by content digest).
        doc["post_processor"] = null;
        var text = doc.ToJsonString();
        var digest = Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..16];
        var copy = Path.Combine(Path.GetTempPath(), "fate-llm-tokenizers", $"{digest}.json");
        if (!File.Exists(copy))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(copy)!);
            var tmp = copy + "." + Environment.ProcessId + ".tmp";
            File.WriteAllText(tmp, text);
            File.Move(tmp, copy, overwrite: true);
        }
        Tokenizers.DotNet.Tokenizer inner;
        try { inner = new Tokenizers.DotNet.Tokenizer(vocabPath: copy); }
        catch (Exception e) when (e is not OutOfMemoryException)
        { throw new ModelFormatException($"{path}: HF tokenizers could not load it ({e.Message.Split('\n')[0]})"); }
        return new HfTokenizerJson(inner, vocab, bos, eos, pad, addBos, addEos);
    }

    /// <summary>The special-token ids the post-processor puts before and after a single text.</summary>
    static (List<int> Prefix, List<int> Suffix) Template(JsonNode? processor, string path)
    {
        var prefix = new List<int>();
        var suffix = new List<int>();
        switch (processor?["type"]?.GetValue<string>())
        {
            case null or "ByteLevel":
                break;
            case "Sequence":
                foreach (var p in processor["processors"]?.AsArray() ?? [])
                {
                    var (a, b) = Template(p, path);
                    prefix.AddRange(a);
                    suffix.AddRange(b);
                }
                break;
            case "TemplateProcessing":
            {
                var specials = processor["special_tokens"]?.AsObject();
                var single = processor["single"]?.AsArray() ?? throw new ModelFormatException($"{path}: field 'post_processor.single' is missing");
                var seen = false;
                foreach (var piece in single)
                {
                    if (piece?["Sequence"] is not null) { seen = true; continue; }
                    var name = piece?["SpecialToken"]?["id"]?.GetValue<string>()
                        ?? throw new ModelFormatException($"{path}: field 'post_processor.single' holds an entry that is neither Sequence nor SpecialToken");
                    var tokenIds = specials?[name]?["ids"]?.AsArray().Select(x => x!.GetValue<int>())
                        ?? throw new ModelFormatException($"{path}: field 'post_processor.special_tokens' has no ids for '{name}'");
                    (seen ? suffix : prefix).AddRange(tokenIds);
                }
                break;
            }
            case var other:
                throw new ModelFormatException($"{path}: field 'post_processor.type' = '{other}' is not supported for a causal LM (supported: TemplateProcessing, ByteLevel, Sequence)");
        }
        return (prefix, suffix);
    }
}
