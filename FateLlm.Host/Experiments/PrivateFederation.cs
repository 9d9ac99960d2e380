using System.Diagnostics;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Privacy;

namespace FateLlm.Host.Experiments;

/// <summary>One federated LoRA run under secure aggregation and distributed DP, and how it scored.</summary>
public sealed record PrivateRunResult(double? NoiseMultiplier, double? Epsilon, double Delta, Scores Scores, JobStatus Status, string? Killed, double Seconds);

/// <summary>
/// The privacy demo and the ε-versus-quality sweep: five organizations (WordNet domains) over mutual TLS, SecAgg+
/// with distributed DP, optionally one party crashed in the middle of a round's secure aggregation.
/// </summary>
public sealed class PrivateFederation(ExperimentSettings s, Action<string> log, double clipNorm = 1.0)
{
    /// <summary>Five parties over the same domains as the three-party demo (none of them in the zoo's public corpus).</summary>
    public static readonly IReadOnlyDictionary<string, string[]> FiveParties = new Dictionary<string, string[]>
    {
        ["zoo"] = ["noun.animal"], ["garden"] = ["noun.plant"], ["workshop"] = ["noun.artifact"], ["kitchen"] = ["noun.food"],
        ["gym"] = ["verb.motion", "verb.contact"],
    };

    public async Task<List<PrivateRunResult>> RunAsync(IReadOnlyList<double?> noiseMultipliers, string? kill, IProgress<JobStatus>? progress)
    {
        Directory.CreateDirectory(s.OutDir);
        var split = WordNetCorpus.Write(WordNetCorpus.Read(s.WordNetDir), Path.Combine(s.OutDir, "data-5"), new WordNetSplitOptions
        {
            Parties = FiveParties, TrainPerParty = s.TrainPerParty, DevPerParty = s.DevPerParty, TestPerParty = s.TestPerParty, PublicLimit = 1,
        });
        var experiment = new PaperExperiment(s, log);
        var (basePath, _) = experiment.EnsureBase();
        var test = InstructionData.ReadJsonl(split.Test, PaperExperiment.Data);
        var datasets = PaperExperiment.Datasets(split);
        var results = new List<PrivateRunResult>();
        foreach (var z in noiseMultipliers)
        {
            // A fresh federation per run: a killed party must not stay dead for the next one.
            var crash = kill is null ? Config.Empty : ConfigurationFactory.ParseString(
                $"fate-llm.fault-injection.points = [{{ at = party.mask, org = \"{kill}\", round = {Math.Min(2, s.Rounds)}, action = terminate }}]");
            await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), datasets,
                crash.WithFallback(PaperExperiment.QuietCluster), tls: true, board: s.Board);
            log($"federation up over mutual TLS: seed {fed.SeedAddress}, parties {string.Join(", ", datasets.Keys)}");
            var sw = Stopwatch.StartNew();
            var spec = Spec(fed, basePath, z);
            var killed = kill;
            if (kill != null) log($"party '{kill}' will crash when asked for its masked input in round {Math.Min(2, s.Rounds)} (after sharing its keys)");
            if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {spec.JobId} rejected: {r.Reason}");
            var status = await fed.WaitAsync(spec.JobId, TimeSpan.FromHours(2), progress: progress);
            if (status.State != JobState.Completed) throw new InvalidOperationException($"job {spec.JobId}: {status.State}: {status.Reason}");
            var scores = experiment.Evaluate(basePath, Path.Combine(status.OutputDir!, "adapter"), test);
            results.Add(new PrivateRunResult(z, status.Epsilon, spec.Dp.Delta, scores, status, killed, sw.Elapsed.TotalSeconds));
            log($"z = {(z is null ? "no DP" : z.Value.ToString("G3"))}: ε = {(status.Epsilon is { } e ? e.ToString("F2") : "∞ (no DP)")}, ROUGE-L {scores.RougeL:F2}, loss {scores.Loss:F3}");
        }
        return results;
    }

    JobSpec Spec(LocalFederation fed, string basePath, double? z)
    {
        var id = $"private-{(z is null ? "nodp" : "z" + z.Value.ToString("G3"))}-{DateTime.UtcNow:HHmmssfff}";
        var spec = new PaperExperiment(s, log).Job(id, basePath, fed, "lora", s.Seeds[0]);
        return spec with
        {
            Round = spec.Round with { Quorum = 3 },
            SecureAggregation = spec.SecureAggregation with { Enabled = true, PhaseTimeoutSeconds = 30 },
            Dp = z is null ? spec.Dp : spec.Dp with
            {
                Mode = DpMode.Distributed, NoiseMultiplier = z.Value, ClipNorm = clipNorm, Delta = 1e-5, AdaptiveClip = true,
                ClipCountNoise = Math.Max(0.1, z.Value / 2 / 5 * 1.5),
            },
        };
    }
}
