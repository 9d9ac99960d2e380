using Akka.Actor;
using Akka.Cluster.Sharding;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using TorchSharp;
using static TorchSharp.torch;
using FateLlm.Training.Algorithms;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class FederationSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(120);

    static double Sample(string scrape, string metric, params string[] labels)
    {
        var line = scrape.Split('\n').FirstOrDefault(l => l.StartsWith(metric + "{", StringComparison.Ordinal) && labels.All(l.Contains))
            ?? throw new Xunit.Sdk.XunitException($"no sample of {metric} with {string.Join(", ", labels)} in:\n{scrape}");
        return double.Parse(System.Text.RegularExpressions.Regex.Match(line, @"\}\s+(\S+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Jobs and rounds are sharded across arbiters: the board on one arbiter still shows a job that lives on the other,
    /// its status (relayed from that arbiter) and its parties' states in the exchange (relayed from the round's arbiter).
    /// </summary>
    [Fact]
    public async Task A_board_on_one_of_two_arbiters_shows_the_jobs_of_both_with_their_parties_live()
    {
        var g = FederationFixture.Prepare();
        var feed = new Actors.Board.BoardFeed();
        var partiesSeen = new System.Collections.Concurrent.ConcurrentDictionary<string, byte>(); // job ids whose parties the board showed past "asked"
        using var watch = feed.Subscribe(s =>
        {
            foreach (var j in s.Jobs)
                if (j.Current?.Parties.Any(p => p.State is "training" or "uploading" or "done") == true) partiesSeen.TryAdd(j.JobId, 0);
        });
        await using var fed = await FederationFixture.Start(g, board: feed);
        await using var second = Actors.Nodes.FederationNode.Start(new Actors.Nodes.NodeOptions
        {
            Role = Actors.Nodes.NodeRole.Arbiter, Seeds = [fed.SeedAddress], DataDir = Path.Combine(g.Root, "arbiter-b"), Overrides = FederationFixture.FastCluster,
        });
        await second.WhenUp(Generous);
        // Jobs on shards of their own, until one lives on the second arbiter (new shards go to the region holding fewest).
        var extractor = new Actors.Nodes.JobMessageExtractor(Actors.Nodes.FederationNode.Reference().GetInt("fate-llm.sharding.job-shards"));
        var shards = new HashSet<string>();
        var submitted = new List<string>();
        string? onSecond = null;
        for (int i = 0; onSecond is null && submitted.Count < 4; i++)
        {
            var id = "two-arbiters-" + i;
            if (!shards.Add(extractor.ShardId(id))) continue;
            var done = await FederationFixture.RunToCompletion(fed, FederationFixture.Job(g, id, rounds: 1), Generous);
            Assert.Equal(JobState.Completed, done.State);
            submitted.Add(id);
            var state = await ClusterSharding.Get(second.System).ShardRegion(Actors.Nodes.FederationNode.JobRegionName)
                .Ask<CurrentShardRegionState>(GetShardRegionState.Instance, TimeSpan.FromSeconds(10));
            onSecond = state.Shards.SelectMany(sh => sh.EntityIds).FirstOrDefault(submitted.Contains);
        }
        Assert.True(onSecond is not null, $"none of {string.Join(", ", submitted)} was placed on the second arbiter");

        // The board's push lags by at most its publish interval.
        await AwaitBoard(feed, s => submitted.All(id => s.Jobs.Any(j => j.JobId == id && j.State == "completed")));
        var view = feed.Latest.Jobs.Single(j => j.JobId == onSecond);
        Assert.Equal(1, view.CompletedRounds);
        Assert.All(view.Rounds.Single().Outcomes, o => Assert.Equal("done", o.State));
        Assert.Contains(onSecond, (IEnumerable<string>)partiesSeen.Keys);
    }

    static async Task AwaitBoard(Actors.Board.BoardFeed feed, Func<Actors.Board.BoardSnapshot, bool> until)
    {
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watch = feed.Subscribe(s => { if (until(s)) reached.TrySetResult(); });
        if (until(feed.Latest)) return;
        try { await reached.Task.WaitAsync(TimeSpan.FromSeconds(10)); }
        catch (TimeoutException) { throw new TimeoutException($"the board never showed it; it shows {string.Join(", ", feed.Latest.Jobs.Select(j => $"{j.JobId} {j.State}"))}"); }
    }

    [Fact]
    public async Task A_job_runs_every_round_through_the_cluster_exports_a_peft_adapter_and_its_metrics_and_board_can_be_read()
    {
        // The web port an arbiter serves with --http 127.0.0.1:PORT: Prometheus metrics and the board's JSON.
        var feed = new Actors.Board.BoardFeed();
        var completed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watch = feed.Subscribe(s => { if (s.Jobs.Any(j => j.JobId == "happy" && j.State == "completed")) completed.TrySetResult(); });
        await using var web = await Host.Board.NodeWeb.Parse("127.0.0.1:0", null, null, null).StartAsync(feed, _ => { });
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g, board: feed);
        var spec = FederationFixture.Job(g, "happy", rounds: 2);
        var status = await FederationFixture.RunToCompletion(fed, spec, Generous);
        using (var http = new HttpClient { BaseAddress = web.Server!.Address })
        {
            var scrape = await http.GetStringAsync("metrics");
            const string job = "job=\"happy\"";
            Assert.Equal(2, Sample(scrape, "fatellm_rounds_completed_total", job));
            Assert.Equal(2, Sample(scrape, "fatellm_round_duration_seconds_count", job));
            Assert.Equal(2, Sample(scrape, "fatellm_round_stage_duration_seconds_count", job, "stage=\"collect\""));
            foreach (var org in FederationFixture.Orgs)
            {
                var party = $"party=\"{org}\"";
                Assert.Equal(status.Rounds.Sum(r => r.Parties.Single(p => p.Org == org).UploadBytes), Sample(scrape, "fatellm_transfer_up_bytes_total", job, party));
                Assert.Equal(2, Sample(scrape, "fatellm_party_train_duration_seconds_count", job, party));
            }
            // The board's snapshot lags the job by at most its publish interval.
            await completed.Task.WaitAsync(TimeSpan.FromSeconds(10)); // the board's push lags the job by at most its publish interval
            var board = System.Text.Json.JsonSerializer.Deserialize<Actors.Board.BoardSnapshot>(await http.GetStringAsync("api/board"), Host.Board.BoardServer.Json)!;
            var view = board.Jobs.Single(j => j.JobId == "happy");
            Assert.Equal([1, 2], view.Rounds.Select(r => r.Round));
            Assert.All(view.Rounds, r => Assert.Equal(3, r.Parties));
            Assert.Equal(status.Rounds.Sum(r => r.Parties.Sum(p => p.UploadBytes + p.DownloadBytes)), view.Rounds.Sum(r => r.Bytes));
            Assert.Equal(3, view.FinalEvaluation.Length);
            Assert.Contains(board.Members, m => m.Organization == "animal" && m.Reachable && m.Status == "Up");
            Assert.Contains(board.Events, e => e.Text.Contains("job happy: round 2 done"));
        }
        Assert.Equal(2, status.CompletedRounds);
        Assert.All(status.Rounds, r => Assert.All(r.Parties, p => Assert.True(p.Succeeded, p.Reason)));
        Assert.All(status.Rounds.SelectMany(r => r.Parties), p => Assert.True(p.UploadBytes > 0));
        Assert.Equal(3, status.FinalEvaluation.Length);
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_model.safetensors")));
        var lines = File.ReadAllLines(Path.Combine(spec.OutputDir, "rounds.jsonl")).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).ToList();
        Assert.Equal(2 * 3, lines.Count);
        // Where each party's seconds went; the base stays loaded on its node, so round 2 loads nothing.
        Assert.All(lines, l => Assert.Equal(["download", "eval", "hash", "load", "train"], l["seconds"]!.AsObject().Select(kv => kv.Key).Order()));
        Assert.All(lines.Where(l => (int)l["round"]! == 1), l => Assert.True((double)l["seconds"]!["load"]! > 0));
        Assert.All(lines.Where(l => (int)l["round"]! == 2), l => Assert.Equal(0.0, (double)l["seconds"]!["load"]!));
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "events.jsonl")));
        Assert.True(new FileInfo(Path.Combine(spec.OutputDir, "loss.png")).Length > 1000);
        // The merged checkpoint and the PEFT adapter give the same model.
        using var merged = Training.Models.HfCheckpoint.Load(Path.Combine(spec.OutputDir, "merged"));
        using var adapted = Training.Peft.AdapterFolder.Load(Path.Combine(spec.OutputDir, "adapter")).Model;
        var ids = TorchSharp.torch.randint(0, 256, [1, 8]);
        using (TorchSharp.torch.no_grad())
            Assert.True(TestSupport.MaxAbsDiff(merged.Forward(ids), adapted.Forward(ids)) < 1e-4);
        // Each organization's entity ran only on its own node.
        foreach (var (org, node) in fed.Parties)
        {
            var state = await node.PartyRegion.Ask<CurrentShardRegionState>(GetShardRegionState.Instance, TimeSpan.FromSeconds(5));
            Assert.Equal([org], state.Shards.SelectMany(s => s.EntityIds));
        }
    }
}

