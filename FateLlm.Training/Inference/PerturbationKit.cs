using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FateLlm.Training.Algorithms.Mkt;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

namespace FateLlm.Training.Inference;

/// <summary>Which tokens of the remote vocabulary a perturbed prompt may contain.</summary>
public enum KitCoverage
{
    /// <summary>Every token but the special ones (BOS, EOS, PAD) and those that decode to nothing.</summary>
    All,
    /// <summary>FATE-LLM's choice: word-start tokens of 2–15 letters; the rest of a prompt is out of the kit.</summary>
    Words,
}

/// <summary>
/// What a party needs to perturb prompts for a remote model (InferDPT): the remote model's input embeddings (every row,
/// so an out-of-kit token can still be perturbed from its own embedding), which tokens are covered (the outputs the
/// mechanism may choose), the per-dimension sensitivity Δf_d = max − min over the covered rows, and the remote
/// tokenizer's files, so the party tokenizes exactly as the remote model does. Built once by the model's owner and
/// shipped as one blob (<c>IDK1</c>), content-addressed; <see cref="Parse"/> checks every count and name before
/// allocating. The similarity order is not shipped (N² values): a party computes the one row it needs per token.
/// </summary>
public sealed class PerturbationKit
{
    const string Magic = "IDK1";
    const int MaxVocabulary = 1 << 22, MaxDim = 1 << 16, MaxFiles = 16;
    static readonly string[] AllowedFiles = [.. TokenizerLoader.Files, "config.json"];

    public int Vocabulary { get; }
    public int Dim { get; }
    /// <summary>Row-major [Vocabulary, Dim], fp32.</summary>
    public float[] Embeddings { get; }
    public bool[] Covered { get; }
    public float[] Sensitivity { get; }
    public KitCoverage Coverage { get; }
    /// <summary>The remote model's weights digest: a kit is for exactly one model.</summary>
    public string ModelDigest { get; }
    public IReadOnlyDictionary<string, byte[]> TokenizerFiles { get; }

    public PerturbationKit(int vocabulary, int dim, float[] embeddings, bool[] covered, float[] sensitivity, KitCoverage coverage, string modelDigest,
        IReadOnlyDictionary<string, byte[]> tokenizerFiles)
    {
        if (embeddings.Length != (long)vocabulary * dim || covered.Length != vocabulary || sensitivity.Length != dim)
            throw new ArgumentException($"kit arrays do not match {vocabulary} tokens × {dim} dimensions");
        if (!covered.Any(c => c)) throw new ArgumentException("the kit covers no token");
        (Vocabulary, Dim, Embeddings, Covered, Sensitivity, Coverage, ModelDigest, TokenizerFiles) =
            (vocabulary, dim, embeddings, covered, sensitivity, coverage, modelDigest, tokenizerFiles);
    }

    /// <summary>Builds the kit of a model folder: its input embeddings and tokenizer.</summary>
    public static PerturbationKit Build(string modelDir, KitCoverage coverage)
    {
        using var model = HfCheckpoint.Load(modelDir);
        var tok = TokenizerLoader.Load(modelDir, model.Config);
        float[] rows;
        int v, d;
        using (var _ = NewDisposeScope())
        {
            var e = model.InputEmbeddings.detach().to_type(ScalarType.Float32).cpu();
            (v, d) = ((int)e.shape[0], (int)e.shape[1]);
            rows = e.data<float>().ToArray();
        }
        var vocab = TokenVocabulary.Of(tok);
        var covered = new bool[v];
        for (int i = 0; i < v && i < vocab.Surfaces.Count; i++) covered[i] = Covers(coverage, vocab.Surfaces[i]);
        var files = AllowedFiles.Where(f => File.Exists(Path.Combine(modelDir, f))).ToDictionary(f => f, f => File.ReadAllBytes(Path.Combine(modelDir, f)));
        return new PerturbationKit(v, d, rows, covered, SensitivityOf(rows, covered, d), coverage, HfCheckpoint.WeightsDigest(modelDir), files);
    }

    static bool Covers(KitCoverage coverage, string surface) => coverage switch
    {
        KitCoverage.All => surface.Length > 0,
        _ => surface.Length is >= 3 and <= 16 && surface[0] == ' ' && surface.Skip(1).All(char.IsAsciiLetter),
    };

    /// <summary>Δf_d = max − min of dimension d over the covered rows.</summary>
    public static float[] SensitivityOf(float[] rows, bool[] covered, int dim)
    {
        var (min, max) = (Enumerable.Repeat(float.PositiveInfinity, dim).ToArray(), Enumerable.Repeat(float.NegativeInfinity, dim).ToArray());
        for (int i = 0; i < covered.Length; i++)
        {
            if (!covered[i]) continue;
            for (int k = 0; k < dim; k++)
            {
                var x = rows[i * dim + k];
                if (x < min[k]) min[k] = x;
                if (x > max[k]) max[k] = x;
            }
        }
        return min.Zip(max, (a, b) => b - a).ToArray();
    }

