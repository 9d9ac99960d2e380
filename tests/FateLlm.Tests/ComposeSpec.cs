using System.Text.Json;
using System.Text.RegularExpressions;
using FateLlm.Host.Cli;
using Xunit;

namespace FateLlm.Tests;

/// <summary>No Docker engine runs here: check the compose file's commands (and the example job file) against the real parsers instead.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ComposeSpec
{
    [Fact]
    public void The_example_job_file_parses_and_its_secure_aggregation_block_sets_every_field()
    {
        var example = Actors.Jobs.JobFile.Load(TestSupport.RepoFile(Path.Combine("hocon", "job.conf")));
        Assert.False(example.SecureAggregation.Enabled);
        Assert.Equal(Training.Privacy.DpMode.Off, example.Dp.Mode);

        var dir = TestSupport.TempDir();
        var text = File.ReadAllText(TestSupport.RepoFile(Path.Combine("hocon", "job.conf")))
            .Replace("    enabled = off", "    enabled = on").Replace("threshold = 0 ", "threshold = 3 ").Replace("phase-timeout = 60s", "phase-timeout = 20s")
            .Replace("mode = off ", "mode = distributed ").Replace("quorum = 2 ", "quorum = 3 ").Replace("../runs/models/tiny", "model");
        File.WriteAllText(Path.Combine(dir, "job.conf"), text);
        var secure = Actors.Jobs.JobFile.Load(Path.Combine(dir, "job.conf"));
        Assert.True(secure.SecureAggregation.Enabled);
        Assert.Equal(3, secure.SecureAggregation.ThresholdFor(secure.Parties.Length));
        Assert.Equal(20, secure.SecureAggregation.PhaseTimeoutSeconds);
        Assert.Equal(Training.Privacy.DpMode.Distributed, secure.Dp.Mode);
    }

    static Dictionary<string, string[]> Services(string file = "docker-compose.yml")
    {
        var services = new Dictionary<string, string[]>();
        string? current = null;
        foreach (var line in File.ReadLines(TestSupport.RepoFile(file)))
        {
            var svc = Regex.Match(line, @"^  ([a-z][a-z0-9-]*):\s*$");
            if (svc.Success) current = svc.Groups[1].Value;
            var cmd = Regex.Match(line, @"^    command: (\[.*\])\s*$");
            if (cmd.Success && current != null) services[current] = JsonSerializer.Deserialize<string[]>(cmd.Groups[1].Value)!;
        }
        return services;
    }

    [Fact]
    public void A_journal_url_becomes_a_connection_string_and_a_bad_one_is_refused_without_its_password()
    {
        var cs = Actors.Nodes.JournalLocation.PostgresConnectionString("postgres://fate%40llm:p%3Bw%22d@db.example:6543/jobs?sslmode=require");
        var b = new Npgsql.NpgsqlConnectionStringBuilder(cs.Replace("\\\"", "\"").Replace("\\\\", "\\"));
        Assert.Equal(("db.example", 6543, "jobs", "fate@llm", "p;w\"d", Npgsql.SslMode.Require), (b.Host, b.Port, b.Database, b.Username, b.Password, b.SslMode));
        foreach (var (url, why) in new[] { ("mysql://u:secret@h/db", "must be postgres://"), ("postgres://u:secret@h/", "names no database"),
                     ("postgres://h/db", "names no user"), ("postgres://u:secret@h/db?pool=1", "only ?sslmode") })
        {
            var e = Assert.Throws<ArgumentException>(() => Actors.Nodes.JournalLocation.PostgresConnectionString(url));
            Assert.Contains(why, e.Message);
            Assert.DoesNotContain("secret", e.Message);
        }
    }

    [Fact]
    public void The_postgres_variant_runs_two_arbiters_on_one_journal()
    {
        var arbiters = Services("docker-compose.postgres.yml").Where(kv => kv.Value[0] == "arbiter").ToList();
        Assert.Equal(2, arbiters.Count);
        var journals = arbiters.Select(kv => kv.Value[Array.IndexOf(kv.Value, "--journal") + 1]).Distinct().ToList();
        Assert.Single(journals);
        Assert.Contains("Database=fatellm", Actors.Nodes.JournalLocation.PostgresConnectionString(journals[0]));
        Check(Services().Where(kv => kv.Key == "seed").Concat(arbiters).ToDictionary());
    }

    [Fact]
    public void Every_service_runs_a_valid_fate_llm_command_whose_seed_is_the_seed_service()
    {
        var services = Services();
        Assert.Contains("seed", services.Keys);
        Assert.Contains("arbiter", services.Keys);
        Assert.Equal(3, services.Keys.Count(k => k.StartsWith("party-")));
        Check(services);
    }

    static void Check(Dictionary<string, string[]> services)
    {
        var seed = services["seed"];
        var seedPort = seed[Array.IndexOf(seed, "--port") + 1];
        foreach (var (name, args) in services)
        {
            var parse = CliApp.Build(Terminal.Of(TextWriter.Null, TextWriter.Null)).Parse(args);
            Assert.True(parse.Errors.Count == 0, $"{name}: {string.Join("; ", parse.Errors.Select(e => e.Message))}");
            for (int i = 0; i < args.Length - 1; i++)
            {
                if (args[i] != "--seed") continue;
                var m = Regex.Match(args[i + 1], @"^akka\.tcp://fate-llm@([a-z0-9-]+):(\d+)$");
                Assert.True(m.Success, $"{name}: seed address '{args[i + 1]}'");
                Assert.Equal("seed", m.Groups[1].Value);
                Assert.Equal(seedPort, m.Groups[2].Value);
            }
            if (args[0] == "party")
                Assert.Equal(name["party-".Length..], args[Array.IndexOf(args, "--org") + 1]);
            if (args[0] is "arbiter" or "party")
                Assert.Equal(name, args[Array.IndexOf(args, "--host") + 1]);
        }
    }
}
