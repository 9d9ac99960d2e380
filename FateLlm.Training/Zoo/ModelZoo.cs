using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Zoo;

/// <param name="Kind">byte | gpt2-bpe | sentencepiece-bpe</param>
public sealed record ZooTokenizer(string Kind, int Vocab)
{
    public string Folder => Kind == "byte" ? "byte" : $"{Kind}-{Vocab}";
}

/// <summary>How one zoo model is made: architecture, shape, tokenizer, and a fixed pretraining run (steps and seed, not time).</summary>
public sealed record ZooRecipe(string Name, string Description, string Arch, ModelShape Shape, ZooTokenizer Tokenizer, int Steps, int BatchSize,
    double LearningRate, double WarmupRatio, long Seed)
{
    /// <summary>Everything that changes the weights; a cached model with another fingerprint is rebuilt.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string Fingerprint => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(this with { Description = "" }))))[..16];
}

/// <summary>What <c>zoo.json</c> records beside a zoo model: how it was made and how well it models held-out public text.</summary>
public sealed record ZooCard(string Name, string Description, string Arch, long Parameters, int Layers, int Hidden, string Tokenizer, int Vocab,
    string CorpusDigest, int TrainExamples, int DevExamples, int Steps, int BatchSize, double LearningRate, long Seed, int Threads, double WallSeconds,
    long Tokens, double DevLoss, double DevPerplexityPerToken, double DevPerplexityPerByte, string Fingerprint, DateTime BuiltUtc);

/// <summary>
/// The model zoo: base models pretrained here, reproducibly, on the public WordNet corpus only (the domains no party
/// holds), each a normal HF folder with its tokenizer and a <c>zoo.json</c> card. Built on first use, then reused.
/// </summary>
/// <param name="devExamples">Public examples held out for dev perplexity (the first ones of the corpus).</param>
public sealed class ModelZoo(string root, string wordNetDictionary, Action<string> log, int devExamples)
{
    public const string CardFile = "zoo.json";
    public static readonly DataOptions Data = new() { MaxPromptTokens = 64, MaxResponseTokens = 96, MaxTotalTokens = 192 };
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public string Root => root;
    public string Folder(string name) => Path.Combine(root, name);

    (string Path, string Digest)? _corpus;

