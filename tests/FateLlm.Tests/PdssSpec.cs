using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.Pdss;
using FateLlm.Training.Federation;
using FateLlm.Training.Inference;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Federated PDSS through the cluster: parties train on their rationale columns and the LoRA is averaged; a party whose file lacks the column is named.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class PdssSpec
{
    /// <summary>Each party's training file with a rationale column (every third row empty), except food's, which has none.</summary>
    internal static FederationFixture.Ground WithRationales(FederationFixture.Ground g) => g with
    {
        Datasets = g.Datasets.ToDictionary(kv => kv.Key, kv =>
        {
            var train = kv.Value["train"];
            var withRationales = Path.Combine(g.Root, kv.Key + "-rationales.jsonl");
            var count = File.ReadLines(train).Count(l => l.Trim().Length > 0);
            if (kv.Key == "food") File.Copy(train, withRationales); // no rationale column
            else RationaleData.Write(train, withRationales, "rationale", [.. Enumerable.Range(0, count).Select(i => i % 3 == 0 ? "" : $"because of reason {i}")]);
            return (IReadOnlyDictionary<string, string>)new Dictionary<string, string>(kv.Value) { ["train"] = withRationales };
        }),
    };

    [Fact]
    public async Task Parties_train_on_their_rationales_and_a_file_without_the_column_fails_that_party_naming_file_and_line()
    {
        var g = WithRationales(FederationFixture.Prepare());
        var datasets = g.Datasets;
        await using var fed = await FederationFixture.Start(g);
        var spec = FederationFixture.Job(g, "pdss", rounds: 1, quorum: 2) with
        {
            Algorithm = JobFile.Algorithm(PdssAlgorithm.AlgorithmName, new Dictionary<string, string> { ["alpha"] = "0.5" }),
        };
        var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(180));

        var parties = status.Rounds.Single().Parties.ToDictionary(p => p.Org);
        Assert.False(parties["food"].Succeeded);
        Assert.Contains("food-rationales.jsonl:1: missing field 'rationale'", parties["food"].Reason);
        foreach (var org in new[] { "animal", "artifact" })
        {
            Assert.True(parties[org].Succeeded, parties[org].Reason);
            var examples = File.ReadLines(datasets[org]["train"]).Count();
            Assert.Equal(examples - (examples + 2) / 3, parties[org].Metrics["pdss.with-rationale"]);
        }
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_model.safetensors")));
        var bad = spec with { Algorithm = JobFile.Algorithm(PdssAlgorithm.AlgorithmName, new Dictionary<string, string> { ["alpha"] = "2" }) };
        Assert.Contains("alpha = 2 must be in [0, 1]", Assert.Throws<JobSpecException>(() => AlgorithmCatalog.BuiltIn.Get("pdss").Validate(bad)).Message);
        var example = Actors.Jobs.JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "pdss.conf")));
        AlgorithmCatalog.BuiltIn.For(example).Validate(example);
        Assert.Equal(new PdssAlgorithm.Settings(0.5, "rationale", "{prompt}\nrationale:"), PdssAlgorithm.Settings.Of(example));
    }
}
