using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class DecoderSpec
{
    [Theory, InlineData("gpt2"), InlineData("llama")]
    public void Forward_returns_logits_per_position_over_the_vocabulary(string arch)
    {
        using var m = TestSupport.TinyModel(arch);
        using var _ = no_grad();
        var logits = m.Forward(randint(0, 256, [3, 10]));
        Assert.Equal(new long[] { 3, 10, m.Config.VocabSize }, logits.shape);
    }

    [Theory, InlineData("gpt2", false), InlineData("llama", false), InlineData("gpt2", true), InlineData("llama", true)]
    public void Cached_decoding_gives_the_same_logits_as_a_full_forward(string arch, bool prefix)
    {
        using var m = TestSupport.TinyModel(arch);
        if (prefix) PeftModel.Apply(m, new PeftConfig { Method = PeftMethod.PtuningV2, NumVirtualTokens = 4 });
        m.eval();
        using var _ = no_grad();
        var ids = randint(0, 256, [2, 12]);
        var full = m.Forward(ids);
        using var cache = m.NewCache();
        var parts = new List<Tensor> { m.Forward(ids.narrow(1, 0, 7), cache) };
        for (int t = 7; t < 12; t++) parts.Add(m.Forward(ids.narrow(1, t, 1), cache));
        Assert.Equal(12, cache.Length);
        Assert.True(TestSupport.MaxAbsDiff(full, cat(parts, 1)) < 1e-4);
    }

    [Theory, InlineData("gpt2"), InlineData("llama")]
    public void Left_padded_batched_generation_equals_generating_each_prompt_alone(string arch)
    {
        using var m = TestSupport.TinyModel(arch);
        var prompts = new List<IReadOnlyList<int>> { new[] { 256, 10, 20, 30, 40, 50 }, new[] { 256, 7, 8 } };
        var o = new SamplingOptions { MaxNewTokens = 6, StopAtEos = false };
        var batched = TextGeneration.GenerateBatch(m, prompts, o, eos: null, padId: 258);
        for (int i = 0; i < prompts.Count; i++)
            Assert.Equal(TextGeneration.Generate(m, prompts[i], o, eos: null), batched[i]);
    }

    [Fact]
    public void Generation_stops_at_eos_and_respects_max_new_tokens()
    {
        using var m = TestSupport.TinyModel();
        var prompt = new[] { 256, 1, 2, 3 };
        var free = TextGeneration.Generate(m, prompt, new SamplingOptions { MaxNewTokens = 5, StopAtEos = false }, eos: null);
        Assert.Equal(5, free.Count);
        // Declaring the greedy second token to be EOS must cut the output right before it.
        var stopped = TextGeneration.Generate(m, prompt, new SamplingOptions { MaxNewTokens = 5 }, eos: free[1]);
        Assert.Equal(free.TakeWhile(t => t != free[1]), stopped);
    }

    [Fact]
    public void Top_k_1_sampling_equals_greedy_and_seeded_sampling_is_reproducible()
    {
        using var m = TestSupport.TinyModel();
        var prompt = new[] { 256, 5, 6 };
        var greedy = TextGeneration.Generate(m, prompt, new SamplingOptions { MaxNewTokens = 8, StopAtEos = false }, null);
        var topk1 = TextGeneration.Generate(m, prompt, new SamplingOptions { MaxNewTokens = 8, Temperature = 1.3, TopK = 1, StopAtEos = false }, null);
        Assert.Equal(greedy, topk1);
        var s = new SamplingOptions { MaxNewTokens = 8, Temperature = 1.0, TopP = 0.9, Seed = 3, StopAtEos = false };
        Assert.Equal(TextGeneration.Generate(m, prompt, s, null), TextGeneration.Generate(m, prompt, s, null));
    }
}
