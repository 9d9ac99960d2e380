using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Peft;
using FateLlm.Training.Trainer;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class PrefixTuningSpec
{
    [Theory, InlineData("gpt2", false), InlineData("llama", false), InlineData("llama", true)]
    public void A_prefix_changes_the_outputs_and_only_the_prefix_trains(string arch, bool projection)
    {
        using var m = TestSupport.TinyModel(arch);
        var ids = randint(0, 256, [2, 10]);
        Tensor before;
        using (no_grad()) before = m.Forward(ids);
        m.Randomness.manual_seed(11);
        PeftModel.Apply(m, new PeftConfig { Method = PeftMethod.PtuningV2, NumVirtualTokens = 5, PrefixProjection = projection, EncoderHiddenSize = 32 });
        m.eval();
        using (no_grad()) Assert.True(TestSupport.MaxAbsDiff(before, m.Forward(ids)) > 1e-3);
        Assert.All(PeftModel.TrainableParameters(m), p => Assert.StartsWith("prompt_encoder.", p.Name));

        var examples = Enumerable.Range(0, 8).Select(i => new TokenizedExample(
            Enumerable.Range(0, 12).Select(t => (i * 7 + t) % 200).ToArray(),
            Enumerable.Range(0, 12).Select(t => t < 4 ? -100 : (i * 7 + t) % 200).ToArray())).ToList();
        var result = new LocalTrainer(m, new TrainOptions { Epochs = 80, BatchSize = 8, LearningRate = 3e-2, Schedule = LrSchedule.Constant }, 258).Train(examples);
        Assert.True(result.LastLoss < result.FirstLoss * 0.8, $"loss {result.FirstLoss} → {result.LastLoss}");
    }

    [Fact]
    public void The_peft_export_holds_prompt_embeddings_in_peft_shape_and_reloads_identically()
    {
        var baseDir = TestSupport.TempDir();
        using var m = TestSupport.TinyModel();
        FateLlm.Training.Models.HfCheckpoint.Save(m, baseDir);
        var cfg = new PeftConfig { Method = PeftMethod.PtuningV2, NumVirtualTokens = 6, PrefixProjection = true, EncoderHiddenSize = 24 };
        PeftModel.Apply(m, cfg);
        m.eval();
        var dir = TestSupport.TempDir();
        AdapterFolder.Save(m, cfg, dir, baseDir);
        var shapes = SafeTensors.ReadShapes(Path.Combine(dir, AdapterFolder.WeightsFile));
        var c = m.Config;
        Assert.Equal(new long[] { 6, 2L * c.NumLayers * c.NumKvHeads * c.HeadDim }, shapes["prompt_embeddings"]);
        var (loaded, _, _) = AdapterFolder.Load(dir);
        using var l = loaded;
        l.eval();
        var ids = randint(0, 256, [1, 5]);
        using var _ = no_grad();
        Assert.True(TestSupport.MaxAbsDiff(m.Forward(ids), l.Forward(ids)) < 1e-5);
    }
}
