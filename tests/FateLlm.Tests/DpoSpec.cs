using System.Text.Json;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms.Dpo;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

/// <summary>
/// DPO's loss and gradient against TRL's formulas written in PyTorch (tests/reference/make_dpo_fixtures.py), the
/// adapter-disabled reference against the base itself, response-only log-probabilities, preference data refusals,
/// and local training that learns the pairs.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class DpoSpec
{
    static readonly JsonElement Fixture = JsonDocument.Parse(File.ReadAllText(TestSupport.FixturePath("dpo", "loss.json"))).RootElement;

    static double[] Doubles(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetDouble())];

    [Fact]
    public void The_loss_its_gradient_and_the_rewards_match_the_reference_for_dpo_cdpo_and_ipo()
    {
        // By hand, the first pair at β = 0.1: logits = (−12.5 + 14) − (−13 + 13.5) = 1, loss = log(1 + e^−0.1) = 0.64440.
        Assert.Equal(Math.Log(1 + Math.Exp(-0.1)), Doubles(Fixture.GetProperty("cases")[0].GetProperty("losses"))[0], 12);
        foreach (var c in Fixture.GetProperty("cases").EnumerateArray())
        {
            using var scope = NewDisposeScope();
            var o = new DpoOptions(c.GetProperty("beta").GetDouble(), c.GetProperty("label_smoothing").GetDouble(),
                c.GetProperty("loss").GetString() == "ipo" ? PreferenceLoss.Ipo : PreferenceLoss.Sigmoid, 1, 1, 1e-3, 0);
            var pc = tensor(Doubles(Fixture.GetProperty("policy_chosen")), requires_grad: true);
            var pr = tensor(Doubles(Fixture.GetProperty("policy_rejected")), requires_grad: true);
            var t = PreferenceOptimization.Loss(pc, pr, tensor(Doubles(Fixture.GetProperty("reference_chosen"))), tensor(Doubles(Fixture.GetProperty("reference_rejected"))), o);
            var mean = t.Losses.mean();
            mean.backward();
            void Same(string key, Tensor actual)
            {
                var want = Doubles(c.GetProperty(key));
                var got = actual.data<double>().ToArray();
                for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(want[i] - got[i]) < 1e-12, $"{o.Loss} β {o.Beta}: {key}[{i}] {got[i]} vs {want[i]}");
            }
            Same("losses", t.Losses);
            Same("grad_chosen", pc.grad!);
            Same("grad_rejected", pr.grad!);
            Same("chosen_rewards", t.ChosenRewards);
            Same("rejected_rewards", t.RejectedRewards);
            Assert.Equal(c.GetProperty("mean").GetDouble(), mean.item<double>(), 12);
        }
    }

    static string TinyModel(int seed = 3)
    {
        var dir = Path.Combine(TestSupport.TempDir(), "model");
        using var m = CausalLm.Create(ModelPresets.Create("llama", "tiny"));
        m.InitializeWeights(seed);
        HfCheckpoint.Save(m, dir);
        ByteTokenizer.Save(dir);
        return dir;
    }

    static readonly PreferencePair[] Pairs =
    [
        new("word: fox", "a small wild dog", "a tall tree", "a:1"), new("word: oak", "a tall tree", "a small wild dog", "a:2"),
        new("word: cup", "a vessel to drink from", "a loud noise", "a:3"), new("word: drum", "a loud instrument", "a vessel to drink from", "a:4"),
    ];

    [Fact]
    public void The_reference_with_the_adapter_disabled_is_the_base_itself_and_only_response_tokens_count()
    {
        var dir = TinyModel();
        var data = new DataOptions();
        using var run = FineTuning.Open(dir, new PeftConfig { LoraDropout = 0 }, 1);
        // A trained-looking adapter: B away from zero, so the adapted model differs from its base.
        using (no_grad())
            foreach (var (_, p) in PeftModel.TrainableParameters(run.Model)) p.add_(randn_like(p).mul(0.05));
        var (chosen, rejected) = PreferenceOptimization.Tokenize(Pairs, run.Tokenizer, data);
        var pad = run.Tokenizer.PadId!.Value;
        var reference = PreferenceOptimization.Reference(run.Model, chosen, rejected, pad, 3, average: false, baseReference: true);
        var adapted = PreferenceOptimization.LogProbs(run.Model, chosen, pad, 3, average: false);
        using var plain = HfCheckpoint.Load(dir);
        var baseline = PreferenceOptimization.LogProbs(plain, chosen, pad, 3, average: false);
        for (int i = 0; i < Pairs.Length; i++)
        {
            Assert.True(Math.Abs(reference.Chosen[i] - baseline[i]) < 1e-4, $"pair {i}: {reference.Chosen[i]} vs base {baseline[i]}");
            Assert.True(Math.Abs(adapted[i] - baseline[i]) > 1e-3, $"pair {i}: the adapter changed nothing");
        }
        Assert.Equal(adapted, PreferenceOptimization.LogProbs(run.Model, chosen, pad, 3, average: false)); // enabled again
        // Response-only: the sum runs over the answer's bytes and EOS, and equals minus the summed cross-entropy there.
        using var scope = NewDisposeScope();
        var batch = InstructionData.Collate([chosen[0]], pad, CPU);
        using var _ = no_grad();
        plain.eval();
        var logits = plain.Forward(batch.InputIds);
        var labelled = batch.Labels.narrow(1, 1, batch.Labels.shape[1] - 1).ne(InstructionData.IgnoreIndex).sum().item<long>();
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(Pairs[0].Chosen) + 1, labelled);
        var summed = PreferenceOptimization.SequenceLogProbs(logits, batch.Labels, average: false).item<float>();
        Assert.Equal(-LanguageModelLoss.Shifted(logits, batch.Labels, nn.Reduction.Sum).item<float>(), summed, 3);
        Assert.Equal(summed / labelled, PreferenceOptimization.SequenceLogProbs(logits, batch.Labels, average: true).item<float>(), 4);
    }

    [Fact]
    public void Local_training_learns_its_pairs_from_the_base_reference()
    {
        var dir = TinyModel();
        using var run = FineTuning.Open(dir, new PeftConfig { LoraDropout = 0 }, 1);
        var r = PreferenceOptimization.Train(run.Model, run.Tokenizer, Pairs, new DataOptions(), new DpoOptions(0.5, 0, PreferenceLoss.Sigmoid, 15, 2, 1e-2, 7), baseReference: true);
        Assert.Equal(30, r.Steps);
        Assert.True(r.LastLoss < r.FirstLoss, $"loss {r.FirstLoss} → {r.LastLoss}");
        Assert.Equal(Math.Log(2), r.FirstLoss, 3); // the policy starts at the reference: every margin is 0
        Assert.Equal(1.0, r.After.Accuracy);
        Assert.True(r.After.Margin > 0 && r.After.ChosenDrift > r.After.RejectedDrift, $"{r.After}");
    }

    [Fact]
    public void Preference_files_and_settings_are_refused_naming_the_line_column_or_field()
    {
        var dir = TestSupport.TempDir();
        var file = Path.Combine(dir, "prefs.jsonl");
        File.WriteAllLines(file, ["{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}", "{\"prompt\": \"a\", \"chosen\": \"b\"}"]);
        Assert.Equal($"{file}:2: column 'rejected' is missing or empty (columns: prompt, chosen)",
            Assert.Throws<DataFormatException>(() => PreferenceData.Read(file, "prompt", "chosen", "rejected")).Message);
        File.WriteAllLines(file, ["{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"b\"}"]);
        Assert.Contains($"{file}:1: the chosen and the rejected answer are the same", Assert.Throws<DataFormatException>(() => PreferenceData.Read(file, "prompt", "chosen", "rejected")).Message);
        var spec = Job("d", "m", "out");
        JobSpecException Refusal(Dictionary<string, string> settings, Func<JobSpec, JobSpec>? change = null) => Assert.Throws<JobSpecException>(() =>
            new DpoAlgorithm().Validate((change ?? (s => s))(spec with { Algorithm = JobFile.Algorithm(DpoAlgorithm.AlgorithmName, settings) })));
        Assert.Contains("job.algorithm.loss = 'kto' is not one of sigmoid, ipo", Refusal(new() { ["loss"] = "kto" }).Message);
        Assert.Contains("beta must be a positive number", Refusal(new() { ["beta"] = "0" }).Message);
        Assert.Contains("label-smoothing applies to the sigmoid loss", Refusal(new() { ["loss"] = "ipo", ["label-smoothing"] = "0.1" }).Message);
        Assert.Contains("job.algorithm.reference = 'sft' is not one of base, round-start", Refusal(new() { ["reference"] = "sft" }).Message);
        Assert.Contains("dpo trains a LoRA policy", Refusal(new(), s => s with { Peft = s.Peft with { Method = PeftMethod.PtuningV2 } }).Message);
        // The example job loads and validates, its settings and defaults included.
        var example = JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "dpo.conf")));
        Assert.Equal(new DpoAlgorithm.Settings(0.1, 0, PreferenceLoss.Sigmoid, true, "prompt", "chosen", "rejected"), DpoAlgorithm.Settings.Of(example));
    }

    [Fact]
    public void WordNet_preferences_reject_a_siblings_gloss_over_the_experiments_own_synsets_reproducibly()
    {
        var synsets = WordNetCorpus.Read();
        var o = new WordNetSplitOptions { TrainPerParty = 200, DevPerParty = 20, TestPerParty = 30 };
        var a = WordNetPreferences.Write(synsets, TestSupport.TempDir(), o);
        var b = WordNetPreferences.Write(synsets, TestSupport.TempDir(), o);
        Assert.Equal(File.ReadAllLines(a.Test), File.ReadAllLines(b.Test));
        var split = WordNetCorpus.Write(synsets, TestSupport.TempDir(), o);
        var test = PreferenceData.Read(a.Test, "prompt", "chosen", "rejected");
        Assert.Equal(InstructionData.ReadJsonl(split.Test, new DataOptions()).Select(e => (e.Prompt, e.Response)), test.Select(p => (p.Prompt, p.Chosen)));
        Assert.All(a.Parties.Values, f => Assert.Equal(200, PreferenceData.Read(f.Train, "prompt", "chosen", "rejected").Count));
        // Most negatives are siblings under the same hypernym: a hard choice, not a random gloss.
        Assert.True(a.Negatives["sibling"] > 3 * (a.Negatives["homograph"] + a.Negatives["domain"]), string.Join(", ", a.Negatives));
        var bySense = synsets.Where(s => s.HypernymOffsets.Length > 0).ToLookup(s => s.Definition);
        var first = System.Text.Json.Nodes.JsonNode.Parse(File.ReadLines(a.Test).First(l => l.Contains("\"sibling\"")))!;
        var chosen = bySense[first["chosen"]!.GetValue<string>()].First();
        Assert.Contains(bySense[first["rejected"]!.GetValue<string>()], s => s.HypernymOffsets[0] == chosen.HypernymOffsets[0] && s.Pos == chosen.Pos);
    }

    [Fact]
    public void The_dpo_experiments_report_checks_federated_against_every_setting_on_the_same_pairs()
    {
        const int n = 60;
        Host.Experiments.PreferenceRun Run(string setting, int seed, int correct, double margin)
        {
            double[] acc = [.. Enumerable.Range(0, n).Select(i => (i * 37 + seed) % 100 < correct ? 100.0 : 0.0)];
            return new(setting, seed, acc, [.. Enumerable.Range(0, n).Select(i => margin + (i % 3) * 0.01)], ExperimentReportSpec.Scores(20 + correct / 10.0, seed), 1);
        }
        var runs = new List<Host.Experiments.PreferenceRun> { Run(Host.Experiments.DpoExperiment.Sft, 0, 50, 0) };
        foreach (var seed in new[] { 1, 2 })
            runs.AddRange([Run("local:nature", seed, 60, 0.2), Run(Host.Experiments.DpoExperiment.Centralized, seed, 80, 0.5), Run(Host.Experiments.DpoExperiment.Federated, seed, 80, 0.4)]);
        var card = new Training.Zoo.ZooCard("base", "d", "llama", 1000, 4, 64, "sentencepiece-bpe", 4000, "digest", 100, 10, 5, 4, 1e-3, 42, 2, 60, 1000, 3, 20, 1.5, "f", DateTime.UtcNow);
        var md = Host.Experiments.DpoExperiment.Markdown(new Host.Experiments.DpoResult(new Host.Experiments.ExperimentSettings { OutDir = "x", Seeds = [1, 2] },
            new Host.Experiments.DpoExperimentOptions(), card, new Dictionary<string, int> { ["sibling"] = 50, ["homograph"] = 10 }, runs, 60));
        Assert.Contains("| SFT (no DPO) | 1 | 50.", md);
        Assert.True(System.Text.RegularExpressions.Regex.IsMatch(md, @"\| preference accuracy % \| local:nature \| 2\d\.\d\d \[[\d.]+, [\d.]+\] \| above \| holds \|"), md);
        Assert.Matches(@"\| preference accuracy % \| centralized \| 0\.00 \[0\.00, 0\.00\] \| within 1 point \| holds \|", md);
        Assert.Contains("50 sibling, 10 homograph", md);
    }

    internal static JobSpec Job(string id, string model, string output) =>
        JobFile.Default(id, model, [new PartySpec("a", "prefs", "prefs-dev"), new PartySpec("b", "prefs", "prefs-dev"), new PartySpec("c", "prefs", "prefs-dev")], output);
}

