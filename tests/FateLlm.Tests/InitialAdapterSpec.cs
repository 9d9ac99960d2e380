using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The arbiter builds a job's initial adapter from the config and the weights' headers, equal to a full load's.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class InitialAdapterSpec
{
    public static TheoryData<string> Methods => new() { "lora", "ptuning-v2", "full", "lora+fedipr" };

    static JobSpec Spec(FederationFixture.Ground g, string method)
    {
        var spec = FederationFixture.Job(g, "initial");
        var peft = spec.Peft with { Method = PeftConfig.ParseMethod(method.Split('+')[0]), NumVirtualTokens = 4 };
        return spec with { Peft = peft, Ipr = method.EndsWith("+fedipr") ? new Training.Ipr.IprOptions { Enabled = true } : spec.Ipr };
    }

    [Theory, MemberData(nameof(Methods))]
    public void The_initial_adapter_from_headers_is_bit_identical_to_the_one_a_loaded_model_gives(string method)
    {
        var g = FederationFixture.Prepare();
        var spec = Spec(g, method);
        using var loaded = FederatedComputation.OpenPrivate(spec, g.Model);
        Assert.Equal(loaded.TrainableBytes(), FederatedComputation.InitialAdapter(spec, g.Model));
    }

    [Fact]
    public void A_lora_jobs_initial_adapter_reads_no_weight_of_the_base()
    {
        var g = FederationFixture.Prepare();
        var spec = Spec(g, "lora");
        var expected = FederatedComputation.InitialAdapter(spec, g.Model);
        // Every weight byte overwritten (headers kept): what was never read cannot change the result.
        var file = Path.Combine(g.Model, HfCheckpoint.SingleFile);
        var dataStart = SafeTensors.ReadEntries(file).DataStart;
        var bytes = File.ReadAllBytes(file);
        Array.Fill(bytes, (byte)0xFF, (int)dataStart, bytes.Length - (int)dataStart);
        File.WriteAllBytes(file, bytes);
        Assert.Equal(expected, FederatedComputation.InitialAdapter(spec, g.Model));
    }
}
