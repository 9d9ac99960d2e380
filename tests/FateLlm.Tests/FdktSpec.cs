using System.Text;
using System.Text.Json.Nodes;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.Fdkt;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy;
using Xunit;

namespace FateLlm.Tests;

/// <summary>FDKT's pieces without a model: the synthetic-data codec, k-means, the text format, the filter, the settings.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class FdktSpec
{
    static readonly SyntheticBounds Bounds = new(MaxExamples: 4, MaxCategories: 2, MaxChars: 40);

    static UpdateCheck Check(byte[] upload, SyntheticBounds? bounds = null)
    {
        var b = bounds ?? Bounds;
        var instruction = PartyInstruction.Of(new Dictionary<string, string>(), new Dictionary<string, string>
        {
            ["max-examples"] = b.MaxExamples.ToString(), ["max-categories"] = b.MaxCategories.ToString(), ["max-chars"] = b.MaxChars.ToString(),
        });
        var exchange = Exchange.Broadcast(FdktAlgorithm.SynthesizePhase, ["acme"], instruction);
        return new FdktAlgorithm().Codec.Check(new UpdateCheckContext(exchange, "acme", new UpdateLimits { MaxNorm = 1, MaxBytes = 1 << 20 }, null), upload);
    }

    static byte[] Lines(params string[] lines) => Encoding.UTF8.GetBytes(string.Join("\n", lines) + "\n");
    static string Line(string category, string prompt, string response) =>
        new JsonObject { ["category"] = category, ["prompt"] = prompt, ["response"] = response }.ToJsonString();

    [Fact]
    public void The_codec_accepts_a_bounded_upload_and_refuses_non_utf8_oversize_and_malformed_ones_naming_the_party_and_line()
    {
        var ok = Check(Lines(Line("noun.animal", "word: ox", "a bovine"), Line("noun.plant", "word: oak", "a tree")));
        Assert.Null(ok.Problem);
        Assert.Equal(["word: ox", "word: oak"], ((IReadOnlyList<SyntheticExample>)ok.Parsed!).Select(e => e.Prompt));

        var notUtf8 = Lines(Line("noun.animal", "word: ox", "a bovine")).Concat(new byte[] { 0xFF, 0xFE, (byte)'\n' }).ToArray();
        Assert.Contains("party 'acme' synthetic upload: not UTF-8 text (invalid byte 0xFF", Check(notUtf8).Problem);
        var oversize = new byte[Bounds.MaxBytes + 1];
        Array.Fill(oversize, (byte)' ');
        Assert.Contains($"party 'acme' synthetic upload: {oversize.Length:N0} bytes, more than 4 examples of at most 40 characters", Check(oversize).Problem);
        // The arbiter asks for at most that many bytes before pulling.
        Assert.Equal(Bounds.MaxBytes, new FdktAlgorithm().Codec.MaxBytes(Exchange.Broadcast(FdktAlgorithm.SynthesizePhase, ["acme"], PartyInstruction.Of(
            new Dictionary<string, string>(), new Dictionary<string, string> { ["max-examples"] = "4", ["max-categories"] = "2", ["max-chars"] = "40" })),
            new UpdateLimits { MaxNorm = 1, MaxBytes = 1 << 30 }));

        Assert.Contains("upload:3: field 'response' has 41 characters, more than 40",
            Check(Lines(Line("a", "p", "r"), Line("a", "p", "r"), Line("a", "p", new string('x', 41)))).Problem);
        Assert.Contains("upload:5: more than 4 examples", Check(Lines(Enumerable.Repeat(Line("a", "p", "r"), 5).ToArray())).Problem);
        Assert.Contains("upload:3: more than 2 categories", Check(Lines(Line("a", "p", "r"), Line("b", "p", "r"), Line("c", "p", "r"))).Problem);
        Assert.Contains("upload:1: not a JSON object", Check(Lines("[1, 2]")).Problem);
        Assert.Contains("upload:1: field 'prompt' must be a string", Check(Lines("""{"category":"a","prompt":3,"response":"r"}""")).Problem);
        Assert.Contains("upload:1: field 'prompt' is empty", Check(Lines(Line("a", " ", "r"))).Problem);
        Assert.Contains("upload:1: field 'response' holds control characters", Check(Lines(Line("a", "p", "r\u0007"))).Problem);
    }

    [Fact]
    public void The_fine_tune_exchange_takes_only_the_acknowledgement()
    {
        var exchange = Exchange.Broadcast(FdktAlgorithm.FineTunePhase, ["acme"], PartyInstruction.Of(new Dictionary<string, string>()));
        var codec = new FdktAlgorithm().Codec;
        var limits = new UpdateLimits { MaxNorm = 1, MaxBytes = 1 << 20 };
        Assert.Equal(4, codec.MaxBytes(exchange, limits));
        Assert.Null(codec.Check(new UpdateCheckContext(exchange, "acme", limits, null), "FDK1"u8.ToArray()).Problem);
        Assert.Contains("party 'acme' answered the 'fine-tune' exchange with 5 unexpected bytes",
            codec.Check(new UpdateCheckContext(exchange, "acme", limits, null), "hello"u8.ToArray()).Problem);
    }

    [Fact]
    public void K_means_separates_distant_groups_keeps_k_clusters_and_is_the_same_for_a_seed()
    {
        var rng = new Random(5);
        var centres = new[] { (0f, 0f), (10f, 0f), (0f, 10f) };
        var points = Enumerable.Range(0, 60).Select(i => new[] { centres[i % 3].Item1 + (float)rng.NextDouble(), centres[i % 3].Item2 + (float)rng.NextDouble() }).ToList();
        var a = KMeans.Cluster(points, 3, seed: 11);
        Assert.Equal(a, KMeans.Cluster(points, 3, seed: 11));
        // Points of one group share a cluster and the groups do not.
        var byGroup = Enumerable.Range(0, 3).Select(g => Enumerable.Range(0, 60).Where(i => i % 3 == g).Select(i => a[i]).Distinct().Single()).ToList();
        Assert.Equal(3, byGroup.Distinct().Count());
        // More clusters than groups: still k non-empty clusters.
        Assert.Equal(7, KMeans.Cluster(points, 7, seed: 2).Distinct().Count());
        Assert.Throws<ArgumentOutOfRangeException>(() => KMeans.Cluster(points, 61, seed: 2));
    }

    [Fact]
    public void The_filter_keeps_the_likeliest_share_of_each_cluster_rounded_up()
    {
        int[] clusters = [0, 0, 0, 1, 1, 2];
        double[] scores = [-1, -3, -2, -5, -4, -9];
        Assert.Equal([0, 2, 4, 5], DomainTransfer.Filter(clusters, scores, 0.5));
        Assert.Equal(Enumerable.Range(0, 6), DomainTransfer.Filter(clusters, scores, 1.0));
    }

    [Fact]
    public void The_judge_filter_keeps_the_examples_whose_numbers_the_llm_names_per_cluster()
    {
        var examples = Enumerable.Range(0, 5).Select(i => new SyntheticExample(i < 3 ? "noun.animal" : "noun.plant", $"word: w{i}", $"gloss {i}\nmore")).ToList();
        int[] clusters = [1, 0, 1, 0, 1];
        var asked = new List<string>();
        var kept = DomainTransfer.Judge(prompts => { asked.AddRange(prompts); return ["The eligible samples: 1, 7", "The eligible samples: 0 and 2. Also 2."]; },
            clusters, examples, "{category}|{examples}", " => ");
        // Cluster 0 holds examples 1 and 3, cluster 1 holds 0, 2 and 4; a number past the cluster is ignored.
        Assert.Equal(["noun.animal, noun.plant|0. word: w1 => gloss 1 more\n1. word: w3 => gloss 3 more", "noun.animal, noun.plant|0. word: w0 => gloss 0 more\n1. word: w2 => gloss 2 more\n2. word: w4 => gloss 4 more"], asked);
        Assert.Equal([0, 3, 4], kept);
    }

    [Fact]
    public void A_synthetic_text_parses_back_into_prompt_and_response_and_a_text_without_the_separator_does_not()
    {
        var format = new SynthesisFormat("category: {category}", " => ");
        var e = new SyntheticExample("noun.animal", "word: ox | pos: noun", "a bovine");
        var training = format.Training(e, "x");
        Assert.Equal("category: noun.animal", training.Prompt);
        Assert.Equal(e, format.Parse("noun.animal", training.Response));
        e = e with { Prompt = "word: ox" };
        Assert.Null(format.Parse("noun.animal", "word: ox a bovine"));
        Assert.Null(format.Parse("noun.animal", "word: ox =>  "));
        // Augmentation: the LLM answers each kept example's rendered prompt, and its answer is the new response.
        var seeds = new[] { e, e with { Prompt = "word: yak" }, e with { Category = "noun.plant", Prompt = "word: oak" } };
        var asked = new List<string>();
        var written = DomainTransfer.Augment(prompts => { asked.AddRange(prompts); return prompts.Select((_, i) => i == 1 ? "  " : $"answer {i}").ToArray(); },
            seeds, 4, "{category}|{prompt}|{shots}", 1, " => ");
        Assert.Equal(["noun.animal|word: ox|word: yak => a bovine", "noun.animal|word: yak|word: ox => a bovine", "noun.plant|word: oak|", "noun.animal|word: ox|word: yak => a bovine"], asked);
        Assert.Equal(["word: ox", "word: oak", "word: ox"], written.Select(w => w.Prompt)); // the empty answer is dropped
    }

    [Fact]
    public void Settings_refuse_what_fdkt_cannot_run_naming_the_field()
    {
        var g = FederationFixture.Prepare();
        JobSpec With(params (string Key, string Value)[] values) => FederationFixture.Job(g, "fdkt-settings") with
        {
            Algorithm = JobFile.Algorithm(FdktAlgorithm.AlgorithmName, values.ToDictionary(v => v.Key, v => v.Value)),
        };
        var fdkt = new FdktAlgorithm();
        Assert.Contains("job.algorithm.party-models.animal: party 'animal' needs its small model", Assert.Throws<JobSpecException>(() => fdkt.Validate(With())).Message);
        Assert.Contains("must contain {category}", Assert.Throws<JobSpecException>(() => fdkt.Validate(With(("party-model", "m"), ("synthesis-template", "write:")))).Message);
        Assert.Contains("job.algorithm.filter-keep = 0 must be in (0, 1]", Assert.Throws<JobSpecException>(() => fdkt.Validate(With(("party-model", "m"), ("filter-keep", "0")))).Message);
        Assert.Contains("job.algorithm.fine-tune-data = 'mine'", Assert.Throws<JobSpecException>(() => fdkt.Validate(With(("party-model", "m"), ("fine-tune-data", "mine")))).Message);
        Assert.Contains("job.algorithm.filter = 'best'", Assert.Throws<JobSpecException>(() => fdkt.Validate(With(("party-model", "m"), ("filter", "best")))).Message);
        Assert.Contains("judge-template must contain {examples}",
            Assert.Throws<JobSpecException>(() => fdkt.Validate(With(("party-model", "m"), ("filter", "judge"), ("judge-template", "Which?")))).Message);
        Assert.Contains("did you mean 'samples-per-cluster'", Assert.Throws<JobSpecException>(() => fdkt.Validate(With(("party-model", "m"), ("sample-per-cluster", "3")))).Message);
        fdkt.Validate(With(("party-model", "m"), ("party-models.food", "other")));

        // The example job validates as a whole and takes reference.conf's defaults exactly (the separator is a newline).
        var example = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "fdkt.conf")));
        JobSpecValidation.Validate(example, "fdkt.conf", AlgorithmCatalog.BuiltIn);
        var settings = FdktAlgorithm.Settings.Of(example);
        Assert.Equal(("slm-llama", "\n", "domain", 64, 128), (settings.Models["globex"], settings.Format.Separator, settings.CategoryColumn, settings.PerCategory, settings.AugmentedPerParty));
        Assert.Empty(settings.Categories);
        Assert.True(example.Local.DpSgd.Enabled);
        Assert.Equal(3, example.Local.DpSgd.TargetEpsilon);
    }
}