    /// <summary>
    /// The public corpus and its SHA-256, made from WordNet on first use in this process and rewritten when it differs
    /// from the cached file (a new corpus format or dictionary): models and tokenizers of another corpus are then rebuilt.
    /// </summary>
    public (string Path, string Digest) PublicCorpus()
    {
        if (_corpus is { } known) return known;
        var path = Path.Combine(root, "corpus", "public.jsonl");
        var tmp = Path.Combine(root, "corpus.tmp");
        var split = WordNetCorpus.Write(WordNetCorpus.Read(wordNetDictionary), tmp, new WordNetSplitOptions { PublicLimit = 0, TrainPerParty = 0, DevPerParty = 0, TestPerParty = 0 });
        var digest = Digest(split.Public);
        if (!File.Exists(path) || Digest(path) != digest)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.Move(split.Public, path, overwrite: true);
            log($"zoo: public corpus of {split.Counts["public"]:N0} WordNet glosses (domains no party holds) at {path}");
        }
        Directory.Delete(tmp, recursive: true);
        _corpus = (path, digest);
        return (path, digest);
    }

    static string Digest(string file)
    {
        using var s = File.OpenRead(file);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }

    /// <summary>The card of a built zoo model folder, or null when it has none (or an unreadable one).</summary>
    public static ZooCard? ReadCard(string folder)
    {
        var card = Path.Combine(folder, CardFile);
        if (!File.Exists(card) || !File.Exists(Path.Combine(folder, HfCheckpoint.SingleFile))) return null;
        try { return JsonSerializer.Deserialize<ZooCard>(File.ReadAllText(card)); }
        catch (JsonException) { return null; }
    }

    /// <summary>The cached card of a recipe, when its folder holds a model built from this recipe and this corpus.</summary>
    public ZooCard? Cached(ZooRecipe r, string corpusDigest) =>
        ReadCard(Folder(r.Name)) is { } c && c.Fingerprint == r.Fingerprint && c.CorpusDigest == corpusDigest && c.DevExamples == devExamples ? c : null;

    /// <summary>The model of a recipe: from the cache, or pretrained now (then cached).</summary>
    public ZooCard Ensure(ZooRecipe r, IProgress<TrainProgress>? progress = null)
    {
        var (corpus, digest) = PublicCorpus();
        if (Cached(r, digest) is { } cached)
        {
            log($"zoo: {r.Name} cached at {Folder(r.Name)} ({cached.Parameters:N0} parameters, dev perplexity {cached.DevPerplexityPerByte:F3} per byte)");
            return cached;
        }
        var tokenizerDir = r.Tokenizer.Kind == "byte" ? null : EnsureTokenizer(r.Tokenizer, corpus, digest);
        var vocab = tokenizerDir is null ? ByteTokenizer.VocabularySize : TokenizerLoader.Load(tokenizerDir, null).VocabSize;
        var tok = tokenizerDir is null ? (ITextTokenizer)new ByteTokenizer() : TokenizerLoader.Load(tokenizerDir, null);
        var config = ModelPresets.Create(r.Arch, r.Shape, vocab, (tok.BosId, tok.EosId, tok.PadId), tieEmbeddings: true, $"zoo recipe {r.Name}");
        log($"zoo: pretraining {r.Name} ({config.ParameterCount():N0} parameters, {r.Shape.Layers} blocks, {r.Tokenizer.Folder} tokenizer) for {r.Steps} steps on the public corpus...");
        // Built beside the cache and moved in whole: an interrupted build never leaves a half model that looks cached.
        var building = Folder(r.Name) + ".building";
        if (Directory.Exists(building)) Directory.Delete(building, recursive: true);
        var sw = Stopwatch.StartNew();
        var result = Pretraining.Run(config, tokenizerDir, corpus, building, new TrainOptions
        {
            Epochs = 1000, MaxSteps = r.Steps, BatchSize = r.BatchSize, LearningRate = r.LearningRate, WarmupRatio = r.WarmupRatio,
            Schedule = LrSchedule.Cosine, Seed = r.Seed, WeightDecay = 0.01,
        }, Data, devExamples, progress);
        var card = new ZooCard(r.Name, r.Description, r.Arch, result.Parameters, r.Shape.Layers, r.Shape.Hidden, r.Tokenizer.Kind, vocab, digest,
            result.TrainExamples, result.DevExamples, result.Steps, r.BatchSize, r.LearningRate, r.Seed, TorchSharp.torch.get_num_threads(),
            Math.Round(sw.Elapsed.TotalSeconds, 1), result.Tokens, result.DevLoss, result.DevPerplexity, result.DevPerplexityPerByte, r.Fingerprint, DateTime.UtcNow);
        File.WriteAllText(Path.Combine(building, CardFile), JsonSerializer.Serialize(card, Indented));
        if (Directory.Exists(Folder(r.Name))) Directory.Delete(Folder(r.Name), recursive: true);
        Directory.Move(building, Folder(r.Name));
        log($"zoo: {r.Name} built in {sw.Elapsed.TotalMinutes:F1} min: dev perplexity {card.DevPerplexityPerToken:F2} per token, {card.DevPerplexityPerByte:F3} per byte");
        return card;
    }

    /// <summary>The tokenizer of a recipe, trained on the public corpus's prompts and glosses once and shared by every model that names it.</summary>
    string EnsureTokenizer(ZooTokenizer t, string corpus, string corpusDigest)
    {
        var dir = Path.Combine(root, "tokenizers", t.Folder);
        // The digest sits beside the tokenizer folder, not in it: a model copies the folder's files.
        var stamp = dir + ".corpus-sha256";
        if (File.Exists(Path.Combine(dir, TokenizerLoader.ConfigFile)) && File.Exists(stamp) && File.ReadAllText(stamp) == corpusDigest) return dir;
        log($"zoo: training the {t.Kind} tokenizer of {t.Vocab:N0} tokens on the public corpus");
        var building = dir + ".building";
        TokenizerTraining.Train(TokenizerTraining.ParseKind(t.Kind), TokenizerTraining.ReadCorpus(corpus, ["content", "summary"]), t.Vocab, building);
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.Move(building, dir);
        File.WriteAllText(stamp, corpusDigest);
        return dir;
    }
}
