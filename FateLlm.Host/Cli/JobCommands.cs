using System.CommandLine;
using System.Text.Json;
using Akka.Actor;
using Spectre.Console;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Serialization;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Rounds;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>job submit/status/list/cancel: a cluster client (not a member) asks a seed's or arbiter's job gateway.</summary>
internal static class JobCommands
{
    internal static readonly Option<string[]> Seed = new("--seed") { Description = "Seed node address", Required = true };
    internal static readonly Option<int> Timeout = Opt("--timeout", "Seconds to wait for the cluster and the answer", 60);
    internal static readonly Option<string?> Host = new("--host") { Description = "Address the cluster reaches this client at (default: this machine's address toward the seed)" };
    internal static readonly Option<string?> Tls = NodeCommands.TlsOption();

    public static Command Build(Terminal t, AlgorithmCatalog algorithms)
    {
        var file = new Argument<string>("file") { Description = "Job file (HOCON, see hocon/job.conf)" };
        var wait = Opt("--wait", "Follow the job until it completes, printing each round", false);
        var submit = new Command("submit", "Submit a federated job") { file };
        submit.With(p =>
        {
            var spec = LoadSpec(p.GetValue(file)!, algorithms);
            WithClient(p, async node =>
            {
                // Re-sent until answered: a message lost on the way (a shard still starting, an arbiter that just left) is
                // sent again, and the job answers a repeat of the submission that made it as accepted.
                var reply = await JobClient.SubmitAsync(node.Jobs, spec, node.ResendInterval, TimeSpan.FromSeconds(p.GetValue(Timeout) + 120));
                if (reply is JobRejected r) throw new InvalidOperationException($"job {spec.JobId} rejected: {r.Reason}");
                var accepted = (JobAccepted)reply;
                t.Out.WriteLine(accepted.WaitingFor.Length == 0 ? $"job {spec.JobId} accepted"
                    : $"job {spec.JobId} accepted; no node serves {string.Join(", ", accepted.WaitingFor)} yet: round 1 waits for them up to {accepted.WaitUpTo.TotalSeconds:G4} s");
                if (!p.GetValue(wait)) return;
                var final = await Follow(t, node, spec.JobId);
                if (final.State != JobState.Completed) throw new InvalidOperationException($"job {spec.JobId} {final.State.ToString().ToLowerInvariant()}: {final.Reason}");
            });
        }, wait, Seed, Timeout, Tls, Host);

        var id = new Argument<string>("id") { Description = "Job id" };
        var json = Opt("--json", "Print as JSON", false);
        var status = new Command("status", "Show a job's state, rounds and metrics") { id };
        status.With(p => WithClient(p, async node =>
        {
            var s = await node.AskAsync<JobStatus>(new GetJobStatus(p.GetValue(id)!), TimeSpan.FromSeconds(p.GetValue(Timeout)));
            if (s.State == JobState.Unknown) throw new InvalidOperationException($"no job '{s.JobId}'");
            if (p.GetValue(json)) t.Out.WriteLine(JsonSerializer.Serialize(s, JsonOut));
            else
            {
                Print(t, s);
                PrintWire(t, await node.AskAsync<MemberList>(new ListMembers(), TimeSpan.FromSeconds(p.GetValue(Timeout))));
            }
        }), json, Seed, Timeout, Tls, Host);

        var list = new Command("list", "List jobs");
        list.With(p => WithClient(p, async node =>
        {
            // From every arbiter's journal: finished and passivated jobs too, and no id that was only queried or refused.
            var list = await node.AskAsync<JobList>(new ListJobs(), TimeSpan.FromSeconds(p.GetValue(Timeout) * 2), every: TimeSpan.FromSeconds(p.GetValue(Timeout)));
            if (list.Problem is { } problem) throw new InvalidOperationException(problem);
            var ids = list.JobIds;
            foreach (var jobId in ids)
            {
                var s = await node.AskAsync<JobStatus>(new GetJobStatus(jobId), TimeSpan.FromSeconds(p.GetValue(Timeout)));
                t.Out.WriteLine($"{s.JobId,-24} {s.State,-10} rounds {s.CompletedRounds}/{s.TotalRounds}{(s.Reason is null ? "" : "  " + s.Reason)}");
            }
            if (ids.Length == 0) t.Out.WriteLine("no jobs");
        }), Seed, Timeout, Tls, Host);

        var cancel = new Command("cancel", "Cancel a running job") { id };
        cancel.With(p => WithClient(p, async node =>
        {
            var s = await node.AskAsync<JobStatus>(new CancelJob(p.GetValue(id)!), TimeSpan.FromSeconds(p.GetValue(Timeout)));
            if (s.State == JobState.Unknown) throw new InvalidOperationException($"no job '{s.JobId}'");
            t.Out.WriteLine($"job {s.JobId}: {s.State}");
        }), Seed, Timeout, Tls, Host);

        var job = new Command("job", "Submit and query federated jobs");
        foreach (var c in new[] { submit, status, list, cancel }) job.Subcommands.Add(c);
        return job;
    }