    /// <summary>The remote tokenizer, from the kit's files written once under <paramref name="cacheRoot"/>/&lt;digest&gt;.</summary>
    public ITextTokenizer OpenTokenizer(string cacheRoot)
    {
        var dir = Path.Combine(cacheRoot, ContentDigest.Stem(Digest)[..16]);
        Directory.CreateDirectory(dir);
        foreach (var (name, bytes) in TokenizerFiles) File.WriteAllBytes(Path.Combine(dir, name), bytes);
        var config = TokenizerFiles.ContainsKey("config.json") ? ModelConfig.Load(Path.Combine(dir, "config.json")) : null;
        return TokenizerLoader.Load(dir, config);
    }

    sealed record Header(string ModelDigest, string Coverage, string[] Files);

    byte[]? _bytes;
    public byte[] ToBytes()
    {
        if (_bytes is not null) return _bytes;
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms, Encoding.UTF8);
        w.Write(Encoding.ASCII.GetBytes(Magic));
        w.Write(Vocabulary);
        w.Write(Dim);
        var names = TokenizerFiles.Keys.Order(StringComparer.Ordinal).ToArray();
        var header = JsonSerializer.SerializeToUtf8Bytes(new Header(ModelDigest, Coverage.ToString().ToLowerInvariant(), names));
        w.Write(header.Length);
        w.Write(header);
        foreach (var x in Embeddings) w.Write(x);
        foreach (var c in Covered) w.Write((byte)(c ? 1 : 0));
        foreach (var x in Sensitivity) w.Write(x);
        foreach (var n in names)
        {
            w.Write(TokenizerFiles[n].Length);
            w.Write(TokenizerFiles[n]);
        }
        w.Flush();
        return _bytes = ms.ToArray();
    }

    /// <summary>The blob's content digest: what a party checks the kit it received against.</summary>
    public string Digest => ContentDigest.Of(ToBytes());

    /// <summary>Parses a kit, checking magic, counts, sizes, file names and finite values; throws <see cref="FormatException"/> naming the fault.</summary>
    public static PerturbationKit Parse(byte[] bytes)
    {
        int at = 0;
        void Need(long n, string what)
        {
            if (n < 0 || at + n > bytes.Length) throw new FormatException($"perturbation kit: truncated at {what} (offset {at}, {bytes.Length} bytes)");
        }
        int Int(string what) { Need(4, what); var v = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at)); at += 4; return v; }
        float[] Floats(long n, string what)
        {
            Need(n * 4, what);
            var r = new float[n];
            for (long i = 0; i < n; i++) r[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(at + (int)(i * 4)));
            at += (int)(n * 4);
            if (r.Any(x => !float.IsFinite(x))) throw new FormatException($"perturbation kit: {what} holds a non-finite value");
            return r;
        }
        Need(4, "magic");
        if (Encoding.ASCII.GetString(bytes, 0, 4) != Magic) throw new FormatException("perturbation kit: not an IDK1 kit");
        at = 4;
        var (v, d) = (Int("vocabulary"), Int("dimension"));
        if (v is < 1 or > MaxVocabulary || d is < 1 or > MaxDim) throw new FormatException($"perturbation kit: {v} tokens × {d} dimensions is out of range");
        var hl = Int("header length");
        Need(hl, "header");
        Header header;
        try { header = JsonSerializer.Deserialize<Header>(bytes.AsSpan(at, hl)) ?? throw new FormatException("perturbation kit: empty header"); }
        catch (JsonException e) { throw new FormatException($"perturbation kit: header is not valid JSON ({e.Message})"); }
        at += hl;
        if (!Enum.TryParse<KitCoverage>(header.Coverage, ignoreCase: true, out var coverage)) throw new FormatException($"perturbation kit: unknown coverage '{header.Coverage}'");
        if (header.Files is null || header.Files.Length > MaxFiles || header.Files.Any(f => !AllowedFiles.Contains(f)) || header.Files.Distinct().Count() != header.Files.Length)
            throw new FormatException($"perturbation kit: tokenizer files must be distinct names among {string.Join(", ", AllowedFiles)}");
        var rows = Floats((long)v * d, "embeddings");
        Need(v, "coverage");
        var covered = bytes.AsSpan(at, v).ToArray().Select(b => b switch { 0 => false, 1 => true, _ => throw new FormatException($"perturbation kit: coverage byte {b}") }).ToArray();
        at += v;
        var sensitivity = Floats(d, "sensitivity");
        var files = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var name in header.Files)
        {
            var n = Int($"size of {name}");
            Need(n, name);
            files[name] = bytes.AsSpan(at, n).ToArray();
            at += n;
        }
        if (at != bytes.Length) throw new FormatException($"perturbation kit: {bytes.Length - at} trailing bytes");
        try { return new PerturbationKit(v, d, rows, covered, sensitivity, coverage, header.ModelDigest ?? "", files); }
        catch (ArgumentException e) { throw new FormatException($"perturbation kit: {e.Message}"); }
    }
}