/// <summary>A federated DPO job through the in-process cluster under secure aggregation, with a party's node killed mid-round.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class DpoFederationSpec
{
    [Fact]
    public async Task A_secure_dpo_job_completes_without_the_party_killed_in_round_2_and_reports_preference_accuracy()
    {
        var g = FederationFixture.Prepare();
        string[][] answers = [["a small wild dog", "a tall tree"], ["a vessel to drink from", "a loud noise"], ["a kind of fruit", "a kind of boat"]];
        foreach (var (org, i) in FederationFixture.Orgs.Select((o, i) => (o, i)))
        {
            var prefs = Path.Combine(g.Root, $"{org}-prefs.jsonl");
            File.WriteAllLines(prefs, Enumerable.Range(0, 6).Select(k =>
                JsonSerializer.Serialize(new { prompt = $"word: {org} {k}", chosen = answers[i][k % 2], rejected = answers[(i + 1) % 3][k % 2] })));
            g.Datasets[org] = new Dictionary<string, string>(g.Datasets[org]) { ["prefs"] = prefs };
        }
        var kill = Akka.Configuration.ConfigurationFactory.ParseString("fate-llm.fault-injection.points = [{ at = party.fit, org = food, round = 2, action = terminate }]");
        await using var fed = await FederationFixture.Start(g, kill);
        var spec = FederationFixture.Secure(FederationFixture.Job(g, "dpo", rounds: 2, quorum: 2), 30);
        spec = spec with
        {
            Parties = [.. FederationFixture.Orgs.Select(o => new PartySpec(o, "prefs", "prefs"))],
            Algorithm = JobFile.Algorithm(DpoAlgorithm.AlgorithmName, new Dictionary<string, string> { ["beta"] = "0.5" }),
            Local = spec.Local with { Epochs = 3, BatchSize = 3 },
        };

        var status = await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(180));

        Assert.All(status.Rounds[0].Parties, p => Assert.True(p.Succeeded, p.Reason));
        Assert.Equal(["animal", "artifact"], status.Rounds[1].Parties.Where(p => p.Succeeded).Select(p => p.Org).Order());
        Assert.NotNull(status.Rounds[1].SecureAggregation);
        Assert.All(status.Rounds.SelectMany(r => r.Parties).Where(p => p.Succeeded), p =>
        {
            Assert.InRange(p.Metrics["dpo.accuracy"], 0, 1);
            Assert.True(p.LastLoss < p.FirstLoss, $"{p.Org}: loss {p.FirstLoss} → {p.LastLoss}");
        });
        Assert.Equal(["animal", "artifact"], status.FinalEvaluation.Select(e => e.Org));
        Assert.All(status.FinalEvaluation, e =>
        {
            var preference = Assert.Single(e.Tasks, t => t.Task == DpoAlgorithm.PreferenceTask);
            Assert.Equal(6, preference.Documents);
            Assert.True(preference.Metrics["margin"] > 0, $"{e.Org}: margin {preference.Metrics["margin"]}");
        });
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "adapter", "adapter_model.safetensors")));
    }
}
