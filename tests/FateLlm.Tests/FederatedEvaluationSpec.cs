using System.Text.Json.Nodes;
using Akka.Configuration;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation.Harness;
using FateLlm.Training.Federation;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// A job's evaluation tasks run at each party on its own data through the in-process cluster: every party maps the
/// job's <c>wordnet_gloss</c> to the task file of its own domain (as it maps datasets) and finds
/// <c>wordnet_gloss_ppl</c> among its node's built-in tasks; the job records each party's figures and their
/// document-weighted aggregate, in round 2 (<c>evaluation.every = 2</c>) and at the end. One party's node is killed when its evaluation starts: the job still completes, and
/// says who evaluated and who did not, and why.
/// </summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class FederatedEvaluationSpec
{
    [Fact]
    public async Task Each_party_scores_the_tasks_on_its_own_data_and_a_party_killed_while_evaluating_is_reported_not_waited_for()
    {
        var g = FederationFixture.Prepare();
        var tasks = Path.Combine(g.Root, "tasks");
        WordNetTasks.Write(WordNetCorpus.Read(), tasks, new WordNetSplitOptions());
        var domains = new Dictionary<string, string> { ["animal"] = "animal", ["artifact"] = "artifact", ["food"] = "food" };
        foreach (var (org, domain) in domains)
            g.Datasets[org] = new Dictionary<string, string>(g.Datasets[org]) { ["wordnet_gloss"] = Path.Combine(tasks, $"wordnet_gloss_{domain}.yaml") };
        var kill = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.evaluate, org = food, action = terminate }]");
        await using var fed = await FederationFixture.Start(g, kill);
        var spec = FederationFixture.Job(g, "tasks", rounds: 2);
        spec = spec with { Evaluation = spec.Evaluation with { Tasks = ["wordnet_gloss", "wordnet_gloss_ppl"], TaskLimit = 12, Every = 2 } };

        var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(180));

        // evaluation.every = 2: round 2's parties scored the tasks on the global state it started from; round 1's did not.
        Assert.All(status.Rounds[0].Parties, p => Assert.Empty(TaskScore.FromMetrics(p.Metrics)));
        Assert.All(status.Rounds[1].Parties, p => Assert.Equal([12, 12], TaskScore.FromMetrics(p.Metrics).Select(t => t.Documents)));
        var lines = File.ReadAllLines(Path.Combine(spec.OutputDir, "rounds.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.All(lines.Where(l => (int)l["round"]! == 2), l => Assert.Equal(12, (int)l["tasks"]!["wordnet_gloss"]!["documents"]!));

        Assert.Equal(["animal", "artifact"], status.FinalEvaluation.Select(e => e.Org));
        Assert.Contains("left the cluster", Assert.Single(status.EvaluationMissing, kv => kv.Key == "food").Value);
        foreach (var e in status.FinalEvaluation)
        {
            Assert.Equal(["wordnet_gloss", "wordnet_gloss_ppl"], e.Tasks.Select(t => t.Task));
            Assert.All(e.Tasks, t => Assert.Equal(12, t.Documents));
            Assert.InRange(e.Tasks[0].Metrics["acc"], 0, 1);
            Assert.True(e.Tasks[0].StdErr["acc"] > 0);
            Assert.True(e.Tasks[1].Metrics["byte_perplexity"] > 1);
        }
        // The aggregate weighs each party's figures by its documents (12 each here).
        var gloss = status.FinalEvaluation.Select(e => e.Tasks[0]).ToList();
        var all = TaskScore.Aggregate(status.FinalEvaluation.SelectMany(e => e.Tasks)).Single(t => t.Task == "wordnet_gloss");
        Assert.Equal(24, all.Documents);
        Assert.Equal((gloss[0].Metrics["acc_norm"] + gloss[1].Metrics["acc_norm"]) / 2, all.Metrics["acc_norm"], 12);
        var written = JsonNode.Parse(File.ReadAllText(Path.Combine(spec.OutputDir, "evaluation-tasks.json")))!.AsArray();
        Assert.Equal(["wordnet_gloss", "wordnet_gloss_ppl"], written.Select(t => t!["Task"]!.GetValue<string>()));
        Assert.Equal(all.Metrics["acc"], written[0]!["Metrics"]!["acc"]!.GetValue<double>(), 12);
    }
}
