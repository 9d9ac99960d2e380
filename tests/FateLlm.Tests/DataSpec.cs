using FateLlm.Training.Data;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class DataSpec
{
    [Fact]
    public void A_malformed_line_is_reported_with_file_and_line_number()
    {
        var path = Path.Combine(TestSupport.TempDir(), "bad.jsonl");
        File.WriteAllLines(path, ["{\"content\": \"a\", \"summary\": \"b\"}", "", "{\"content\": \"a\", \"summary\": ", "{}"]);
        var e = Assert.Throws<DataFormatException>(() => InstructionData.ReadJsonl(path, new DataOptions()));
        Assert.Matches($"^{System.Text.RegularExpressions.Regex.Escape(path)}:3:\\d+: not valid JSON", e.Message);
        File.WriteAllLines(path, ["{\"content\": \"a\", \"summary\": \"b\"}", "{\"content\": \"a\"}"]);
        e = Assert.Throws<DataFormatException>(() => InstructionData.ReadJsonl(path, new DataOptions()));
        Assert.Equal($"{path}:2: missing field 'summary'", e.Message);
        File.WriteAllLines(path, ["{\"q\": 3, \"a\": \"b\"}"]);
        e = Assert.Throws<DataFormatException>(() => InstructionData.ReadJsonl(path, new DataOptions { PromptColumn = "q", ResponseColumn = "a" }));
        Assert.Equal($"{path}:1: field 'q' must be a string, got Number", e.Message);
    }

    [Fact]
    public void Prompt_tokens_are_masked_and_the_response_ends_with_eos()
    {
        var tok = new ByteTokenizer();
        var t = InstructionData.Tokenize(new Example("ab", "xyz", "t"), tok, new DataOptions { Template = "Q: {prompt}\nA: " });
        var promptLen = 1 + "Q: ab\nA: ".Length;
        Assert.Equal(promptLen + 3 + 1, t.Length);
        Assert.All(t.Labels.Take(promptLen), l => Assert.Equal(InstructionData.IgnoreIndex, l));
        Assert.Equal(t.InputIds.Skip(promptLen), t.Labels.Skip(promptLen));
        Assert.Equal(ByteTokenizer.Eos, t.InputIds[^1]);
    }

    [Fact]
    public void Lengths_are_capped_per_part_and_in_total()
    {
        var tok = new ByteTokenizer();
        var t = InstructionData.Tokenize(new Example(new string('p', 50), new string('r', 50), "t"), tok,
            new DataOptions { Template = "{prompt}", MaxPromptTokens = 10, MaxResponseTokens = 30, MaxTotalTokens = 25 });
        Assert.Equal(25, t.Length);
        Assert.Equal(1 + 10, t.Labels.Count(l => l == InstructionData.IgnoreIndex));
    }

    [Fact]
    public void Collate_right_pads_and_masks_padding()
    {
        var b = InstructionData.Collate([new TokenizedExample([1, 2, 3], [-100, 2, 3]), new TokenizedExample([4], [4])], padId: 9);
        Assert.Equal(new long[] { 1, 2, 3, 4, 9, 9 }, b.InputIds.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 2, 3, 4, -100, -100 }, b.Labels.data<long>().ToArray());
        Assert.Equal(new long[] { 1, 1, 1, 1, 0, 0 }, b.AttentionMask.data<long>().ToArray());
    }
}