/// <summary>FDKT end to end on tiny models: in process (numerics, DP accounting, resending) and through the cluster.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class FdktSimulationSpec
{
    /// <summary>The fixture's parties with a category column (two per party), an fdkt job over them, its small model.</summary>
    internal static (FederationFixture.Ground Ground, JobSpec Spec) Ground(string id, bool dp)
    {
        var g = FederationFixture.Prepare();
        foreach (var (org, files) in g.Datasets)
            foreach (var path in files.Values)
                File.WriteAllLines(path, File.ReadAllLines(path).Where(l => l.Trim().Length > 0).Select((l, i) =>
                {
                    var o = JsonNode.Parse(l)!.AsObject();
                    o["domain"] = $"{org}.{(i % 2 == 0 ? "even" : "odd")}";
                    return o.ToJsonString();
                }));
        var small = FedMktFederationSpec.SmallModel(g.Root, "slm-bytes", "llama", null);
        var spec = FederationFixture.Job(g, id, rounds: 1, quorum: 3, deadlineSeconds: 90, epochs: 20);
        spec = spec with
        {
            Algorithm = JobFile.Algorithm(FdktAlgorithm.AlgorithmName, new Dictionary<string, string>
            {
                ["party-model"] = small, ["synthetic-per-category"] = "4", ["samples-per-cluster"] = "3", ["augmented-per-party"] = "3",
                ["separator"] = " ", ["slm-generation.max-new-tokens"] = "24", ["llm-generation.max-new-tokens"] = "12", ["slm-generation.temperature"] = "0",
            }),
            Local = spec.Local with { LearningRate = 3e-2, DpSgd = spec.Local.DpSgd with { Enabled = dp, TargetEpsilon = dp ? 8 : null, ClipNorm = 1.0 } },
        };
        return (g, spec);
    }

    [Fact]
    public void A_round_synthesizes_under_dp_sgd_clusters_filters_augments_and_fine_tunes_and_a_party_asked_again_resends_without_spending_epsilon()
    {
        var (g, spec) = Ground("fdkt-sim", dp: true);
        var root = Path.Combine(g.Root, "simulation");
        var algorithm = AlgorithmCatalog.BuiltIn.For(spec);
        var result = new FederatedSimulation(algorithm, spec, g.Model, g.Datasets.Select(kv => new SimulatedParty(kv.Key, kv.Value)).ToList(), root).Run();

        var synthesis = result.Fits.Where(f => f.Phase == 1).ToList();
        Assert.Equal(3, synthesis.Count);
        Assert.All(synthesis, f =>
        {
            Assert.True(f.Update is not null, f.Dropped);
            // Under DP-SGD the party reports its ε (within the target) and no loss on its own examples.
            Assert.InRange(f.Update!.Metrics["dpsgd.epsilon"], 0.01, 8.0 * (1 + 1e-6));
            Assert.DoesNotContain(ClientUpdate.FirstLoss, f.Update.Metrics.Keys);
            // Two categories of four samples each: every sample is either uploaded or counted as unparsed.
            Assert.Equal(2, f.Update.Metrics["fdkt.categories"]);
            Assert.Equal(8, f.Update.Metrics["fdkt.synthetic"] + f.Update.Metrics["fdkt.unparsed"]);
        });
        Assert.All(result.Fits.Where(f => f.Phase == 2), f => Assert.True(f.Update is not null, f.Dropped));
        var step = result.Steps[0];
        var synthetic = synthesis.Sum(f => f.Update!.Metrics["fdkt.synthetic"]);
        Assert.Equal(synthetic, step.Metrics["fdkt.synthetic"]);
        Assert.True(synthetic > 0, "the small models wrote no parseable example");
        Assert.Equal(Math.Ceiling(synthetic / 3), step.Metrics["fdkt.clusters"]);
        Assert.InRange(step.Metrics["fdkt.kept"], Math.Ceiling(synthetic / 2), synthetic);
        // The arbiter's outputs: each party's synthetic and augmented sets and the report, all well-formed text.
        var dir = Path.Combine(spec.OutputDir, "fdkt");
        Assert.True(File.Exists(Path.Combine(dir, "report.json")));
        foreach (var org in FederationFixture.Orgs)
        {
            var set = SyntheticData.Parse(File.ReadAllBytes(Path.Combine(dir, $"augmented-{org}.jsonl")), new SyntheticBounds(3, 16, 600), org);
            Assert.All(set, e => Assert.StartsWith(org + ".", e.Category));
        }
        // Each party's final evaluation ran on its own fine-tuned small model.
        Assert.Equal(3, result.Evaluation.Count);

        // Asked again for round 1 (a lost upload): the same bytes from its workspace, and its DP-SGD ledger unchanged.
        var party = g.Datasets.First();
        var workspace = Path.Combine(root, "party-" + party.Key, "work", spec.JobId);
        var ledger = File.ReadAllText(Path.Combine(workspace, DpSgdLedger.File));
        var first = File.ReadAllBytes(FdktAlgorithm.WorkspaceFile(workspace, 1, FdktAlgorithm.SyntheticSet));
        var context = new ClientContext(spec, party.Key, 1, 2, 1, g.Model, party.Value["train"], party.Value["dev"], workspace);
        var again = algorithm.Client.Fit(context, FdktAlgorithm.SynthesizePhase, PartyInstruction.Of(new Dictionary<string, string>()), new Dictionary<string, string>(), default);
        Assert.Equal(first, again.Update);
        Assert.Equal(1, again.Metrics["fdkt.resent"]);
        // The re-sent release reports the ε already spent on it, not a new charge.
        Assert.Equal(synthesis.Single(f => f.Party == party.Key).Update!.Metrics["dpsgd.epsilon"], again.Metrics["dpsgd.epsilon"], 9);
        Assert.Equal(ledger, File.ReadAllText(Path.Combine(workspace, DpSgdLedger.File)));
    }
}

