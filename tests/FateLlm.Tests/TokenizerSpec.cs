using System.Text;
using System.Text.Json.Nodes;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class TokenizerSpec
{
    static readonly ModelConfig Llama = ModelPresets.Create("llama", "tiny");

    [Theory, InlineData("plain ascii"), InlineData("ünïcödé and 中文 and emoji 🙂"), InlineData("")]
    public void Byte_tokenizer_round_trips_any_text(string text)
    {
        var t = new ByteTokenizer();
        var ids = t.Encode(text);
        Assert.Equal(Encoding.UTF8.GetByteCount(text), ids.Count);
        Assert.Equal(text, t.Decode(ids.Prepend(ByteTokenizer.Bos).Append(ByteTokenizer.Eos)));
    }

    [Fact]
    public void Gpt2_bpe_from_vocab_and_merges_applies_merges_round_trips_and_reads_special_tokens()
    {
        var dir = TestSupport.TempDir();
        var alphabet = ByteLevelAlphabet();
        var vocab = new JsonObject();
        for (int i = 0; i < alphabet.Count; i++) vocab[alphabet[i]] = i;
        string[] merges = ["Ġ t", "h e", "Ġt he", "c a", "ca t"];
        int next = alphabet.Count;
        foreach (var m in merges) vocab[m.Replace(" ", "")] = next++;
        vocab["<|endoftext|>"] = next;
        File.WriteAllText(Path.Combine(dir, "vocab.json"), vocab.ToJsonString());
        File.WriteAllLines(Path.Combine(dir, "merges.txt"), merges.Prepend("#version: 0.2"));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"eos_token": "<|endoftext|>", "bos_token": {"content": "<|endoftext|>"}}""");

        var tok = TokenizerLoader.Load(dir, ModelPresets.Create("gpt2", "tiny") with { VocabSize = next + 1 });
        Assert.Equal("gpt2-bpe", tok.Kind);
        Assert.Equal(next, tok.EosId);
        Assert.Equal(next, tok.BosId);
        var ids = tok.Encode("the cat");
        // "the" → t + he ; " cat" → Ġ + cat
        Assert.Equal(new[] { vocab["t"]!.GetValue<int>(), vocab["he"]!.GetValue<int>(), vocab["Ġ"]!.GetValue<int>(), vocab["cat"]!.GetValue<int>() }, ids);
        Assert.Equal("the cat", tok.Decode(ids.Append(next)));
        Assert.Equal("naïve ☃", tok.Decode(tok.Encode("naïve ☃")));
    }

    [Fact]
    public void Sentencepiece_model_loads_from_tokenizer_model_and_round_trips()
    {
        var dir = TestSupport.TempDir();
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), SentencePieceModel());
        var tok = TokenizerLoader.Load(dir, Llama);
        Assert.Equal("sentencepiece", tok.Kind);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        var ids = tok.Encode("ab a");
        Assert.Equal(new[] { 9, 7 }, ids); // "▁ab" "▁a": merges applied by score
        Assert.Equal("ab a", tok.Decode(ids.Prepend(1).Append(2)));
    }

    [Fact]
    public void Gpt2_tiktoken_gives_gpt2_ids()
    {
        var tok = new TiktokenGpt2Tokenizer();
        Assert.Equal(new[] { 15496, 995 }, tok.Encode("Hello world"));
        Assert.Equal("Hello world", tok.Decode([15496, 995, 50256]));
    }

    [Fact]
    public void A_folder_without_tokenizer_files_says_what_it_expected()
    {
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(TestSupport.TempDir(), ModelPresets.Create("gpt2", "gpt2-small")));
        Assert.Contains("vocab.json + merges.txt", e.Message);
    }

    /// <summary>GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+n.</summary>
    static List<string> ByteLevelAlphabet()
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var cs = bs.ToList();
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!bs.Contains(b)) { bs.Add(b); cs.Add(256 + n++); }
        return cs.Select(c => ((char)c).ToString()).ToList();
    }

    /// <summary>A minimal SentencePiece BPE ModelProto, written field by field.</summary>
    static byte[] SentencePieceModel()
    {
        var model = new ProtoWriter();
        (string Piece, float Score, int Type)[] pieces =
        [
            ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("▁", -1, 1), ("a", -2, 1), ("b", -3, 1), ("c", -4, 1),
            ("▁a", -5, 1), ("ab", -6, 1), ("▁ab", -7, 1),
        ];
        foreach (var (piece, score, type) in pieces)
            model.Message(1, new ProtoWriter().String(1, piece).Float(2, score).Varint(3, type));
        model.Message(2, new ProtoWriter().Varint(3, 2).Varint(4, pieces.Length).Varint(35, 0)
            .Varint(40, 0).Varint(41, 1).Varint(42, 2).Varint(43, -1));
        model.Message(3, new ProtoWriter().String(1, "identity").Varint(3, 1).Varint(4, 0).Varint(5, 1));
        return model.ToArray();
    }

    sealed class ProtoWriter
    {
        readonly MemoryStream _s = new();
        void Raw(ulong v) { do { var b = (byte)(v & 0x7f); v >>= 7; _s.WriteByte(v != 0 ? (byte)(b | 0x80) : b); } while (v != 0); }
        public ProtoWriter Varint(int field, long value) { Raw((ulong)(field << 3)); Raw((ulong)value); return this; }
        public ProtoWriter Float(int field, float value) { Raw((ulong)(field << 3 | 5)); _s.Write(BitConverter.GetBytes(value)); return this; }
        public ProtoWriter String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));
        public ProtoWriter Message(int field, ProtoWriter m) => Bytes(field, m.ToArray());
        ProtoWriter Bytes(int field, byte[] b) { Raw((ulong)(field << 3 | 2)); Raw((ulong)b.Length); _s.Write(b); return this; }
        public byte[] ToArray() => _s.ToArray();
    }
}
