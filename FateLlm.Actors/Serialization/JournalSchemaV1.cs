using System.Text.Json;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Algorithms.HomoPeft;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using FateLlm.Training.Trainer;

namespace FateLlm.Actors.Serialization;

/// <summary>
/// The journal as the pre-plug-in code wrote it (schema v1: a flat JobSpec, one global adapter and one server-state
/// digest per round), upcast to today's events on read. Every v1 job was a <c>homo-peft</c> job asking all parties.
/// Known limit: a v1 DP job kept its adaptive clip norm inside the server state; after the upcast it restarts from the
/// configured clip norm.
/// </summary>
public static class JournalSchemaV1
{
    public static readonly string[] UpcastManifests = [nameof(JobSubmitted), nameof(RoundStarted), nameof(RoundCompleted)];

    sealed record SpecV1(string JobId, string ModelPath, string ModelDigest, string PeftMethod, int LoraR, double LoraAlpha, double LoraDropout,
        string[] LoraTargets, int NumVirtualTokens, bool PrefixProjection, PartySpec[] Parties, int Rounds, int LocalEpochs, int LocalSteps,
        int BatchSize, double LearningRate, string Schedule, double WarmupRatio, double FedProxMu, int Threads, string Aggregation,
        ServerOptimizerOptions Server, int Quorum, double RoundDeadlineSeconds, int MaxRoundAttempts, DataOptions Data,
        SecureAggregationV1 SecureAggregation, DpOptions Dp, LimitsV1 Limits, int EvalLimit, int EvalMaxNewTokens, string OutputDir, long Seed);

    sealed record SecureAggregationV1(bool Enabled, int Threshold, int Degree, double ClipRange, long SampleCap, double PhaseTimeoutSeconds);
    sealed record LimitsV1(double MaxNorm, long MaxBytes);
    sealed record JobSubmittedV1(SpecV1 Spec, string InitialDigest, DateTime At);
    sealed record RoundStartedV1(int Round, int Attempt, DateTime At);
    sealed record RoundCompletedV1(RoundSummary Summary, string? ServerStateDigest, DateTime At);

    public static IJobEvent Upcast(string manifest, byte[] json, JsonSerializerOptions options)
    {
        T Read<T>() => JsonSerializer.Deserialize<T>(json, options) ?? throw new JsonException($"empty {manifest} v1 event");
        switch (manifest)
        {
            case nameof(JobSubmitted):
                var v1 = Read<JobSubmittedV1>();
                return new JobSubmitted(Spec(v1.Spec), AlgorithmState.Of((HomoPeftAlgorithm.Global, v1.InitialDigest)), SpecDigest: "", v1.At);
            case nameof(RoundStarted):
                var started = Read<RoundStartedV1>();
                return new RoundStarted(started.Round, started.Attempt, Participants: [], started.At);
            case nameof(RoundCompleted):
                var done = Read<RoundCompletedV1>();
                var state = AlgorithmState.Of((HomoPeftAlgorithm.Global, done.Summary.GlobalDigest!));
                if (done.ServerStateDigest is { } s) state = state.With(HomoPeftAlgorithm.ServerStateArtifact, s);
                return new RoundCompleted(done.Summary, state, done.At);
            default:
                throw new JsonException($"no v1 upcast for '{manifest}'");
        }
    }

    static JobSpec Spec(SpecV1 v) => new()
    {
        JobId = v.JobId, ModelPath = v.ModelPath, ModelDigest = v.ModelDigest, Parties = v.Parties,
        Algorithm = new AlgorithmSpec(HomoPeftAlgorithm.AlgorithmName, new Dictionary<string, string>()),
        Peft = new PeftConfig
        {
            Method = PeftConfig.ParseMethod(v.PeftMethod), LoraR = v.LoraR, LoraAlpha = v.LoraAlpha, LoraDropout = v.LoraDropout,
            LoraTargets = v.LoraTargets, NumVirtualTokens = v.NumVirtualTokens, PrefixProjection = v.PrefixProjection,
        },
        Rounds = v.Rounds,
        Local = new LocalTraining
        {
            Epochs = v.LocalEpochs, Steps = v.LocalSteps, BatchSize = v.BatchSize, LearningRate = v.LearningRate,
            Schedule = TrainOptions.ParseSchedule(v.Schedule), WarmupRatio = v.WarmupRatio, FedProxMu = v.FedProxMu, Threads = v.Threads,
        },
        Aggregation = new AggregationSpec(v.Aggregation, v.Server),
        Round = new RoundPolicy { Quorum = v.Quorum, DeadlineSeconds = v.RoundDeadlineSeconds, MaxAttempts = v.MaxRoundAttempts, Sampling = new PartySampling(1.0, 0) },
        Data = v.Data,
        SecureAggregation = new SecureAggregationOptions
        {
            Enabled = v.SecureAggregation.Enabled, Threshold = v.SecureAggregation.Threshold, Degree = v.SecureAggregation.Degree,
            ClipRange = v.SecureAggregation.ClipRange, SampleCap = v.SecureAggregation.SampleCap, PhaseTimeoutSeconds = v.SecureAggregation.PhaseTimeoutSeconds,
        },
        Dp = v.Dp,
        Validation = new UpdateLimits { MaxNorm = v.Limits.MaxNorm, MaxBytes = v.Limits.MaxBytes },
        Evaluation = new EvaluationOptions(v.EvalLimit, v.EvalMaxNewTokens),
        OutputDir = v.OutputDir,
        Seed = v.Seed,
    };
}
