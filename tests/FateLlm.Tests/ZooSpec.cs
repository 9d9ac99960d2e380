using System.Security.Cryptography;
using FateLlm.Host.Cli;
using FateLlm.Host.Zoo;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Zoo;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The model zoo with tiny recipes on a miniature WordNet: CI never pretrains the real zoo.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ZooSpec
{
    const int Dev = 10;

    static ZooRecipe Tiny(string arch = "llama", string tokenizer = "sentencepiece-bpe", int vocab = 320, int steps = 3) =>
        new("tiny-" + arch, "a tiny recipe", arch, new ModelShape(32, 2, 2, arch == "gpt2" ? 2 : 1, 64, 128), new ZooTokenizer(tokenizer, vocab), steps, 4, 1e-3, 0.1, 5);

    static string Sha(string file) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file)));

    [Fact]
    public void A_built_model_is_an_hf_folder_with_its_tokenizer_and_a_card_and_the_next_use_reuses_it()
    {
        var dict = TestSupport.WordNetDictionary(60);
        var root = TestSupport.TempDir();
        var log = new List<string>();
        var zoo = new ModelZoo(root, dict, log.Add, Dev);
        var card = zoo.Ensure(Tiny());

        var folder = zoo.Folder("tiny-llama");
        var (corpus, digest) = zoo.PublicCorpus();
        Assert.Equal(Sha(corpus), digest);
        Assert.Equal(digest, card.CorpusDigest);
        Assert.Equal(3, card.Steps);
        Assert.Equal(5, card.Seed);
        Assert.Equal(Dev, card.DevExamples);
        Assert.Equal(File.ReadLines(corpus).Count() - Dev, card.TrainExamples);
        Assert.True(card.WallSeconds >= 0 && card.Tokens > 0);
        Assert.True(card.DevPerplexityPerToken > 1 && card.DevPerplexityPerByte > 1, $"{card.DevPerplexityPerToken} {card.DevPerplexityPerByte}");
        Assert.Equal(card, ModelZoo.ReadCard(folder));
        Assert.True(File.Exists(Path.Combine(folder, "tokenizer.model")));
        using (var model = HfCheckpoint.Load(folder))
        {
            var tok = TokenizerLoader.Load(folder, model.Config);
            Assert.Equal(tok.VocabSize, model.Config.VocabSize);
            Assert.Equal(card.Parameters, model.Config.ParameterCount());
            Assert.Equal("the meaning number 7 of herb7", tok.Decode(tok.Encode("the meaning number 7 of herb7")));
        }
        Assert.DoesNotContain(Directory.GetDirectories(root), d => d.EndsWith(".building"));

        var weights = Path.Combine(folder, HfCheckpoint.SingleFile);
        var written = File.GetLastWriteTimeUtc(weights);
        log.Clear();
        var again = new ModelZoo(root, dict, log.Add, Dev).Ensure(Tiny());
        Assert.Equal(card, again);
        Assert.Equal(written, File.GetLastWriteTimeUtc(weights));
        Assert.Contains(log, l => l.Contains("tiny-llama cached"));

        // A changed recipe is a different model: rebuilt, not reused.
        var longer = zoo.Ensure(Tiny(steps: 4));
        Assert.Equal(4, longer.Steps);
        Assert.NotEqual(card.Fingerprint, longer.Fingerprint);

        // Another corpus (a new dictionary or corpus format) rebuilds the tokenizer and the model.
        File.AppendAllText(Path.Combine(dict, "data.adj"), "00009000 00 s 01 tall(a) 0 000 | of great height\n");
        var other = new ModelZoo(root, dict, log.Add, Dev).Ensure(Tiny(steps: 4));
        Assert.NotEqual(longer.CorpusDigest, other.CorpusDigest);
        Assert.Contains("of great height", File.ReadAllText(Path.Combine(root, "corpus", "public.jsonl")));
        Assert.Equal(other.CorpusDigest, File.ReadAllText(Path.Combine(root, "tokenizers", "sentencepiece-bpe-320.corpus-sha256")));
        Assert.NotEqual(longer.BuiltUtc, other.BuiltUtc);
    }

    [Fact]
    public void Pretraining_is_reproducible_and_each_family_gets_its_own_tokenizer_kind()
    {
        var dict = TestSupport.WordNetDictionary(60);
        var a = new ModelZoo(TestSupport.TempDir(), dict, _ => { }, Dev);
        var b = new ModelZoo(TestSupport.TempDir(), dict, _ => { }, Dev);
        var recipe = Tiny("gpt2", "gpt2-bpe", 300);
        var cardA = a.Ensure(recipe);
        var cardB = b.Ensure(recipe);
        Assert.Equal(Sha(Path.Combine(a.Folder(recipe.Name), HfCheckpoint.SingleFile)), Sha(Path.Combine(b.Folder(recipe.Name), HfCheckpoint.SingleFile)));
        Assert.Equal(cardA.DevLoss, cardB.DevLoss);
        Assert.True(File.Exists(Path.Combine(a.Folder(recipe.Name), "vocab.json")) && File.Exists(Path.Combine(a.Folder(recipe.Name), "merges.txt")));
        Assert.Equal("gpt2-bpe", cardA.Tokenizer);
        using var model = HfCheckpoint.Load(a.Folder(recipe.Name));
        Assert.Equal("gpt2", model.Config.ModelType);
    }

    [Fact]
    public void An_interrupted_build_is_not_taken_for_a_cached_model()
    {
        var dict = TestSupport.WordNetDictionary(60);
        var root = TestSupport.TempDir();
        var zoo = new ModelZoo(root, dict, _ => { }, Dev);
        Directory.CreateDirectory(zoo.Folder("tiny-llama") + ".building");
        File.WriteAllText(Path.Combine(zoo.Folder("tiny-llama") + ".building", "half-written"), "");
        Directory.CreateDirectory(zoo.Folder("tiny-llama"));
        File.WriteAllText(Path.Combine(zoo.Folder("tiny-llama"), ModelZoo.CardFile), "{ not json");
        Assert.Null(ModelZoo.ReadCard(zoo.Folder("tiny-llama")));
        var card = zoo.Ensure(Tiny());
        Assert.Equal(card, ModelZoo.ReadCard(zoo.Folder("tiny-llama")));
        Assert.False(Directory.Exists(zoo.Folder("tiny-llama") + ".building"));
    }

    [Fact]
    public void The_reference_catalog_holds_the_issue_s_models()
    {
        var catalog = ZooCatalog.Load();
        Assert.Equal(["base", "server", "slm-gpt2", "slm-llama"], catalog.Recipes.Select(r => r.Name));
        var server = catalog["server"];
        Assert.Equal("llama", server.Arch);
        Assert.True(server.Shape.Layers >= 8, "enough blocks to drop some for an emulator");
        Assert.Equal("sentencepiece-bpe", server.Tokenizer.Kind);
        Assert.Equal("gpt2", catalog["slm-gpt2"].Arch);
        Assert.Equal("gpt2-bpe", catalog["slm-gpt2"].Tokenizer.Kind);
        // Three different tokenizers among server and the two small models.
        Assert.Equal(3, new[] { "server", "slm-gpt2", "slm-llama" }.Select(n => catalog[n].Tokenizer.Folder).Distinct().Count());
        Assert.Contains(catalog.DemoBase, catalog.Recipes.Select(r => r.Name));
    }

    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        var code = CliApp.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Zoo_build_builds_then_reuses_and_names_bad_recipes_and_models()
    {
        var dir = TestSupport.TempDir();
        var dict = TestSupport.WordNetDictionary(60);
        var conf = Path.Combine(dir, "tiny.conf");
        File.WriteAllText(conf, """
            fate-llm.zoo.dev-examples = 10
            fate-llm.zoo.models.tiny {
              description = "a tiny recipe"
              arch = llama
              shape { hidden = 32, layers = 2, heads = 2, kv-heads = 1, intermediate = 64, positions = 128 }
              tokenizer { kind = byte }
              pretrain { steps = 2, batch-size = 4, learning-rate = 1e-3, warmup-ratio = 0, seed = 3 }
            }
            """);
        var zoo = Path.Combine(dir, "zoo");
        string[] build = ["zoo", "build", "--out", zoo, "--dict", dict, "--config", conf, "--only", "tiny"];
        var (code, output, err) = Cli(build);
        Assert.True(code == 0, err);
        Assert.Contains("tiny", output);
        Assert.NotNull(ModelZoo.ReadCard(Path.Combine(zoo, "tiny")));
        Assert.False(Directory.Exists(Path.Combine(zoo, "server")), "--only builds only the named models");
        (code, output, err) = Cli(build);
        Assert.True(code == 0, err);
        Assert.Contains("tiny cached", output);

        (code, _, err) = Cli("zoo", "build", "--out", zoo, "--dict", dict, "--config", conf, "--only", "tiny,nope");
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("'nope' is not a zoo model", err);

        File.WriteAllText(conf, File.ReadAllText(conf).Replace("arch = llama", "arch = mamba"));
        (code, _, err) = Cli(build);
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains($"{conf}: fate-llm.zoo.models.tiny.arch = 'mamba'", err);

        File.WriteAllText(conf, "fate-llm.zoo.models.tiny { arch = llama\n");
        (code, _, err) = Cli(build);
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains(conf, err);
        Assert.Single(err.Trim().Split('\n'));
    }
}
