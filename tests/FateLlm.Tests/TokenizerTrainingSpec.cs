using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Host.Cli;
using FateLlm.Training.Data;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// Tokenizers trained by <c>fate-llm tokenizer train</c> on the public WordNet corpus: every line round-trips, the files
/// have HF's and SentencePiece's structure, and the reference implementations (Google's sentencepiece, GPT-2's own
/// encoder algorithm) read them and give the same ids as FateLlm.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class TokenizerTrainingSpec : IClassFixture<TokenizerTrainingSpec.PublicCorpus>
{
    /// <summary>The public corpus the zoo pretrains on (all of it), and both tokenizers trained on it once for the class.</summary>
    public sealed class PublicCorpus
    {
        public string Jsonl { get; }
        public List<string> Texts { get; }
        public string Gpt2 { get; }
        public string SentencePiece { get; }

        public PublicCorpus()
        {
            var dir = TestSupport.TempDir();
            Jsonl = WordNetCorpus.Write(WordNetCorpus.Read(), Path.Combine(dir, "data"), new WordNetSplitOptions { PublicLimit = 0 }).Public;
            Texts = TokenizerTraining.ReadCorpus(Jsonl);
            Gpt2 = Train(dir, "gpt2-bpe", 1500);
            SentencePiece = Train(dir, "sentencepiece-bpe", 2000);
        }

        string Train(string dir, string kind, int vocab)
        {
            var outDir = Path.Combine(dir, kind);
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            var code = CliApp.Run(["tokenizer", "train", "--data", Jsonl, "--vocab", vocab.ToString(), "--kind", kind, "--out", outDir], stdout, stderr);
            Assert.True(code == 0, stderr.ToString());
            Assert.Contains($"tokenizer of {vocab:N0} tokens", stdout.ToString());
            return outDir;
        }
    }

    readonly PublicCorpus _c;

    public TokenizerTrainingSpec(PublicCorpus corpus) => _c = corpus;

    static readonly string[] Hard = ["naïve café — 東京 😀", "  two  spaces and a tab\there", "it's 42 o'clock, isn't it?", "", " ", "word#x*pos#noun*domain#animal\n"];

    [Theory]
    [InlineData("gpt2-bpe")]
    [InlineData("sentencepiece-bpe")]
    public void Every_line_of_the_public_corpus_decodes_to_itself(string kind)
    {
        var tok = TokenizerLoader.Load(kind == "gpt2-bpe" ? _c.Gpt2 : _c.SentencePiece, null);
        // The byte-level folder carries tokenizer.json too, which is then the tokenizer of record (HF's own library).
        Assert.Equal(kind == "gpt2-bpe" ? "hf-tokenizer-json" : "sentencepiece", tok.Kind);
        long tokens = 0, chars = 0;
        foreach (var text in _c.Texts.Concat(Hard))
        {
            var ids = tok.Encode(text);
            Assert.All(ids, id => Assert.InRange(id, 0, tok.VocabSize - 1));
            Assert.Equal(text, tok.Decode(ids));
            tokens += ids.Count;
            chars += text.Length;
        }
        Assert.True(_c.Texts.Count > 100_000, $"the whole public corpus: {_c.Texts.Count} texts");
        // A trained BPE compresses: well under one token per two characters of WordNet text.
        Assert.True(tokens < chars / 2.5, $"{tokens} tokens for {chars} characters");
    }

    [Fact]
    public void The_gpt2_files_follow_hf_conventions()
    {
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(_c.Gpt2, "vocab.json")))!.AsObject();
        var ids = vocab.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        Assert.Equal(1500, ids.Count);
        Assert.Equal(Enumerable.Range(0, 1500), ids.Values.Order());
        // The 256 byte symbols first, in byte order (Ġ is the space), then <|endoftext|>, then one piece per merge by rank.
        Assert.Equal(ByteLevel.AllSymbols, ids.OrderBy(kv => kv.Value).Take(256).Select(kv => kv.Key));
        Assert.Equal(32, ids["Ġ"]);
        Assert.Equal(256, ids["<|endoftext|>"]);
        var merges = File.ReadAllLines(Path.Combine(_c.Gpt2, "merges.txt"));
        Assert.Equal("#version: 0.2", merges[0]);
        Assert.True(merges.Length - 1 >= 1500 - 257, "a merge per learned piece (two merges may make the same piece)");
        Assert.Equal(merges.Length - 1, merges.Skip(1).Distinct().Count());
        foreach (var merge in merges.Skip(1))
        {
            var parts = merge.Split(' ');
            Assert.Equal(2, parts.Length);
            // Both halves exist before the merge that joins them, and the merged piece is in the vocabulary.
            Assert.True(ids[parts[0]] < ids[parts[0] + parts[1]] && ids[parts[1]] < ids[parts[0] + parts[1]], merge);
        }
        Assert.Contains(ids.Keys, k => k.StartsWith('Ġ') && k.Length > 3); // whole words with GPT-2's space marker

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(_c.Gpt2, "tokenizer_config.json")))!;
        Assert.Equal("GPT2Tokenizer", config["tokenizer_class"]!.GetValue<string>());
        Assert.Equal("<|endoftext|>", config["eos_token"]!.GetValue<string>());
        Assert.False(config["add_prefix_space"]!.GetValue<bool>());
        var fast = JsonNode.Parse(File.ReadAllText(Path.Combine(_c.Gpt2, "tokenizer.json")))!;
        Assert.Equal("BPE", fast["model"]!["type"]!.GetValue<string>());
        Assert.Equal("ByteLevel", fast["pre_tokenizer"]!["type"]!.GetValue<string>());
        Assert.Equal("ByteLevel", fast["decoder"]!["type"]!.GetValue<string>());
        Assert.Equal(merges.Skip(1), fast["model"]!["merges"]!.AsArray().Select(m => m!.GetValue<string>()));
        Assert.Equal(ids, fast["model"]!["vocab"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()));
        Assert.Equal(256, fast["added_tokens"]![0]!["id"]!.GetValue<int>());
    }

    [Fact]
    public void The_sentencepiece_model_follows_llama_conventions()
    {
        var proto = SentencePieceModel.Read(File.ReadAllBytes(Path.Combine(_c.SentencePiece, "tokenizer.model")));
        Assert.Equal(2000, proto.Pieces.Count);
        Assert.Equal([("<unk>", 2), ("<s>", 3), ("</s>", 3)], proto.Pieces.Take(3).Select(p => (p.Piece, p.Type)));
        Assert.Equal(Enumerable.Range(0, 256).Select(b => ($"<0x{b:X2}>", 6)), proto.Pieces.Skip(3).Take(256).Select(p => (p.Piece, p.Type)));
        var normal = proto.Pieces.Skip(259).ToList();
        Assert.All(normal, p => Assert.Equal(1, p.Type));
        Assert.Equal(normal.Count, normal.Select(p => p.Piece).Distinct().Count());
        Assert.True(normal.Zip(normal.Skip(1)).All(x => x.Item1.Score > x.Item2.Score), "scores strictly decrease: earlier merges win");
        Assert.Contains(normal, p => p.Piece.StartsWith('▁') && p.Piece.Length > 3);
        Assert.Equal(2L, proto.Trainer[3]); // model_type BPE
        Assert.Equal(2000L, proto.Trainer[4]);
        Assert.Equal(1L, proto.Trainer[35]); // byte_fallback
        Assert.Equal((0L, 1L, 2L, -1L), (proto.Trainer[40], proto.Trainer[41], proto.Trainer[42], proto.Trainer[43]));
        Assert.Equal("identity", proto.NormalizerName);
        Assert.Equal(1L, proto.Normalizer[3]); // add_dummy_prefix
        Assert.Equal(1L, proto.Normalizer[5]); // escape_whitespaces

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(_c.SentencePiece, "tokenizer_config.json")))!;
        Assert.Equal("LlamaTokenizer", config["tokenizer_class"]!.GetValue<string>());
        Assert.True(config["add_bos_token"]!.GetValue<bool>());
        var tok = TokenizerLoader.Load(_c.SentencePiece, null);
        Assert.Equal((1, 2), (tok.BosId, tok.EosId));
        Assert.True(tok.AddBos);
    }

    /// <summary>Every 16th text of the corpus and the hard cases (the Python reference encoders are slow on all of it).</summary>
    List<string> Sample => _c.Texts.Where((_, i) => i % 16 == 0).Concat(Hard.Where(h => h.Length > 0)).ToList();

    [Fact]
    public void Hf_tokenizers_reads_tokenizer_json_and_gives_the_same_ids()
    {
        // HF's Rust library, which AutoTokenizer uses for tokenizer.json.
        var hf = new Tokenizers.DotNet.Tokenizer(vocabPath: Path.Combine(_c.Gpt2, "tokenizer.json"));
        // FateLlm's own encoder of vocab.json + merges.txt, which folders without tokenizer.json still use.
        var own = TestSupport.TempDir();
        foreach (var f in new[] { "vocab.json", "merges.txt", TokenizerLoader.ConfigFile }) File.Copy(Path.Combine(_c.Gpt2, f), Path.Combine(own, f));
        var tok = TokenizerLoader.Load(own, null);
        Assert.Equal("gpt2-bpe", tok.Kind);
        foreach (var text in Sample)
        {
            var ids = hf.Encode(text);
            Assert.Equal(tok.Encode(text).Select(i => (uint)i), ids);
            Assert.Equal(text, hf.Decode(ids));
        }
    }

    [Theory]
    [InlineData("gpt2-bpe", "gpt2")]
    [InlineData("sentencepiece-bpe", "sentencepiece")]
    public async Task The_reference_implementation_reads_the_files_and_gives_the_same_ids(string kind, string reference)
    {
        var folder = kind == "gpt2-bpe" ? _c.Gpt2 : _c.SentencePiece;
        var tok = TokenizerLoader.Load(folder, null);
        var texts = Sample;
        var psi = new ProcessStartInfo("/usr/bin/python3", [TestSupport.RepoFile("tests/reference/check_tokenizer.py"), reference, folder])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
            StandardInputEncoding = new System.Text.UTF8Encoding(false), StandardOutputEncoding = System.Text.Encoding.UTF8,
        };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        foreach (var t in texts) p.StandardInput.WriteLine(JsonSerializer.Serialize(t));
        p.StandardInput.Close();
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        Assert.True(p.ExitCode == 0, await stderr);
        var lines = (await stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(texts.Count, lines.Length);
        for (int i = 0; i < texts.Count; i++)
        {
            var (ids, decoded) = (lines[i].Split('\t')[0], JsonSerializer.Deserialize<string>(lines[i].Split('\t')[1]));
            Assert.Equal(ids, string.Join(' ', tok.Encode(texts[i])));
            Assert.Equal(texts[i], decoded);
        }
    }

    [Fact]
    public void Bad_inputs_are_refused_naming_the_culprit()
    {
        var dir = TestSupport.TempDir();
        (int, string) Run(params string[] args)
        {
            var err = new StringWriter();
            return (CliApp.Run(args, new StringWriter(), err), err.ToString());
        }
        var (code, err) = Run("tokenizer", "train", "--data", _c.Jsonl, "--vocab", "1000", "--kind", "wordpiece", "--out", dir);
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("wordpiece", err);
        (code, err) = Run("tokenizer", "train", "--data", _c.Jsonl, "--vocab", "200", "--kind", "gpt2-bpe", "--out", Path.Combine(dir, "small"));
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("--vocab 200 is below the 257", err);
        var bad = Path.Combine(dir, "bad.jsonl");
        File.WriteAllLines(bad, ["{\"content\": \"a\"}", "{\"content\": "]);
        (code, err) = Run("tokenizer", "train", "--data", bad, "--vocab", "300", "--out", Path.Combine(dir, "bad"));
        Assert.Equal(CliApp.RuntimeError, code);
        Assert.Contains($"{bad}:2:", err);
        Assert.False(Directory.Exists(Path.Combine(dir, "bad")), "nothing is written when the input is bad");
        (code, err) = Run("tokenizer", "decode", "--tokenizer", _c.Gpt2, "--ids", "5 1500");
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("1500 is not an id of this tokenizer (0..1499)", err);
    }

    [Fact]
    public void Encode_and_decode_print_ids_and_text_for_any_tokenizer()
    {
        foreach (var folder in new[] { _c.Gpt2, _c.SentencePiece })
        {
            var stdout = new StringWriter();
            Assert.Equal(0, CliApp.Run(["tokenizer", "encode", "--tokenizer", folder, "--text", "a small domesticated cat"], stdout, new StringWriter()));
            var ids = stdout.ToString().Trim();
            Assert.Matches("^[0-9]+( [0-9]+)*$", ids);
            stdout = new StringWriter();
            Assert.Equal(0, CliApp.Run(["tokenizer", "decode", "--tokenizer", folder, "--ids", ids], stdout, new StringWriter()));
            Assert.Equal("a small domesticated cat", stdout.ToString().TrimEnd('\n'));
        }
    }
}
