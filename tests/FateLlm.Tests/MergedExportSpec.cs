using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>The export merges shard by shard without loading the base, into what an in-memory merge gives.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class MergedExportSpec
{
    /// <summary>A trained-looking global adapter: the initial one with every trainable tensor moved.</summary>
    static byte[] Adapter(JobSpec spec, string model)
    {
        using var run = FederatedComputation.OpenPrivate(spec, model);
        using (no_grad()) foreach (var (_, p) in PeftModel.TrainableParameters(run.Model)) p.add_(0.05);
        return run.TrainableBytes();
    }

    static Dictionary<string, Tensor> Weights(string folder)
    {
        using var m = HfCheckpoint.Load(folder);
        return m.BaseParameters().ToDictionary(p => p.Name, p => (Tensor)p.Param.detach().clone());
    }

    [Theory]
    [InlineData(false, false, false)]
    [InlineData(true, false, false)]
    [InlineData(false, true, false)]
    [InlineData(true, false, true)]
    public void The_streamed_merge_equals_merging_the_loaded_model(bool sharded, bool fedipr, bool bf16)
    {
        var g = FederationFixture.Prepare();
        if (sharded || bf16)
            using (var m = HfCheckpoint.Load(g.Model, bf16 ? ScalarType.BFloat16 : null))
                HfCheckpoint.Save(m, g.Model, maxShardBytes: sharded ? 200_000 : 2L << 30);
        var spec = FederationFixture.Job(g, "merge") with { Ipr = fedipr ? new Training.Ipr.IprOptions { Enabled = true } : Training.Ipr.IprOptions.Off };
        var adapter = Adapter(spec, g.Model);
        var (streamed, inMemory) = (TestSupport.TempDir(), TestSupport.TempDir());
        FederatedComputation.ExportAdapter(spec, g.Model, adapter, Path.Combine(streamed, "adapter"), Path.Combine(streamed, "merged"));
        using (var run = FederatedComputation.OpenPrivate(spec, g.Model))
        {
            run.LoadTrainable(adapter, "adapter");
            PeftModel.SaveMerged(run.Model, inMemory, g.Model);
        }
        var merged = Path.Combine(streamed, "merged");
        Assert.Equal(sharded, File.Exists(Path.Combine(merged, HfCheckpoint.IndexFile)));
        // Every tensor is stored in the base's dtype, the one config.json names (a bf16 base was written as F32 before).
        var stored = bf16 ? "BF16" : "F32";
        foreach (var file in HfCheckpoint.WeightFiles(merged))
            Assert.All(Training.IO.SafeTensors.ReadEntries(file).Entries, e => Assert.Equal(stored, e.DType));
        Assert.Equal(bf16 ? ScalarType.BFloat16 : ScalarType.Float32, HfCheckpoint.StoredDtype(merged));
        var (a, b) = (Weights(merged), Weights(inMemory));
        Assert.Equal(b.Keys.Order(), a.Keys.Order());
        foreach (var (name, t) in b) Assert.True(TestSupport.MaxAbsDiff(a[name], t) < 1e-6, name);
        // Something moved: LoRA targets (and under FedIPR the watermarked norm scales) differ from the base.
        var base_ = Weights(g.Model);
        Assert.Contains(a.Keys, n => n.EndsWith("q_proj.weight") && TestSupport.MaxAbsDiff(a[n], base_[n]) > 1e-4);
        if (fedipr) Assert.Contains(a.Keys, n => n.Contains("layernorm") && TestSupport.MaxAbsDiff(a[n], base_[n]) > 1e-4);
    }

    [Theory]
    [InlineData("auto", 0L, false)]
    [InlineData("auto", 1L << 30, true)]
    [InlineData("off", 1L << 30, false)]
    [InlineData("on", 0L, true)]
    public void Export_merged_auto_writes_the_merged_checkpoint_only_for_a_base_up_to_the_limit(string merged, long limit, bool written)
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "export") with { Export = new ExportOptions(ExportOptions.Parse(merged), limit) };
        var dir = TestSupport.TempDir();
        FederatedComputation.ExportAdapter(spec, g.Model, FederatedComputation.InitialAdapter(spec, g.Model), Path.Combine(dir, "adapter"), Path.Combine(dir, "merged"));
        Assert.True(File.Exists(Path.Combine(dir, "adapter", "adapter_model.safetensors")));
        Assert.Equal(written, Directory.Exists(Path.Combine(dir, "merged")));
    }
}
