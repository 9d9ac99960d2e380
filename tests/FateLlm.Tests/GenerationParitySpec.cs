using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Host.Cli;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// A plain <c>generate</c> continues a prompt exactly as HF does. The fixtures (tests/reference/make_generation_fixtures.py)
/// hold a GPT-2 folder with a byte-level BPE tokenizer and a LLaMA folder with a SentencePiece tokenizer, the prompt ids
/// HF's tokenizers produce (GPT-2: no BOS; LLaMA: BOS) and the greedy continuation, all computed without FateLlm.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class GenerationParitySpec
{
    sealed record Case(string Prompt, int[] PromptIds, int[] NewIds);

    static (int MaxNewTokens, Case[] Cases) Expected(string fixture)
    {
        var o = JsonNode.Parse(File.ReadAllText(TestSupport.FixturePath(fixture, "expected_generation.json")))!;
        var cases = o["cases"]!.AsArray().Select(c => new Case(c!["prompt"]!.GetValue<string>(),
            c["prompt_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray(), c["new_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray())).ToArray();
        return (o["max_new_tokens"]!.GetValue<int>(), cases);
    }

    static string Generate(params string[] args)
    {
        var captured = new StringWriter();
        Assert.Equal(0, CliApp.Run(["generate", .. args], captured, new StringWriter()));
        return captured.ToString().TrimEnd('\n');
    }

    [Theory]
    [InlineData("gpt2-bpe-generate")]
    [InlineData("llama-spm-generate")]
    public void Prompt_ids_and_the_greedy_continuation_equal_hf_token_for_token(string fixture)
    {
        var folder = TestSupport.FixturePath(fixture);
        var (maxNew, cases) = Expected(fixture);
        using var model = HfCheckpoint.Load(folder);
        var tok = TokenizerLoader.Load(folder, model.Config);
        foreach (var c in cases)
        {
            var ids = InstructionData.TextIds(c.Prompt, tok);
            Assert.Equal(c.PromptIds, ids);
            var output = TextGeneration.Generate(model, ids, new SamplingOptions { MaxNewTokens = maxNew, Temperature = 0 }, tok.EosId);
            Assert.Equal(c.NewIds, output);
            // The command prints the decoded continuation of exactly those ids.
            Assert.Equal(tok.Decode(c.NewIds), Generate("--model", folder, "--prompt", c.Prompt, "--temperature", "0", "--max-new-tokens", maxNew.ToString()));
        }
    }

    [Fact]
    public void Tokenizer_config_flags_decide_bos_and_eos_as_hf_does()
    {
        var folder = Copy("gpt2-bpe-generate");
        using var model = HfCheckpoint.Load(folder);
        var plain = TokenizerLoader.Load(folder, model.Config);
        Assert.False(plain.AddBos); // GPT2Tokenizer's default
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "tokenizer_config.json")))!.AsObject();
        config["add_bos_token"] = true;
        config["add_eos_token"] = true;
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString());
        var flagged = TokenizerLoader.Load(folder, model.Config);
        var ids = InstructionData.TextIds("the cat", flagged);
        Assert.Equal(flagged.BosId, ids[0]);
        Assert.Equal(flagged.EosId, ids[^1]);
        Assert.Equal(InstructionData.TextIds("the cat", plain), ids.Skip(1).SkipLast(1));
        var spm = TokenizerLoader.Load(TestSupport.FixturePath("llama-spm-generate"), ModelConfig.Load(Path.Combine(TestSupport.FixturePath("llama-spm-generate"), "config.json")));
        Assert.True(spm.AddBos && !spm.AddEos); // LlamaTokenizer's defaults
    }

    [Fact]
    public void A_vocabulary_missing_a_byte_symbol_fails_with_one_line_naming_the_file_and_the_symbol()
    {
        var folder = Copy("gpt2-bpe-generate");
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "vocab.json")))!.AsObject();
        vocab.Remove("Ġ"); // the symbol of the space byte
        File.WriteAllText(Path.Combine(folder, "vocab.json"), vocab.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
        using var model = HfCheckpoint.Load(folder);
        var tok = TokenizerLoader.Load(folder, model.Config);
        Assert.NotEmpty(tok.Encode("cat")); // texts that need no missing symbol still encode
        var e = Assert.Throws<ModelFormatException>(() => tok.Encode("the cat"));
        Assert.Equal($"{Path.Combine(folder, "vocab.json")}: has no entry for the byte-level symbol 'Ġ' (U+0120), which the text needs; every one of the 256 byte symbols must be in the vocabulary", e.Message);
    }

    static string Copy(string fixture)
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath(fixture))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }
}