/// <summary>FDKT through the in-process cluster, with a party's node killed during its synthetic upload.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public sealed class FdktFederationSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromMinutes(4);

    [Fact]
    public async Task A_party_killed_during_its_synthetic_upload_comes_back_resends_the_same_set_and_the_job_completes()
    {
        var (g, spec) = FdktSimulationSpec.Ground("fdkt-crash", dp: true);
        var crash = ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.offer, org = food, round = 1, phase = 1, action = terminate }]");
        await using var fed = await FederationFixture.Start(g, crash);
        Assert.IsType<Actors.Jobs.JobAccepted>(await fed.SubmitAsync(spec));
        await fed.Parties["food"].System.WhenTerminated.WaitAsync(Generous);
        await fed.CrashParty("food");
        // Its synthetic set was made and kept before the node died; the restarted node (no crash point) sends it.
        var workspace = Directory.GetDirectories(Path.Combine(g.Root, "nodes", "party-food"), spec.JobId, SearchOption.AllDirectories).Single();
        var made = File.ReadAllBytes(FdktAlgorithm.WorkspaceFile(workspace, 1, FdktAlgorithm.SyntheticSet));
        var ledger = File.ReadAllText(Path.Combine(workspace, DpSgdLedger.File));
        fed.StartParty("food", overrides: FederationFixture.FastCluster);
        var status = await fed.WaitAsync(spec.JobId, Generous);

        Assert.True(status.State == Actors.Jobs.JobState.Completed, status.Reason);
        var round = status.Rounds.Single();
        Assert.All(round.Parties, p => Assert.True(p.Succeeded, $"{p.Org}: {p.Reason}"));
        var food = round.Parties.Single(p => p.Org == "food");
        Assert.Equal(1, food.Metrics["fdkt.resent"]);
        Assert.InRange(food.Metrics["dpsgd.epsilon"], 0.01, 8.0 * (1 + 1e-6));
        Assert.Equal(made, File.ReadAllBytes(Path.Combine(status.OutputDir!, "fdkt", "synthetic-food.jsonl")));
        Assert.Equal(ledger, File.ReadAllText(Path.Combine(workspace, DpSgdLedger.File)));
        Assert.All(FederationFixture.Orgs, o => Assert.True(File.Exists(Path.Combine(status.OutputDir!, "fdkt", $"augmented-{o}.jsonl"))));
    }
}
