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
    /// What loading needs besides the native tokenizer, worked out once per version of the files: the vocabulary size,
    /// the special ids and flags, and the path of the copy without a post-processor the native library reads.
    /// </summary>
    sealed record Prepared(int Version, string Key, int Vocab, int? Bos, int? Eos, int? Pad, bool AddBos, bool AddEos, string Copy);

    const int PreparedVersion = 1;
    public const string PreparedFile = ".fate-llm-tokenizer.json", PreparedCopy = ".fate-llm-tokenizer.prepared.json";
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, Prepared> Remembered = new();

    /// <summary>
    /// Loads <c>folder/tokenizer.json</c>; special tokens come from <paramref name="tokenizerConfig"/>
    /// (<c>bos_token</c>, <c>eos_token</c>, <c>pad_token</c>, as strings or <c>{content}</c>), then config.json ids.
    /// Parsing a 262k-entry file takes seconds and most of a GB, so what it yields is kept beside the model (or in
    /// the temp folder when the model's cannot be written), keyed by the file's stamp and the settings it depends on.
    /// </summary>
    public static HfTokenizerJson Load(string folder, JsonObject? tokenizerConfig, ModelConfig? config)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) throw new ModelFormatException($"{path}: not found");
        var key = Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(string.Join("|",
            IO.FileStamp.Of(path), tokenizerConfig?.ToJsonString() ?? "", config?.BosTokenId, config?.EosTokenId, config?.PadTokenId))));
        var full = Path.GetFullPath(path);
        var p = Remembered.TryGetValue(full, out var known) && known.Key == key && File.Exists(known.Copy) ? known
            : ReadPrepared(folder, key) ?? Prepare(folder, path, tokenizerConfig, config, key);
        Remembered[full] = p;
        Tokenizers.DotNet.Tokenizer inner;
        try { inner = new Tokenizers.DotNet.Tokenizer(vocabPath: p.Copy); }
        catch (Exception e) when (e is not OutOfMemoryException)
        { throw new ModelFormatException($"{path}: HF tokenizers could not load it ({e.Message.Split('\n')[0]})"); }
        return new HfTokenizerJson(inner, p.Vocab, p.Bos, p.Eos, p.Pad, p.AddBos, p.AddEos);
    }

    /// <summary>How many times this process parsed and prepared the tokenizer.json of <paramref name="folder"/> (specs count it).</summary>
    public static int TimesPrepared(string folder) => Preparations.GetValueOrDefault(Path.GetFullPath(Path.Combine(folder, FileName)));
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> Preparations = new();

    /// <summary>Forgets what this process remembered, as a fresh process would (specs).</summary>
    public static void ForgetInMemory() => Remembered.Clear();

    static string MetadataPath(string folder, string key, bool beside) =>
        beside ? Path.Combine(folder, PreparedFile) : Path.Combine(Path.GetTempPath(), "fate-llm-tokenizers", $"{key[..24]}.meta.json");

    static Prepared? ReadPrepared(string folder, string key)
    {
        foreach (var beside in new[] { true, false })
        {
            try
            {
                var p = JsonSerializer.Deserialize<Prepared>(File.ReadAllText(MetadataPath(folder, key, beside)));
                if (p is { Version: PreparedVersion } && p.Key == key && File.Exists(p.Copy)) return p;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException) { /* not prepared there */ }
        }
        return null;
    }

    static Prepared Prepare(string folder, string path, JsonObject? tokenizerConfig, ModelConfig? config, string key)
    {
        Preparations.AddOrUpdate(Path.GetFullPath(path), 1, (_, n) => n + 1);
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

        // The native library reads a path: give it the file without its post-processor, beside the model if it can be written.
        doc["post_processor"] = null;
        var text = doc.ToJsonString();
        foreach (var beside in new[] { true, false })
        {
            var copy = beside ? Path.Combine(folder, PreparedCopy) : Path.Combine(Path.GetTempPath(), "fate-llm-tokenizers", $"{key[..24]}.json");
            Directory.CreateDirectory(Path.GetDirectoryName(copy)!);
            var prepared = new Prepared(PreparedVersion, key, vocab, bos, eos, pad, addBos, addEos, Path.GetFullPath(copy));
            if (IO.AtomicFile.TryWriteAllText(copy, text) && IO.AtomicFile.TryWriteAllText(MetadataPath(folder, key, beside), JsonSerializer.Serialize(prepared)))
                return prepared;
        }
        throw new IOException($"{path}: neither the model folder nor {Path.GetTempPath()} can be written for the tokenizer's prepared copy");
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
