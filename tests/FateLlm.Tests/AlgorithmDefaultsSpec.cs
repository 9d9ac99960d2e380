using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.KSeed;
using FateLlm.Training.Federation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// Every built-in plug-in's defaults have one home, its <c>fate-llm.algorithms.&lt;name&gt;</c> block of reference.conf: a job
/// carrying only those validates, and taking any one key away fails naming it, so no plug-in keeps a fallback of its own
/// and no key in reference.conf goes unread.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class AlgorithmDefaultsSpec
{
    /// <summary>Settings with no default that a plug-in needs before it validates (paths on the arbiter, per-party models).</summary>
    static readonly Dictionary<string, Dictionary<string, string>> Required = new()
    {
        ["fedmkt"] = new() { ["public-data"] = "p.jsonl", ["party-models.a"] = "slm" },
        ["fedcollm"] = new() { ["server-model"] = "server", ["public-data"] = "p.jsonl" },
        ["fdkt"] = new() { ["party-model"] = "slm" },
    };

    public static TheoryData<string> BuiltIns() => new(AlgorithmCatalog.BuiltIn.Names);

    static JobSpec With(string name, IReadOnlyDictionary<string, string> settings) =>
        JobFile.Default("d", "m", [new PartySpec("a", "train", null)], "out") with { Algorithm = new AlgorithmSpec(name, settings) };

    [Theory]
    [MemberData(nameof(BuiltIns))]
    public void A_plug_in_reads_exactly_its_reference_block(string name)
    {
        var defaults = JobFile.AlgorithmDefaults(name);
        var settings = new Dictionary<string, string>(defaults);
        foreach (var (key, v) in Required.GetValueOrDefault(name) ?? []) settings[key] = v;
        var algorithm = AlgorithmCatalog.BuiltIn.Get(name);
        algorithm.Validate(With(name, settings));
        foreach (var key in defaults.Keys.Where(k => !(Required.GetValueOrDefault(name)?.ContainsKey(k) ?? false)))
        {
            var without = new Dictionary<string, string>(settings);
            without.Remove(key);
            var e = Assert.Throws<JobSpecException>(() => algorithm.Validate(With(name, without)));
            Assert.Equal($"job.algorithm.{key} is not set, and reference.conf's fate-llm.algorithms.{name} gives it no default", e.Message);
        }
    }

    [Fact]
    public void Fedkseeds_options_equal_reference_conf_and_the_example_job_takes_them_from_there()
    {
        var reference = FederationNode.Reference().GetConfig("fate-llm.algorithms.fedkseed");
        var expected = new FedKSeedAlgorithm.Settings(reference.GetInt("seeds"), reference.GetInt("steps"), reference.GetInt("batch-size"),
            reference.GetDouble("learning-rate"), reference.GetDouble("epsilon"), reference.GetBoolean("pro"), reference.GetDouble("pro-clip"),
            reference.GetDouble("max-scalar"));
        Assert.Equal(expected, FedKSeedAlgorithm.Settings.Of(With("fedkseed", JobFile.AlgorithmDefaults("fedkseed"))));
        var example = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "fedkseed.conf")));
        Assert.Equal(expected, FedKSeedAlgorithm.Settings.Of(example));
    }

    [Fact]
    public void A_job_journaled_before_a_setting_existed_gets_its_default_and_keeps_what_it_set()
    {
        var old = With("fedkseed", new Dictionary<string, string> { ["seeds"] = "64" });
        var upcast = JobFile.WithAlgorithmDefaults(old);
        Assert.Equal("64", upcast.Algorithm.Settings["seeds"]);
        Assert.Equal(JobFile.AlgorithmDefaults("fedkseed").Keys.Order(), upcast.Algorithm.Settings.Keys.Order());
        Assert.Same(upcast, JobFile.WithAlgorithmDefaults(upcast));
    }
}