    // States and enums by name, NaN losses as named literals.
    static readonly JsonSerializerOptions JsonOut = new(JobSpec.JsonOptions) { WriteIndented = true };

    /// <summary>Per round: attempt, who answered, mean losses, bytes, ε.</summary>
    static void PrintTable(Terminal t, JobStatus s)
    {
        var table = new Table().AddColumns("round", "attempt", "parties ok", "train loss", "eval loss", "up", "down", "ε", "seconds");
        foreach (var r in s.Rounds)
        {
            var ok = r.Parties.Where(p => p.Succeeded).ToList();
            string Mean(IEnumerable<double> xs) => xs.Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average() is var m && double.IsFinite(m) ? m.ToString("F4") : "-";
            table.AddRow($"{r.Round}", $"{r.Attempt}", $"{ok.Count}/{r.Parties.Length}", Mean(ok.Select(p => p.LastLoss)), Mean(ok.Select(p => p.EvalLoss ?? double.NaN)),
                ByteSize.Text(r.Parties.Sum(p => p.UploadBytes)), ByteSize.Text(r.Parties.Sum(p => p.DownloadBytes)), r.Privacy is { } p ? p.Epsilon.ToString("F3") : "-", $"{r.Seconds:F1}");
        }
        t.Ansi.Write(table);
        foreach (var r in s.Rounds)
            foreach (var p in r.Parties.Where(p => !p.Succeeded)) t.Out.WriteLine($"  round {r.Round}: {p.Org} dropped ({p.Reason})");
    }

    /// <summary>
    /// The job file, validated; also refuses an output folder that already holds files (the job would mix its outputs
    /// with them). Checked on this machine, where the walkthrough's arbiter writes; the arbiter itself refuses a file there.
    /// </summary>
    internal static JobSpec LoadSpec(string path, AlgorithmCatalog algorithms)
    {
        try
        {
            var spec = JobFile.Load(path, algorithms);
            if (Directory.Exists(spec.OutputDir) && Directory.EnumerateFileSystemEntries(spec.OutputDir).Any())
                throw new JobSpecException($"{path}: job.output '{spec.OutputDir}' already holds files; name a new or empty folder (or remove it)");
            return spec;
        }
        catch (JobSpecException e) { throw new UsageException(e.Message); }
    }

