using System.CommandLine;
using System.Text.Json;
using Akka.Actor;
using Akka.Cluster.Sharding;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Federation;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>job submit/status/list/cancel: join as a short-lived client node, ask the job region, leave.</summary>
internal static class JobCommands
{
    static readonly Option<string[]> Seed = new("--seed") { Description = "Seed node address", Required = true };
    static readonly Option<int> Timeout = Opt("--timeout", "Seconds to wait for the cluster and the answer", 60);
    static readonly Option<string?> Tls = NodeCommands.TlsOption();

    public static Command Build()
    {
        var file = new Argument<string>("file") { Description = "Job file (HOCON, see hocon/job.conf)" };
        var wait = Opt("--wait", "Follow the job until it completes, printing each round", false);
        var submit = new Command("submit", "Submit a federated job") { file };
        submit.With(p =>
        {
            var spec = LoadSpec(p.GetValue(file)!);
            WithClient(p, async node =>
            {
                var reply = await node.JobRegion.Ask<object>(new SubmitJob(spec.JobId, spec), TimeSpan.FromSeconds(p.GetValue(Timeout) + 120));
                if (reply is JobRejected r) throw new InvalidOperationException($"job {spec.JobId} rejected: {r.Reason}");
                Console.WriteLine($"job {spec.JobId} accepted");
                if (!p.GetValue(wait)) return;
                var final = await Follow(node, spec.JobId);
                if (final.State != JobState.Completed) throw new InvalidOperationException($"job {spec.JobId} {final.State.ToString().ToLowerInvariant()}: {final.Reason}");
            });
        }, wait, Seed, Timeout, Tls);

        var id = new Argument<string>("id") { Description = "Job id" };
        var json = Opt("--json", "Print as JSON", false);
        var status = new Command("status", "Show a job's state, rounds and metrics") { id };
        status.With(p => WithClient(p, async node =>
        {
            var s = await node.JobRegion.Ask<JobStatus>(new GetJobStatus(p.GetValue(id)!), TimeSpan.FromSeconds(p.GetValue(Timeout)));
            if (s.State == JobState.Unknown) throw new InvalidOperationException($"no job '{s.JobId}'");
            if (p.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(s, JsonOut));
            else Print(s);
        }), json, Seed, Timeout, Tls);

        var list = new Command("list", "List jobs");
        list.With(p => WithClient(p, async node =>
        {
            var cluster = Akka.Cluster.Cluster.Get(node.System);
            var arbiters = cluster.State.Members.Where(m => m.HasRole("arbiter")).ToList();
            if (arbiters.Count == 0) throw new InvalidOperationException("no arbiter is up in the cluster");
            var ids = new SortedSet<string>();
            foreach (var a in arbiters)
            {
                var region = node.System.ActorSelection(new RootActorPath(a.Address) / "system" / "sharding" / FederationNode.JobRegionName);
                var state = await region.Ask<CurrentShardRegionState>(GetShardRegionState.Instance, TimeSpan.FromSeconds(p.GetValue(Timeout)));
                foreach (var shard in state.Shards) ids.UnionWith(shard.EntityIds);
            }
            foreach (var jobId in ids)
            {
                var s = await node.JobRegion.Ask<JobStatus>(new GetJobStatus(jobId), TimeSpan.FromSeconds(p.GetValue(Timeout)));
                Console.WriteLine($"{s.JobId,-24} {s.State,-10} rounds {s.CompletedRounds}/{s.TotalRounds}{(s.Reason is null ? "" : "  " + s.Reason)}");
            }
            if (ids.Count == 0) Console.WriteLine("no jobs");
        }), Seed, Timeout, Tls);

        var cancel = new Command("cancel", "Cancel a running job") { id };
        cancel.With(p => WithClient(p, async node =>
        {
            var s = await node.JobRegion.Ask<JobStatus>(new CancelJob(p.GetValue(id)!), TimeSpan.FromSeconds(p.GetValue(Timeout)));
            Console.WriteLine($"job {s.JobId}: {s.State}");
        }), Seed, Timeout, Tls);

        var job = new Command("job", "Submit and query federated jobs");
        foreach (var c in new[] { submit, status, list, cancel }) job.Subcommands.Add(c);
        return job;
    }

