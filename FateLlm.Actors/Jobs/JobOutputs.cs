using System.Text.Json;
using Akka.Actor;
using Akka.Event;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Jobs;

/// <summary>
/// Writes what a job leaves on disk, off the job's thread: a line per party to <c>rounds.jsonl</c> as each round
/// completes; at the end the algorithm's outputs (its <c>Finalize</c>), <c>evaluation.json</c> and <c>loss.png</c>; and
/// once the job is over <c>status.json</c> and <c>events.jsonl</c>. A child of the job, fed with what it persisted. An
/// I/O error loses nothing the journal holds: it is logged (the export's is reported to the job) and the job goes on.
/// </summary>
public sealed class JobOutputs : ReceiveActor
{
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly string _jobId;

    /// <summary>Appends a completed round's per-party lines.</summary>
    public sealed record AppendRound(string OutputDir, RoundSummary Summary);

    /// <summary>Runs the algorithm's export with the final evaluation and the loss plot; answers <see cref="Exported"/> or <see cref="ExportFailed"/>.</summary>
    public sealed record Export(IServerAlgorithm Server, ServerContext Context, AlgorithmState State, RoundSummary[] Rounds, PartyEvaluation[] Evaluation);
    public sealed record Exported(string OutputDir);
    public sealed record ExportFailed(string Reason);

    /// <summary>The job is over: its final status and history; answered with <see cref="RecordWritten"/> once on disk (or failed).</summary>
    public sealed record WriteRecord(string OutputDir, JobStatus Status, IReadOnlyList<IJobEvent> History);
    public sealed record RecordWritten;

    public const string StatusFile = "status.json";

    static readonly JsonSerializerOptions Indented = new(JobSpec.JsonOptions) { WriteIndented = true };
    /// <summary>One JSON object per line (rounds.jsonl, events.jsonl).</summary>
    static readonly JsonSerializerOptions Line = JobSpec.JsonOptions;

    public JobOutputs(string jobId)
    {
        _jobId = jobId;
        Receive<AppendRound>(a => Guarded("append round metrics", () => AppendRoundLines(a.OutputDir, a.Summary)));
        Receive<Export>(OnExport);
        Receive<WriteRecord>(w =>
        {
            Guarded("write status", () => WriteStatus(w));
            Sender.Tell(new RecordWritten());
        });
    }

    void Guarded(string what, Action write)
    {
        try { write(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.Warning("job {0}: could not {1}: {2}", _jobId, what, e.Message);
        }
    }

    void AppendRoundLines(string dir, RoundSummary summary)
    {
        Directory.CreateDirectory(dir);
        using var w = File.AppendText(Path.Combine(dir, "rounds.jsonl"));
        foreach (var p in summary.Parties)
            w.WriteLine(JsonSerializer.Serialize(new
            {
                job = _jobId, round = summary.Round, attempt = summary.Attempt, party = p.Org, ok = p.Succeeded, reason = p.Reason,
                samples = p.Samples, first_loss = Finite(p.FirstLoss), last_loss = Finite(p.LastLoss), eval_loss = p.EvalLoss,
                upload_bytes = p.UploadBytes, download_bytes = p.DownloadBytes, retransmissions = p.Retransmissions,
                train_seconds = p.TrainSeconds, round_seconds = summary.Seconds, global = summary.GlobalDigest, exchanges = summary.Exchanges,
                epsilon = summary.Privacy?.Epsilon, round_epsilon = summary.Privacy?.RoundEpsilon, rejections = summary.Rejections.Length,
                secure_aggregation = summary.SecureAggregation,
                seconds = p.Metrics.Where(m => m.Key.StartsWith(ClientUpdate.SecondsPrefix, StringComparison.Ordinal))
                    .ToDictionary(m => m.Key[ClientUpdate.SecondsPrefix.Length..], m => Math.Round(m.Value, 3)),
                tasks = TaskScore.FromMetrics(p.Metrics).ToDictionary(s => s.Task, s => new { documents = s.Documents, metrics = s.Metrics, stderr = s.StdErr }),
            }, Line));
    }

    static double? Finite(double x) => double.IsFinite(x) ? x : null;

    void OnExport(Export e)
    {
        var spec = e.Context.Spec;
        // The algorithm's export may train, merge or write gigabytes: off this actor's thread too.
        Task.Run(() =>
        {
            var dir = spec.OutputDir;
            Directory.CreateDirectory(dir);
            e.Server.Finalize(e.Context, e.State, dir);
            File.WriteAllText(Path.Combine(dir, "evaluation.json"), JsonSerializer.Serialize(e.Evaluation, Indented));
            if (e.Evaluation.Any(p => p.Tasks.Length > 0))
                File.WriteAllText(Path.Combine(dir, "evaluation-tasks.json"), JsonSerializer.Serialize(TaskScore.Aggregate(e.Evaluation.SelectMany(p => p.Tasks)), Indented));
            PlotRounds(e.Rounds, spec, Path.Combine(dir, "loss.png"));
            return (object)new Exported(dir);
        }).PipeTo(Sender, failure: ex => new ExportFailed(ex.GetBaseException().Message));
    }

    /// <summary>Per party and round: its local training loss at the end of the round, and the eval loss of the state it received.</summary>
    static void PlotRounds(RoundSummary[] rounds, JobSpec spec, string path)
    {
        var series = new List<Training.Reporting.Series>();
        foreach (var org in spec.Parties.Select(p => p.Org))
        {
            var reports = rounds.Select(r => (r.Round, Report: r.Parties.FirstOrDefault(p => p.Org == org)))
                .Where(x => x.Report is { Succeeded: true } && double.IsFinite(x.Report.LastLoss)).ToList();
            if (reports.Count > 0) series.Add(new(org + " train", reports.Select(x => (double)x.Round).ToArray(), reports.Select(x => x.Report!.LastLoss).ToArray()));
            var evals = reports.Where(x => x.Report!.EvalLoss.HasValue).ToList();
            if (evals.Count > 0) series.Add(new(org + " eval (global in)", evals.Select(x => (double)x.Round).ToArray(), evals.Select(x => x.Report!.EvalLoss!.Value).ToArray()));
        }
        if (series.Count > 0) Training.Reporting.LineChart.Save(path, $"job {spec.JobId}: loss per round per party", "round", "loss", series);
    }

    static void WriteStatus(WriteRecord w)
    {
        Directory.CreateDirectory(w.OutputDir);
        File.WriteAllText(Path.Combine(w.OutputDir, StatusFile), JsonSerializer.Serialize(w.Status, Indented));
        File.WriteAllLines(Path.Combine(w.OutputDir, "events.jsonl"),
            w.History.Select(e => JsonSerializer.Serialize(new { type = e.GetType().Name, @event = (object)e }, Line)));
    }

    public static Props Props(string jobId) => Akka.Actor.Props.Create(() => new JobOutputs(jobId));
}