[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class FederationDeterminismSpec
{
    [Fact]
    public async Task Federated_fedavg_equals_an_in_process_reference_loop_with_the_same_seeds()
    {
        var g = FederationFixture.Prepare();
        var spec = FederationFixture.Job(g, "determinism", rounds: 2);
        await using (var fed = await FederationFixture.Start(g))
        {
            var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(120));

            // The same computation without actors, serializers or networks: init, local rounds, FedAvg by name.
            var global = FederatedComputation.InitialAdapter(spec, g.Model);
            var state = new Dictionary<string, Tensor>();
            for (int round = 1; round <= spec.Rounds; round++)
            {
                using var scope = NewDisposeScope();
                var deltas = spec.Parties.OrderBy(p => p.Org, StringComparer.Ordinal).Select(p =>
                {
                    var r = FederatedComputation.LocalRound(spec, g.Model, global, g.Datasets[p.Org]["train"], g.Datasets[p.Org]["dev"], round, default);
                    return new AdapterDelta(p.Org, SafeTensors.FromBytes(r.Delta), r.Samples);
                }).ToList();
                var outcome = spec.Strategy().Aggregate(SafeTensors.FromBytes(global), deltas, state);
                global = SafeTensors.ToBytes(outcome.Global);
                state = outcome.ServerState.ToDictionary(kv => kv.Key, kv => kv.Value.MoveToOuterDisposeScope());
            }
            Assert.Equal(BlobStore.Digest(global), status.GlobalDigest);

            // The plug-in driven by the Akka-free simulation gives the same bits as well.
            var parties = g.Datasets.Select(kv => new SimulatedParty(kv.Key, kv.Value)).ToList();
            var simulated = new FederatedSimulation(AlgorithmCatalog.BuiltIn.For(spec), spec with { OutputDir = Path.Combine(g.Root, "out-simulated") },
                g.Model, parties, Path.Combine(g.Root, "simulation")).Run();
            Assert.Equal(status.GlobalDigest, simulated.State.Get(AlgorithmState.Global));
        }
    }
}
