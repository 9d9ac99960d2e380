using FateLlm.Host.Experiments;
using FateLlm.Training.Data;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class WordNetSpec
{
    [Fact]
    public void A_data_line_gives_words_domain_definition_and_examples()
    {
        var s = WordNetCorpus.Parse("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 ~ 01322604 n 0000 | a member of the genus Canis; \"the dog barked all night\"", "data.noun:1");
        Assert.Equal(["dog", "domestic dog", "Canis familiaris"], s.Words);
        Assert.Equal("noun.animal", s.Domain);
        Assert.Equal("a member of the genus Canis", s.Definition);
        Assert.Equal(["the dog barked all night"], s.Examples);
        Assert.Equal(["02083346"], s.HypernymOffsets);
        Assert.Equal("word: dog | pos: noun | domain: animal", s.Content);
        Assert.Equal("word: dog | pos: noun | domain: animal | kind: canine", (s with { Kind = "canine" }).Content);
        Assert.Equal("big", WordNetCorpus.Parse("00001740 00 s 01 big(a) 0 000 | large", "x").Words[0]);
    }

    [Fact]
    public void A_malformed_line_is_named_by_file_and_line()
    {
        var dir = TestSupport.WordNetDictionary();
        File.AppendAllText(Path.Combine(dir, "data.verb"), "12345678 99 v 01 fly 0 000 | move through the air\n");
        var e = Assert.Throws<DataFormatException>(() => WordNetCorpus.Read(dir));
        Assert.Contains("data.verb:62: lexicographer file number '99'", e.Message);
        var missing = Assert.Throws<DataFormatException>(() => WordNetCorpus.Read(TestSupport.TempDir()));
        Assert.Contains("apt-get install wordnet-base", missing.Message);
    }

    [Fact]
    public void Splits_are_deterministic_non_iid_by_domain_and_keep_party_domains_out_of_the_public_corpus()
    {
        var synsets = WordNetCorpus.Read(TestSupport.WordNetDictionary());
        // Hypernyms resolve within a part of speech's file, to the first word of the synset pointed at.
        Assert.Equal("word: beast7 | pos: noun | domain: animal | kind: beast0", synsets.Single(s => s.Words[0] == "beast7").Content);
        Assert.Equal("word: run3 | pos: verb | domain: motion | kind: run0", synsets.Single(s => s.Words[0] == "run3").Content);
        Assert.Null(synsets.Single(s => s.Words[0] == "beast0").Kind);
        var o = new WordNetSplitOptions { TrainPerParty = 20, DevPerParty = 5, TestPerParty = 5, PublicLimit = 0 };
        var a = WordNetCorpus.Write(synsets, TestSupport.TempDir(), o);
        var b = WordNetCorpus.Write(synsets, TestSupport.TempDir(), o);
        foreach (var party in a.Parties.Keys)
            Assert.Equal(File.ReadAllText(a.Parties[party].Train), File.ReadAllText(b.Parties[party].Train));
        Assert.All(File.ReadLines(a.Parties["nature"].Train), l => Assert.Matches("domain: (animal|plant)", l));
        Assert.All(File.ReadLines(a.Parties["actions"].Train), l => Assert.Matches("pos: verb", l));
        Assert.Equal(15, File.ReadLines(a.Test).Count());
        Assert.All(File.ReadLines(a.Public), l => Assert.DoesNotMatch("domain: (animal|plant|artifact|food|motion|contact)", l));
        var trainWords = a.Parties.Values.SelectMany(p => File.ReadLines(p.Train)).ToHashSet();
        Assert.DoesNotContain(File.ReadLines(a.Test), trainWords.Contains);
    }

    [Fact]
    public void Analytic_shares_reproduce_the_papers_chatglm_6b_figures()
    {
        var glm = PublishedConfigs.Compute().Single(r => r.Model == "ChatGLM-6B");
        Assert.Equal(0.059, glm.LoraPercent, 3);
        Assert.InRange(glm.PrefixPercent, 0.46, 0.49); // paper: 0.473 %
        Assert.InRange(glm.Parameters, 6.1e9, 6.3e9);
        var llama = PublishedConfigs.Compute().Single(r => r.Model == "LLaMA-7B");
        Assert.Equal(6_738_415_616, llama.Parameters); // the published LLaMA-7B count
    }
}