    internal static void WithClient(ParseResult p, Func<JobConnection, Task> action)
    {
        var seeds = Seeds(p);
        var timeout = TimeSpan.FromSeconds(p.GetValue(Timeout));
        var connection = JobConnection.Open(seeds, p.GetValue(Host) ?? AddressToward(Address.Parse(seeds[0]).Host!), NodeCommands.LoadTls(p.GetValue(Tls), seeds),
            Akka.Configuration.ConfigurationFactory.ParseString("akka.loglevel = WARNING\nakka.stdout-loglevel = OFF"));
        try
        {
            try { action(connection).GetAwaiter().GetResult(); }
            catch (AskTimeoutException) { throw new InvalidOperationException($"no answer from the cluster through {string.Join(", ", seeds)} within {timeout.TotalSeconds:F0}s"); }
        }
        finally { connection.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds(15)); }
    }

    /// <summary>
    /// As a short-lived member with role <c>client</c>: for <c>infer --remote</c>, which pulls the service's kit through
    /// a blob fetcher of its own and finds services by role; job commands use <see cref="WithClient"/>.
    /// </summary>
    internal static void WithMember(ParseResult p, Func<FederationNode, Task> action)
    {
        var seeds = Seeds(p);
        var timeout = TimeSpan.FromSeconds(p.GetValue(Timeout));
        var dataDir = Path.Combine(Path.GetTempPath(), $"fate-llm-client-{Environment.ProcessId}-{Guid.NewGuid():N}");
        var node = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = seeds, Tls = NodeCommands.LoadTls(p.GetValue(Tls), seeds), DataDir = dataDir,
            Host = p.GetValue(Host) ?? AddressToward(Address.Parse(seeds[0]).Host!),
            Overrides = Akka.Configuration.ConfigurationFactory.ParseString("akka.loglevel = WARNING\nfate-llm.logging.console-level = off"),
        });
        try
        {
            try { node.WhenUp(timeout).GetAwaiter().GetResult(); }
            catch (TimeoutException) { throw new InvalidOperationException($"could not join the cluster through {string.Join(", ", seeds)} within {timeout.TotalSeconds:F0}s"); }
            try { action(node).GetAwaiter().GetResult(); }
            catch (AskTimeoutException) { throw new InvalidOperationException($"no answer from an arbiter within {timeout.TotalSeconds:F0}s"); }
        }
        finally
        {
            node.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds(15));
            try { Directory.Delete(dataDir, recursive: true); } catch (IOException) { } // a short-lived client keeps nothing
        }
    }

    static string[] Seeds(ParseResult p)
    {
        var seeds = p.GetValue(Seed)!;
        foreach (var s in seeds)
            if (!Address.TryParse(s, out _)) throw new UsageException($"--seed '{s}' is not an Akka address like akka.tcp://fate-llm@host:port");
        return seeds;
    }

    /// <summary>
    /// The local address this machine uses to reach <paramref name="host"/> (answers come back to it, so the others must
    /// reach it): 127.0.0.1 toward a local seed, the right interface toward a remote one.
    /// </summary>
    static string AddressToward(string host)
    {
        try
        {
            using var probe = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
            probe.Connect(host, 9); // UDP connect sends nothing: it only picks the route
            return ((System.Net.IPEndPoint)probe.LocalEndPoint!).Address.ToString();
        }
        catch (System.Net.Sockets.SocketException) { return "127.0.0.1"; }
    }

    /// <summary>Live progress: whom the job waits for, each exchange as parties answer, each failed attempt with its reason, each round.</summary>
    static async Task<JobStatus> Follow(Terminal t, JobConnection node, string jobId)
    {
        int printed = 0;
        string? lastLine = null;
        AttemptFailure? lastFailure = null;
        while (true)
        {
            JobStatus s;
            try { s = await node.AskAsync<JobStatus>(new GetJobStatus(jobId), TimeSpan.FromSeconds(10)); }
            catch (AskTimeoutException) { await Task.Delay(1000); continue; }
            for (; printed < s.Rounds.Length; printed++) PrintRound(t, s.Rounds[printed], s.TotalRounds);
            if (s.LastFailure is { } f && f != lastFailure)
                t.Out.WriteLine($"round {f.Round}: attempt {f.Attempt} failed ({f.Reason}){(s.State == JobState.Running ? "; it is retried" : "")}");
            lastFailure = s.LastFailure;
            var line = Progress(s);
            if (line is not null && line != lastLine) t.Out.WriteLine(line);
            lastLine = line;
            if (s.State is JobState.Completed or JobState.Failed or JobState.Cancelled)
            {
                Print(t, s);
                return s;
            }
            await Task.Delay(500);
        }
    }

    /// <summary>One line for the round in flight (or the wait before it), or null when there is nothing new to say.</summary>
    internal static string? Progress(JobStatus s)
    {
        if (s.WaitingFor.Length > 0) return $"round {s.CompletedRounds + 1}: waiting for a node of {string.Join(", ", s.WaitingFor)} (its quorum needs them)";
        if (s.Buffer is { } b)
            return $"version {b.Version}/{s.TotalRounds}, buffer {b.Filled}/{b.Size}; training: " + (b.InFlight.Length == 0 ? "nobody" :
                string.Join(", ", b.InFlight.Select(w => $"{w.Org} from version {w.BaseVersion} (staleness {b.Version - w.BaseVersion} so far){(w.Progress is { } at ? $" … {at}" : "")}")));
        if (s.Current is not { } c) return null;
        var answers = c.Asked.Select(o => c.Answers.TryGetValue(o, out var a) ? (a == "ok" ? $"{o} ✓" : $"{o} ✗ ({a})")
            : c.Progress.TryGetValue(o, out var at) ? $"{o} … {at}" : $"{o} …");
        return $"round {c.Round}/{s.TotalRounds} attempt {c.Attempt}, exchange {c.Exchange} {c.Stage.Name()}: {string.Join(", ", answers)}";
    }

    internal static void PrintRound(Terminal t, RoundSummary r, int total)
    {
        t.Out.WriteLine($"{(r.Buffer is null ? $"round {r.Round}/{total} (attempt {r.Attempt})" : $"version {r.Round}/{total}")} in {r.Seconds:F1}s {(r.GlobalDigest is { } g ? $" → global {g[..12]}" : "")}{(r.Exchanges > 1 ? $", {r.Exchanges} exchanges" : "")}");
        foreach (var p in r.Parties)
            t.Out.WriteLine(p.Succeeded
                ? $"  {p.Org,-12} loss {p.FirstLoss:F4} → {p.LastLoss:F4}  eval {p.EvalLoss?.ToString("F4") ?? "-"}  up {p.UploadBytes:N0} B  down {p.DownloadBytes:N0} B  retransmitted {p.Retransmissions}"
                : $"  {p.Org,-12} dropped: {p.Reason}");
        foreach (var task in TaskScore.Aggregate(r.Parties.Where(p => p.Succeeded).SelectMany(p => TaskScore.FromMetrics(p.Metrics))))
            t.Out.WriteLine($"  task {task.Task} on the global state before training: {Figures(task)}  (n = {task.Documents})");
        if (r.SecureAggregation is { } sa) t.Out.WriteLine($"  secure aggregation: {sa}");
        if (r.Buffer is { } flush)
            t.Out.WriteLine($"  buffered flush: {string.Join(", ", flush.Contributions.Select(c => $"{c.Org} (update {c.UpdateId} from version {c.BaseVersion}, staleness {c.Staleness}, weight {c.Weight:G3})"))}");
        foreach (var rejection in r.Rejections) t.Out.WriteLine($"  rejected {rejection}");
        if (r.Privacy is { } dp) t.Out.WriteLine($"  privacy: ε = {dp.Epsilon:F3} at δ = {dp.Delta:G3} so far, {dp.RoundEpsilon:F3} for this round alone (z = {dp.NoiseMultiplier:G3}, q = {dp.SamplingRate:G3}, clip {dp.ClipNorm:G4})");
    }

    static string Figures(TaskScore s) => string.Join("  ", s.Metrics.Select(m => $"{m.Key} {m.Value:F4}" + (s.StdErr.TryGetValue(m.Key, out var se) ? $" ± {se:F4}" : "")));

    /// <summary>Each evaluation task: every party's figures on its own data, then their document-weighted aggregate.</summary>
    internal static void PrintTasks(Terminal t, PartyEvaluation[] evaluation)
    {
        foreach (var task in TaskScore.Aggregate(evaluation.SelectMany(e => e.Tasks)))
        {
            t.Out.WriteLine($"  task {task.Task}: {Figures(task)}  (n = {task.Documents}, {evaluation.Count(e => e.Tasks.Any(x => x.Task == task.Task))} parties)");
            foreach (var e in evaluation)
                if (e.Tasks.FirstOrDefault(x => x.Task == task.Task) is { } mine) t.Out.WriteLine($"    {e.Org,-12} {Figures(mine)}  (n = {mine.Documents})");
        }
    }

    /// <summary>Members that announce another wire protocol than the gateway's node (a rolling upgrade in progress), one line each.</summary>
    static void PrintWire(Terminal t, MemberList members)
    {
        var own = WireSchema.Version.ToString();
        foreach (var m in members.Members.Where(m => m.Wire != own))
            t.Out.WriteLine($"  wire: {m.Address} ({string.Join(", ", m.Roles)}) speaks protocol {m.Wire ?? "none"}, FateLlm {m.Version}; this cluster {own}");
    }

    static void Print(Terminal t, JobStatus s)
    {
        var rounds = s.Rounds.Any(r => r.Buffer is not null) || s.Buffer is not null ? "versions" : "rounds";
        t.Out.WriteLine($"job {s.JobId}: {s.State}, {s.CompletedRounds}/{s.TotalRounds} {rounds}{(s.Reason is null ? "" : ", " + s.Reason)}");
        if (s.Rounds.Length > 0) PrintTable(t, s);
        if (Progress(s) is { } now) t.Out.WriteLine("  now: " + now);
        if (s.Epsilon is { } eps) t.Out.WriteLine($"  differential privacy: (ε = {eps:F3}, δ = {s.Delta:G3})");
        if (s.EvaluationProblem is { } problem) t.Out.WriteLine($"  no final evaluation: {problem}");
        foreach (var e in s.FinalEvaluation)
            t.Out.WriteLine($"  {e.Org,-12} loss {e.Loss:F4} ppl {e.Perplexity:F2} ROUGE-L {e.RougeL:F2} BLEU-4 {e.Bleu4:F2}");
        foreach (var (org, why) in s.EvaluationMissing) t.Out.WriteLine($"  {org,-12} not evaluated: {why}");
        PrintTasks(t, s.FinalEvaluation);
        if (s.State == JobState.Completed) t.Out.WriteLine($"outputs in {s.OutputDir}");
    }
}
