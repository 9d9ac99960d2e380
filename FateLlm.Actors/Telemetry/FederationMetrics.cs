using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using FateLlm.Actors.Jobs;

namespace FateLlm.Actors.Telemetry;

/// <summary>
/// The federation's OpenTelemetry meter (<c>FateLlm</c>): rounds, round and training durations, bytes up and down,
/// retransmissions, dropouts and rejections, recorded where a round completes (the job, on the arbiter); ε spent per
/// job and the model services' queue lengths as gauges. Any exporter (Prometheus, OTLP) subscribes by the meter's name.
/// </summary>
public static class FederationMetrics
{
    public const string MeterName = "FateLlm";
    static readonly Meter Meter = new(MeterName, "1.0");
    static readonly Counter<long> Rounds = Meter.CreateCounter<long>("fatellm.rounds.completed", description: "Rounds completed");
    static readonly Counter<long> FailedAttempts = Meter.CreateCounter<long>("fatellm.rounds.failed_attempts", description: "Round attempts that failed (and were retried or ended the job)");
    static readonly Histogram<double> RoundDuration = Meter.CreateHistogram<double>("fatellm.round.duration", "s", "Wall time of a completed round");
    static readonly Histogram<double> StageDuration = Meter.CreateHistogram<double>("fatellm.round.stage.duration", "s", "Wall time of a round's stage (collect, step)");
    static readonly Histogram<double> TrainDuration = Meter.CreateHistogram<double>("fatellm.party.train.duration", "s", "A party's training time in a round");
    static readonly Counter<long> BytesUp = Meter.CreateCounter<long>("fatellm.transfer.up", "By", "Bytes parties uploaded");
    static readonly Counter<long> BytesDown = Meter.CreateCounter<long>("fatellm.transfer.down", "By", "Bytes parties downloaded");
    static readonly Counter<long> Retransmissions = Meter.CreateCounter<long>("fatellm.transfer.retransmissions", description: "Chunks sent again");
    static readonly Counter<long> Dropouts = Meter.CreateCounter<long>("fatellm.parties.dropped", description: "Parties left out of a completed round");
    static readonly Counter<long> Rejections = Meter.CreateCounter<long>("fatellm.updates.rejected", description: "Updates refused before aggregation");
    static readonly ConcurrentDictionary<string, double> Epsilons = new();
    static readonly ConcurrentDictionary<string, Func<int>> Queues = new();

    static FederationMetrics()
    {
        Meter.CreateObservableGauge("fatellm.privacy.epsilon", () => Epsilons.Select(kv => new Measurement<double>(kv.Value, new KeyValuePair<string, object?>("job", kv.Key))),
            description: "ε spent so far under DP, per job");
        Meter.CreateObservableGauge("fatellm.service.queue.length", () => Queues.Select(kv => new Measurement<int>(kv.Value(), new KeyValuePair<string, object?>("service", kv.Key))),
            description: "Requests waiting at a model service");
    }

    public static void RoundCompleted(string job, RoundSummary s)
    {
        var jobTag = new KeyValuePair<string, object?>("job", job);
        Rounds.Add(1, jobTag);
        RoundDuration.Record(s.Seconds, jobTag);
        Rejections.Add(s.Rejections.Length, jobTag);
        foreach (var p in s.Parties)
        {
            var party = new KeyValuePair<string, object?>("party", p.Org);
            BytesUp.Add(p.UploadBytes, jobTag, party);
            BytesDown.Add(p.DownloadBytes, jobTag, party);
            Retransmissions.Add(p.Retransmissions, jobTag, party);
            if (!p.Succeeded) Dropouts.Add(1, jobTag, party);
            else TrainDuration.Record(p.TrainSeconds, jobTag, party);
        }
        if (s.Privacy is { } privacy) Epsilons[job] = privacy.Epsilon;
    }

    public static void StageEnded(string job, string stage, double seconds) =>
        StageDuration.Record(seconds, new KeyValuePair<string, object?>("job", job), new KeyValuePair<string, object?>("stage", stage));

    public static void AttemptFailed(string job) => FailedAttempts.Add(1, new KeyValuePair<string, object?>("job", job));

    /// <summary>Reports a service's queue length until the returned handle is disposed.</summary>
    public static IDisposable TrackQueue(string service, Func<int> length)
    {
        Queues[service] = length;
        return new Untrack(service);
    }

    sealed class Untrack(string service) : IDisposable
    {
        public void Dispose() => Queues.TryRemove(service, out _);
    }
}
