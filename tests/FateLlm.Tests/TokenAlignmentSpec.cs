using FateLlm.Training.Algorithms.Mkt;
using FateLlm.Training.Data;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>FedMKT's token alignment across the tokenizer families the project loads (byte, byte-level BPE, SentencePiece).</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class TokenAlignmentSpec : IClassFixture<TokenAlignmentSpec.Tokenizers>
{
    public sealed class Tokenizers
    {
        public ITextTokenizer Bpe { get; }
        public ITextTokenizer SentencePiece { get; }
        public ITextTokenizer Bytes { get; } = new ByteTokenizer();
        public List<string> Texts { get; }

        public Tokenizers()
        {
            var dir = TestSupport.TempDir();
            var data = WordNetCorpus.Write(WordNetCorpus.Read(), Path.Combine(dir, "data"), new WordNetSplitOptions { PublicLimit = 0 });
            Texts = TokenizerTraining.ReadCorpus(data.Public).Take(3000).ToList();
            TokenizerTraining.Train(TokenizerKind.Gpt2Bpe, Texts, 500, Path.Combine(dir, "bpe"));
            TokenizerTraining.Train(TokenizerKind.SentencePieceBpe, Texts, 600, Path.Combine(dir, "sp"));
            Bpe = TokenizerLoader.Load(Path.Combine(dir, "bpe"), null);
            SentencePiece = TokenizerLoader.Load(Path.Combine(dir, "sp"), null);
        }
    }

    readonly Tokenizers _t;
    public TokenAlignmentSpec(Tokenizers t) => _t = t;

    IEnumerable<ITextTokenizer> All => [_t.Bpe, _t.SentencePiece, _t.Bytes];

    [Fact]
    public void Across_identical_tokenizers_every_token_maps_to_itself_and_every_position_to_its_own()
    {
        foreach (var tok in All)
        {
            var v = TokenVocabulary.Of(tok);
            Assert.Equal(Enumerable.Range(0, tok.VocabSize), TokenAlignment.VocabularyMap(v, v));
            var ids = tok.Encode(_t.Texts[3]);
            var offsets = TokenAlignment.Offsets(tok, ids);
            Assert.Equal(Enumerable.Range(0, ids.Count), TokenAlignment.Positions(offsets, offsets));
        }
    }

    [Fact]
    public void Word_start_markers_of_both_families_become_one_leading_space()
    {
        var bpe = TokenVocabulary.Of(_t.Bpe);
        var sp = TokenVocabulary.Of(_t.SentencePiece);
        var map = TokenAlignment.VocabularyMap(sp, bpe);
        var shared = Enumerable.Range(0, sp.Surfaces.Count).Where(v => sp.Surfaces[v].StartsWith(' ') && bpe.Surfaces.Contains(sp.Surfaces[v])).ToList();
        Assert.True(shared.Count > 50, $"only {shared.Count} word-start tokens in common");
        Assert.All(shared, v => Assert.Equal(sp.Surfaces[v], bpe.Surfaces[map[v]]));
        // Special tokens map by role; a surface the target lacks goes to its nearest (edit distance).
        Assert.Equal(bpe.Eos, map[sp.Eos!.Value]);
        Assert.Equal(3, TokenAlignment.EditDistance("kitten", "sitting"));
        var missing = Enumerable.Range(0, sp.Surfaces.Count).First(v => sp.Surfaces[v].Length > 3 && !bpe.Surfaces.Contains(sp.Surfaces[v]));
        var nearest = bpe.Surfaces[map[missing]];
        Assert.All(bpe.Surfaces.Where(x => x.Length > 0), x => Assert.True(TokenAlignment.EditDistance(sp.Surfaces[missing], x) >= TokenAlignment.EditDistance(sp.Surfaces[missing], nearest)));
    }

    [Fact]
    public void Positions_round_trip_across_different_tokenizers_and_match_equal_prefixes()
    {
        foreach (var text in _t.Texts.Take(40).Append("it's 42 o'clock, isn't it?"))
            foreach (var (a, b) in new[] { (_t.Bpe, _t.SentencePiece), (_t.SentencePiece, _t.Bytes), (_t.Bpe, _t.Bytes) })
            {
                var (ia, ib) = (a.Encode(text), b.Encode(text));
                var (oa, ob) = (TokenAlignment.Offsets(a, ia), TokenAlignment.Offsets(b, ib));
                var ab = TokenAlignment.Positions(oa, ob); // for each position of b, its position in a
                var ba = TokenAlignment.Positions(ob, oa);
                Assert.Equal(ib.Count - 1, ab[^1] < 0 ? -1 : ba[ab[^1]]); // the last tokens end together
                for (int i = 0; i < ab.Length; i++)
                {
                    if (ab[i] < 0) continue;
                    Assert.Equal(i, ba[ab[i]]);
                    Assert.Equal(b.Decode(ib.Take(i + 1)), a.Decode(ia.Take(ab[i] + 1)));
                }
                // Bytes end at every character, so every position of a coarser tokenizer finds its match, except a leading
                // token that adds no text (SentencePiece's lone ▁): nothing precedes the first byte.
                if (ReferenceEquals(b, _t.Bytes))
                    Assert.All(TokenAlignment.Positions(ob, oa).Select((j, i) => (j, i)).Where(x => oa.Ends[x.i] > 0), x => Assert.True(x.j >= 0,
                        $"{a.Kind} position {x.i} of '{text}': ends {string.Join(",", oa.Ends)} / bytes {string.Join(",", ob.Ends)}; text '{oa.Text}' vs '{ob.Text}'"));
            }
    }
}