    static readonly JsonSerializerOptions JsonOut = new() { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    internal static JobSpec LoadSpec(string path)
    {
        try { return JobFile.Load(path); }
        catch (JobSpecException e) { throw new UsageException(e.Message); }
    }

    static void WithClient(ParseResult p, Func<FederationNode, Task> action)
    {
        var seeds = p.GetValue(Seed)!;
        foreach (var s in seeds)
            if (!Address.TryParse(s, out _)) throw new UsageException($"--seed '{s}' is not an Akka address like akka.tcp://fate-llm@host:port");
        var timeout = TimeSpan.FromSeconds(p.GetValue(Timeout));
        var node = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Client, Seeds = seeds, Tls = NodeCommands.LoadTls(p.GetValue(Tls), seeds), DataDir = Path.Combine(Path.GetTempPath(), "fate-llm-client-" + Environment.ProcessId),
            Overrides = Akka.Configuration.ConfigurationFactory.ParseString("akka.loglevel = ERROR\nakka.stdout-loglevel = ERROR"),
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
        }
    }

    static async Task<JobStatus> Follow(FederationNode node, string jobId)
    {
        int printed = 0;
        while (true)
        {
            JobStatus s;
            try { s = await node.JobRegion.Ask<JobStatus>(new GetJobStatus(jobId), TimeSpan.FromSeconds(10)); }
            catch (AskTimeoutException) { await Task.Delay(1000); continue; }
            for (; printed < s.Rounds.Length; printed++) PrintRound(s.Rounds[printed], s.TotalRounds);
            if (s.State is JobState.Completed or JobState.Failed or JobState.Cancelled)
            {
                Print(s);
                return s;
            }
            await Task.Delay(500);
        }
    }

    internal static void PrintRound(RoundSummary r, int total)
    {
        Console.WriteLine($"round {r.Round}/{total} (attempt {r.Attempt}) in {r.Seconds:F1}s {(r.GlobalDigest is { } g ? $" → global {g[..12]}" : "")}{(r.Exchanges > 1 ? $", {r.Exchanges} exchanges" : "")}");
        foreach (var p in r.Parties)
            Console.WriteLine(p.Succeeded
                ? $"  {p.Org,-12} loss {p.FirstLoss:F4} → {p.LastLoss:F4}  eval {p.EvalLoss?.ToString("F4") ?? "-"}  up {p.UploadBytes:N0} B  down {p.DownloadBytes:N0} B  retransmitted {p.Retransmissions}"
                : $"  {p.Org,-12} dropped: {p.Reason}");
        if (r.SecureAggregation is { } sa) Console.WriteLine($"  secure aggregation: {sa}");
        foreach (var rejection in r.Rejections) Console.WriteLine($"  rejected {rejection}");
        if (r.Privacy is { } dp) Console.WriteLine($"  privacy: ε = {dp.Epsilon:F3} at δ = {dp.Delta:G3} so far, {dp.RoundEpsilon:F3} for this round alone (z = {dp.NoiseMultiplier:G3}, q = {dp.SamplingRate:G3}, clip {dp.ClipNorm:G4})");
    }

    static void Print(JobStatus s)
    {
        Console.WriteLine($"job {s.JobId}: {s.State}, {s.CompletedRounds}/{s.TotalRounds} rounds{(s.Reason is null ? "" : ", " + s.Reason)}");
        if (s.Epsilon is { } eps) Console.WriteLine($"  differential privacy: (ε = {eps:F3}, δ = {s.Delta:G3})");
        foreach (var e in s.FinalEvaluation)
            Console.WriteLine($"  {e.Org,-12} loss {e.Loss:F4} ppl {e.Perplexity:F2} ROUGE-L {e.RougeL:F2} BLEU-4 {e.Bleu4:F2}");
        if (s.State == JobState.Completed) Console.WriteLine($"outputs in {s.OutputDir}");
    }
}
