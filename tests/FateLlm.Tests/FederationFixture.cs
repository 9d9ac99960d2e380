using Akka.Actor;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Federation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Models;

namespace FateLlm.Tests;

/// <summary>A tiny model, the demo corpus split by domain, and short cluster timings: the ground for federation specs.</summary>
internal static class FederationFixture
{
    /// <summary>reference.conf's failure detector and split-brain timing, for specs whose parties train flat out for minutes.</summary>
    public static readonly Config LoadTolerant = ConfigurationFactory.ParseString("""
        akka.cluster.failure-detector.acceptable-heartbeat-pause = 10s
        akka.cluster.failure-detector.threshold = 12.0
        akka.cluster.split-brain-resolver.stable-after = 20s
        """);

    public static readonly Config FastCluster = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        fate-llm.logging.console-level = off
        akka.cluster.gossip-interval = 250ms
        akka.cluster.leader-actions-interval = 250ms
        akka.cluster.failure-detector.heartbeat-interval = 300ms
        akka.cluster.failure-detector.acceptable-heartbeat-pause = 5s
        akka.cluster.failure-detector.threshold = 8.0
        akka.cluster.split-brain-resolver.stable-after = 2s
        akka.cluster.sharding.retry-interval = 200ms
        akka.remote.retry-gate-closed-for = 1s
        fate-llm.round.resend-interval = 500ms
        fate-llm.round.absent-grace = 10s
        fate-llm.transfer.chunk-timeout = 1s
        fate-llm.transfer.chunk-size = 16KiB
        fate-llm.party.duplicate-grace = 3s
        """);

    public static readonly string[] Orgs = ["animal", "artifact", "food"];

    public sealed record Ground(string Root, string Model, Dictionary<string, IReadOnlyDictionary<string, string>> Datasets);

    public static Ground Prepare(string? root = null)
    {
        root ??= TestSupport.TempDir();
        var model = Path.Combine(root, "model");
        var m = CausalLm.Create(ModelPresets.Create("llama", "tiny"));
        m.InitializeWeights(3);
        HfCheckpoint.Save(m, model);
        Training.Tokenization.ByteTokenizer.Save(model);
        var (parties, _) = DemoCorpus.Write(Path.Combine(root, "data"));
        var datasets = parties.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, string>)new Dictionary<string, string>
        {
            ["train"] = kv.Value.Train, ["dev"] = kv.Value.Dev,
        });
        return new Ground(root, model, datasets);
    }

    /// <summary>A LoRA job over the three domain parties, with the shapes and rates every federation spec has used (constant schedule).</summary>
    public static JobSpec Job(Ground g, string id, int rounds = 2, int quorum = 3, double deadlineSeconds = 60, int attempts = 2, int epochs = 1)
    {
        var spec = JobFile.Default(id, g.Model, Orgs.Select(o => new PartySpec(o, "train", "dev")).ToArray(), Path.Combine(g.Root, "out-" + id));
        return spec with
        {
            Rounds = rounds,
            Round = spec.Round with { Quorum = quorum, DeadlineSeconds = deadlineSeconds, MaxAttempts = attempts },
            Peft = spec.Peft with { LoraR = 4, LoraDropout = 0 },
            Local = spec.Local with { Epochs = epochs, BatchSize = 8, LearningRate = 5e-3, Schedule = Training.Trainer.LrSchedule.Constant },
            Evaluation = new EvaluationOptions(4, 8),
            Data = new Training.Data.DataOptions { MaxPromptTokens = 128, MaxResponseTokens = 128, MaxTotalTokens = 96 },
        };
    }

    /// <summary>
    /// The same job run by the echo plug-in: instant fits that load no CPU, for specs about orchestration (crashes,
    /// dropouts, retries, membership) rather than training, so their timing does not depend on how fast this machine trains.
    /// </summary>
    public static JobSpec Echo(JobSpec spec, int exchanges = 1) => spec with
    {
        Algorithm = new AlgorithmSpec(Plugins.EchoAlgorithm.AlgorithmName, new Dictionary<string, string> { ["exchanges"] = exchanges.ToString() }),
    };

    public static JobSpec Secure(JobSpec spec, double phaseTimeoutSeconds) =>
        spec with { SecureAggregation = spec.SecureAggregation with { Enabled = true, PhaseTimeoutSeconds = phaseTimeoutSeconds } };

    /// <summary>Submits a job, waits for it to end, and asserts it was accepted and completed.</summary>
    public static async Task<JobStatus> RunToCompletion(LocalFederation fed, JobSpec spec, TimeSpan timeout)
    {
        Xunit.Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        var status = await fed.WaitAsync(spec.JobId, timeout);
        Xunit.Assert.True(status.State == JobState.Completed, status.Reason);
        return status;
    }

    /// <summary>
    /// Completes when <paramref name="system"/> logs an event of type <typeparamref name="T"/> (Info, Warning, any
    /// LogEvent) whose message contains <paramref name="text"/>: subscribed now, so call it before the cause.
    /// </summary>
    public static Task Logged<T>(ActorSystem system, string text) where T : Akka.Event.LogEvent
    {
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        system.EventStream.Subscribe(system.ActorOf(Props.Create(() => new LogWatch<T>(text, seen))), typeof(T));
        return seen.Task;
    }

    sealed class LogWatch<T> : ReceiveActor where T : Akka.Event.LogEvent
    {
        public LogWatch(string text, TaskCompletionSource seen) =>
            Receive<T>(e =>
            {
                var said = $"{e.Message} {e.Cause}"; // the cause with its inner exceptions (a wire refusal sits under remoting's own)
                if (said.Contains(text, StringComparison.OrdinalIgnoreCase)) seen.TrySetResult();
            });
    }

    public static Task<LocalFederation> Start(Ground g, Config? extra = null, bool tls = false, Actors.Board.BoardFeed? board = null) =>
        LocalFederation.StartAsync(Path.Combine(g.Root, "nodes"), g.Datasets, extra is null ? FastCluster : extra.WithFallback(FastCluster), tls: tls, board: board,
            algorithms: ActorSpecs.Algorithms);
}
