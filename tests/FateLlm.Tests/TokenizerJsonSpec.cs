using System.Text.Json;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// tokenizer.json folders of each kind (tests/reference/make_tokenizer_fixtures.py) against ids that HF's JavaScript
/// tokenizers.js produced on the same files (tests/reference/tokenizer_expected.mjs); FateLlm runs HF's Rust library.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class TokenizerJsonSpec
{
    static JsonElement Expected() =>
        JsonDocument.Parse(File.ReadAllText(TestSupport.FixturePath("tokenizers", "expected.json"))).RootElement;

    static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Theory]
    [InlineData("llama3")]
    [InlineData("qwen2")]
    [InlineData("mistral")]
    public void Ids_equal_hf_tokenizers_js_token_for_token(string kind)
    {
        var e = Expected();
        var texts = e.GetProperty("texts").EnumerateArray().Select(x => x.GetString()!).ToArray();
        var want = e.GetProperty("tokenizers").GetProperty(kind);
        var tok = TokenizerLoader.Load(TestSupport.FixturePath("tokenizers", kind), null);
        Assert.Equal("hf-tokenizer-json", tok.Kind);
        var plain = want.GetProperty("plain").EnumerateArray().Select(Ints).ToArray();
        var withSpecials = want.GetProperty("with_specials").EnumerateArray().Select(Ints).ToArray();
        var decoded = want.GetProperty("decoded").EnumerateArray().Select(x => x.GetString()).ToArray();
        for (int i = 0; i < texts.Length; i++)
        {
            var ids = tok.Encode(texts[i]);
            Assert.True(plain[i].SequenceEqual(ids), $"{kind} text {i} '{texts[i]}': [{string.Join(",", ids)}] vs [{string.Join(",", plain[i])}]");
            // What HF adds with add_special_tokens=True is what AddBos / AddEos say.
            var full = (tok.AddBos ? new[] { tok.BosId!.Value } : []).Concat(ids).Concat(tok.AddEos ? new[] { tok.EosId!.Value } : []);
            Assert.Equal(withSpecials[i], full);
            Assert.Equal(decoded[i], tok.Decode(ids));
        }
    }

    [Fact]
    public void Special_tokens_and_flags_follow_tokenizer_config_and_the_template()
    {
        var llama3 = TokenizerLoader.Load(TestSupport.FixturePath("tokenizers", "llama3"), null);
        Assert.True(llama3.AddBos);
        Assert.Equal(llama3.Encode("<|begin_of_text|>").Single(), llama3.BosId);
        Assert.Equal(llama3.Encode("<|eot_id|>").Single(), llama3.EosId);
        var qwen = TokenizerLoader.Load(TestSupport.FixturePath("tokenizers", "qwen2"), null);
        Assert.False(qwen.AddBos);
        Assert.Null(qwen.BosId);
        Assert.Equal(qwen.Encode("<|endoftext|>").Single(), qwen.PadId);
        var mistral = TokenizerLoader.Load(TestSupport.FixturePath("tokenizers", "mistral"), null);
        Assert.True(mistral.AddBos);
        Assert.Equal(1, mistral.BosId);
        Assert.Equal(2, mistral.EosId);
        Assert.Equal(602, mistral.VocabSize);
        Assert.Equal(605, llama3.VocabSize);
    }

    [Fact]
    public void An_explicit_add_eos_flag_of_a_llama_tokenizer_wins_over_the_template()
    {
        var dir = Copy("mistral");
        var config = Path.Combine(dir, TokenizerLoader.ConfigFile);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"add_eos_token\": false", "\"add_eos_token\": true"));
        var tok = TokenizerLoader.Load(dir, null);
        Assert.True(tok.AddEos);
        Assert.True(tok.AddBos);
    }

    [Theory]
    [InlineData("\"eos_token\": \"<|eot_id|>\"", "\"eos_token\": \"<|nope|>\"", "field 'eos_token' = '<|nope|>' is not a token of")]
    [InlineData("\"type\": \"TemplateProcessing\"", "\"type\": \"RobertaProcessing\"", "field 'post_processor.type' = 'RobertaProcessing' is not supported")]
    public void A_bad_tokenizer_folder_is_refused_naming_file_and_field(string find, string replace, string message)
    {
        var dir = Copy("llama3");
        foreach (var f in Directory.GetFiles(dir))
            File.WriteAllText(f, File.ReadAllText(f).Replace(find, replace));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir, null));
        Assert.Contains(message, e.Message);
        Assert.Contains(dir, e.Message);
    }

    [Fact]
    public void A_tokenizer_with_ids_past_the_models_vocab_size_is_refused_at_load_naming_both_files()
    {
        var dir = Copy("llama3");
        var config = ModelPresets.Create("llama", "tiny") with { VocabSize = 600 };
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir, config));
        Assert.Contains($"{Path.Combine(dir, "tokenizer.json")}: the tokenizer gives ids up to 604", e.Message);
        Assert.Contains($"{Path.Combine(dir, "config.json")} says vocab_size = 600", e.Message);
        Assert.Equal(605, TokenizerLoader.Load(dir, config with { VocabSize = 605 }).VocabSize);
    }

    [Fact]
    public void Decoding_cleans_up_tokenization_spaces_only_where_tokenizer_config_asks_as_hf_does()
    {
        const string text = "x != y , ok . I 'm";
        var llama3 = Copy("llama3");
        var tok = TokenizerLoader.Load(llama3, null);
        Assert.Equal("x!= y, ok. I'm", tok.Decode(tok.Encode(text)));
        var config = Path.Combine(llama3, TokenizerLoader.ConfigFile);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"clean_up_tokenization_spaces\": true", "\"clean_up_tokenization_spaces\": false"));
        tok = TokenizerLoader.Load(llama3, null);
        Assert.Equal(text, tok.Decode(tok.Encode(text)));
        // Unset is off, as transformers' base tokenizer defaults since its PR 31938 (tokenizers.js assumes on).
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"clean_up_tokenization_spaces\": false,", ""));
        Assert.Equal(text, TokenizerLoader.Load(llama3, null).Decode(tok.Encode(text)));
    }

    [Fact]
    public void A_folder_without_any_tokenizer_names_what_it_looked_for()
    {
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(TestSupport.TempDir(), null));
        Assert.Contains("no tokenizer found (expected tokenizer.json, tokenizer.model", e.Message);
    }

    static string Copy(string kind)
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath("tokenizers", kind))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }
}

