using Akka.Actor;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Rounds;
using FateLlm.Host.Cli;
using FateLlm.Tests.Plugins;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The operator's job commands against a real in-process federation: live progress with retries, the status table, JSON, cancel.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class JobCommandsSpec
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(150);

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        var code = CliApp.Run(args, o, e, ActorSpecs.Algorithms);
        return (code, o.ToString(), e.ToString());
    }

    /// <param name="algorithm">The job's algorithm block: homo-peft's LoRA unless given (the orchestration specs pass echo).</param>
    static string JobFile(FederationFixture.Ground g, string id, int rounds, int epochs, int deadline, string algorithm = "")
    {
        var path = Path.Combine(g.Root, id + ".conf");
        File.WriteAllText(path, $$"""
            job {
              id = {{id}}
              model = "{{g.Model}}"
              parties = [
                { org = animal, data = train, eval = dev }
                { org = artifact, data = train, eval = dev }
                { org = food, data = train, eval = dev }
              ]
              rounds = {{rounds}}
              round-deadline = {{deadline}}s
              max-round-attempts = 2
              peft { r = 4, dropout = 0 }
              local { epochs = {{epochs}}, learning-rate = 5e-3, schedule = constant }
              data { max-tokens = 96, template = "{prompt}\n" }
              evaluation { limit = 4, max-new-tokens = 8 }
              output = "{{Path.Combine(g.Root, "out-" + id)}}"
              {{algorithm}}
            }
            """);
        return path;
    }

    [Fact]
    public async Task Submit_wait_shows_live_progress_and_a_retry_with_its_reason_then_status_prints_the_table_and_json_names_states()
    {
        var g = FederationFixture.Prepare();
        // The round actor of round 1 crashes once it has collected the updates: the job's watchdog (the stage's 8 s
        // budget + 2 s slack) declares attempt 1 lost, and attempt 2 runs.
        var crash = ConfigurationFactory.ParseString("""
            fate-llm.fault-injection.points = [{ at = round.collected, round = 1, action = throw }]
            fate-llm.job.watchdog-slack = 2s
            """);
        await using var fed = await FederationFixture.Start(g, crash);
        var file = JobFile(g, "retried", rounds: 2, epochs: 1, deadline: 8);
        var (code, output, error) = await Task.Run(() => Run("job", "submit", file, "--seed", fed.SeedAddress, "--wait"));
        Assert.True(code == 0, error + output);
        Assert.Contains("job retried accepted", output);
        Assert.Contains("round 1/2 attempt 1, exchange 1 collect:", output);
        Assert.Contains("✓", output);
        Assert.Contains("round 1: attempt 1 failed (the round did not report back within its budget for stage 'collect' (10 s); the arbiter lost it); it is retried", output);
        // Progress is polled every 500 ms: attempt 1's collect lasts the 10 s budget and is always seen; attempt 2's may
        // end between two polls (a quiet CI run missed it), so the retry shows in the round's own line.
        Assert.Contains("round 1/2 (attempt 2)", output);
        Assert.Contains("round 2/2 (attempt 1)", output);
        Assert.Contains("job retried: Completed, 2/2 rounds", output);
        // The job ran with the template as written, its trailing newline included.
        Assert.Contains("\"Template\":\"{prompt}\\n\"", File.ReadAllText(Path.Combine(g.Root, "out-retried", "events.jsonl")));
        Assert.Empty(error);
        Assert.DoesNotContain("ERROR", output);
        Assert.DoesNotContain("   at ", output); // no stack trace

        (code, output, _) = Run("job", "status", "retried", "--seed", fed.SeedAddress);
        Assert.Equal(0, code);
        Assert.Contains("3/3", output); // the per-round table: parties ok
        Assert.Contains("attempt", output);
        (code, output, _) = Run("job", "status", "retried", "--seed", fed.SeedAddress, "--json");
        Assert.Equal(0, code);
        Assert.Contains("\"State\": \"Completed\"", output);
    }

    [Fact]
    public async Task Cancel_answers_cancelled_and_the_parties_stop_their_work_within_seconds()
    {
        var g = FederationFixture.Prepare();
        // The parties' work is the echo plug-in's, held at its gate until cancelled: busy without loading the CPU (three
        // parties training flat out for 200 epochs starved the heartbeats of a 2-core machine).
        foreach (var org in FederationFixture.Orgs) EchoAlgorithm.Hold(org);
        try { await CancelHeldJob(g); }
        finally { foreach (var org in FederationFixture.Orgs) EchoAlgorithm.Release(org); }
    }

    async Task CancelHeldJob(FederationFixture.Ground g)
    {
        await using var fed = await FederationFixture.Start(g, ConfigurationFactory.ParseString("akka.loglevel = INFO"));
        var file = JobFile(g, "to-cancel", rounds: 3, epochs: 1, deadline: 600, algorithm: "algorithm { name = echo, exchanges = 1 }");
        var (code, output, error) = Run("job", "submit", file, "--seed", fed.SeedAddress);
        Assert.True(code == 0, error);
        await fed.WaitAsync("to-cancel", Generous, s => s.Current is { Stage: RoundStage.Collect });
        // Each party logs the stop of its work: watched on its node's event stream from before the cancel.
        var stopped = fed.Parties.ToDictionary(kv => kv.Key, kv => FederationFixture.Logged<Akka.Event.Info>(kv.Value.System, "(cancelled by the job)"));
        (code, output, error) = Run("job", "cancel", "to-cancel", "--seed", fed.SeedAddress);
        Assert.True(code == 0, error);
        Assert.Equal("job to-cancel: Cancelled", output.Trim());
        // Each party's work of the cancelled round is stopped: held at the gate, it would never end by itself.
        static string Read(string log) => File.Exists(log) ? File.ReadAllText(log) : "";
        try { await Task.WhenAll(stopped.Values).WaitAsync(TimeSpan.FromSeconds(30)); }
        catch (TimeoutException)
        {
            // Say which party did not stop and what its node logged of the job.
            Assert.Fail("every party stops its work within seconds of the cancel; " + string.Join(" | ",
                stopped.Where(kv => !kv.Value.IsCompleted).Select(kv => Path.Combine(fed.Parties[kv.Key].Options.DataDir, "node.log")).Select(l => l + ": " +
                    string.Join(" / ", Read(l).Split('\n').Where(x => x.Contains("to-cancel") || x.Contains("WARN") || x.Contains("ERROR")).TakeLast(8)))));
        }
        var status = await fed.StatusAsync("to-cancel");
        Assert.Equal(JobState.Cancelled, status.State);
        Assert.Equal(0, status.CompletedRounds);
        // No board runs here: the job events the arbiter publishes for one are dropped unread, not logged as dead letters.
        Assert.DoesNotContain("DeadLetterWithNoSubscribers", Read(Path.Combine(fed.Arbiter.Options.DataDir, "node.log")));
    }

    [Fact]
    public async Task A_job_naming_an_organization_with_no_node_is_accepted_with_a_note_saying_whom_it_waits_for_and_how_long()
    {
        var g = FederationFixture.Prepare();
        await using var fed = await FederationFixture.Start(g with { Datasets = g.Datasets.Where(kv => kv.Key != "food").ToDictionary() });
        var (code, output, error) = Run("job", "submit", JobFile(g, "no-food", rounds: 1, epochs: 1, deadline: 30), "--seed", fed.SeedAddress);
        Assert.True(code == 0, error);
        Assert.Equal("job no-food accepted; no node serves food yet: round 1 waits for them up to 120 s", output.Trim());
        (code, output, _) = Run("job", "status", "no-food", "--seed", fed.SeedAddress);
        Assert.Contains("now: round 1: waiting for a node of food (its quorum needs them)", output);
        Assert.Equal("job no-food: Cancelled", Run("job", "cancel", "no-food", "--seed", fed.SeedAddress).Out.Trim());

        // Unknown ids: refused with exit 1, and asking leaves no ghost in the listing, which comes from the journal.
        (code, _, error) = Run("job", "cancel", "nobody", "--seed", fed.SeedAddress);
        Assert.Equal((1, "error: no job 'nobody'"), (code, error.Trim()));
        (code, _, error) = Run("job", "status", "nobody", "--seed", fed.SeedAddress);
        Assert.Equal((1, "error: no job 'nobody'"), (code, error.Trim()));
        (code, output, error) = Run("job", "list", "--seed", fed.SeedAddress);
        Assert.True(code == 0, error);
        Assert.Equal(["no-food"], output.Trim().Split('\n').Select(l => l.Split(' ')[0]));
        Assert.Contains("Cancelled", output);
        Assert.Contains(CancelJob.ByOperator, output);
    }
}