/// <summary>A tokenizer.json is parsed and prepared once per version of its files, then loaded from the prepared copy.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class TokenizerPreparedSpec
{
    [Fact]
    public void A_prepared_tokenizer_is_reused_by_a_fresh_process_and_prepared_again_when_a_file_changes()
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath("tokenizers", "qwen2"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        const string text = "The federation trained 12345 steps.";
        var ids = TokenizerLoader.Load(dir, null).Encode(text);
        TokenizerLoader.Load(dir, null);
        Assert.Equal(1, HfTokenizerJson.TimesPrepared(dir));
        Assert.True(File.Exists(Path.Combine(dir, HfTokenizerJson.PreparedFile)));

        HfTokenizerJson.ForgetInMemory();
        Assert.Equal(ids, TokenizerLoader.Load(dir, null).Encode(text)); // from the copy beside the model
        Assert.Equal(1, HfTokenizerJson.TimesPrepared(dir));

        // A changed tokenizer_config.json (another EOS) and a replaced tokenizer.json are each prepared again.
        var config = Path.Combine(dir, TokenizerLoader.ConfigFile);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"eos_token\": \"<|im_end|>\"", "\"eos_token\": \"<|endoftext|>\""));
        var tok = TokenizerLoader.Load(dir, null);
        Assert.Equal(2, HfTokenizerJson.TimesPrepared(dir));
        Assert.Equal(TokenizerLoader.Load(TestSupport.FixturePath("tokenizers", "qwen2"), null).Encode("<|endoftext|>").Single(), tok.EosId);
        var json = Path.Combine(dir, HfTokenizerJson.FileName);
        File.Copy(json, json + ".new");
        File.Move(json + ".new", json, overwrite: true);
        HfTokenizerJson.ForgetInMemory();
        Assert.Equal(ids, TokenizerLoader.Load(dir, null).Encode(text));
        Assert.Equal(3, HfTokenizerJson.TimesPrepared(dir));
    }
}
