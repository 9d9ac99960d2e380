using FateLlm.Training.Algorithms;
using System.CommandLine;
using System.Net;
using Akka.Actor;
using Akka.Configuration;
using Akka.Hosting;
using FateLlm.Actors.Nodes;
using FateLlm.Host.Board;
using FateLlm.Training.Data;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>seed, arbiter and party: long-running cluster nodes under Microsoft.Extensions.Hosting + Akka.Hosting.</summary>
internal static class NodeCommands
{
    sealed class Shared
    {
        public readonly Option<string> Host = Opt("--host", "Address other nodes reach this node at", "127.0.0.1");
        public readonly Option<int> Port = Opt("--port", "Remoting port (0 = any free port)", 0);
        public readonly Option<string?> BindHost = new("--bind-host")
        {
            Description = "Address to listen on when it differs from --host (behind NAT or in a container: 0.0.0.0, with the public address as --host)",
        };
        public readonly Option<int?> StreamPort = new("--stream-port") { Description = "Port of the blob stream, the data plane (default: any free port; fix it for a firewall)" };
        public readonly Option<string[]> Seed = new("--seed") { Description = "Seed node address, e.g. akka.tcp://fate-llm@127.0.0.1:4053 (repeatable)", AllowMultipleArgumentsPerToken = false };
        public readonly Option<string?> ConfigFile = new("--config") { Description = "HOCON file overriding hocon/ defaults" };
        public readonly Option<string?> DataDir = new("--data-dir") { Description = "Journal, blobs and outputs (default fate-llm-data/<node>)" };
        public readonly Option<string?> ModelsRoot = new("--models-root") { Description = "Folder to find job models in when their path does not exist here" };
        public readonly Option<string?> Tls = TlsOption();
        public readonly Option<string> LogLevel = Opt("--log-level", "Console: debug | info | warning | error | off (everything always goes to node.log in the data dir)", "info");
        public readonly Option<string[]> Serve = new("--serve") { Description = "Serve a model to other organizations, NAME=MODEL_DIR (repeatable; callers use ORG/NAME)" };
        public readonly Option<string> ServeAllow = Opt("--serve-allow", "Organizations allowed to call this node's services, comma-separated, or * for all", "*");
        public readonly Option<string?> Http = HttpOption("Serve Prometheus metrics at /metrics (and on an arbiter the live board at /) on HOST:PORT, e.g. 127.0.0.1:8080");
        public readonly Option<string?> HttpToken = HttpTokenOption();
        public readonly Option<string?> Otlp = new("--otlp") { Description = "Also export metrics over OTLP to this URL, e.g. http://127.0.0.1:4317" };
        public readonly Option<string?> Journal = new("--journal")
        {
            Description = "Arbiters: a PostgreSQL journal shared with the other arbiters, postgres://USER:PASSWORD@HOST:PORT/DATABASE (default: SQLite in the data dir)",
        };
        public Option[] All => [Host, BindHost, Port, StreamPort, Seed, ConfigFile, DataDir, ModelsRoot, Tls, LogLevel, Serve, ServeAllow, Http, HttpToken, Otlp, Journal];

        /// <summary>The node's web port and exporters, checked before the node starts.</summary>
        public NodeWeb Web(ParseResult p, NodeOptions node, Config config)
        {
            var token = p.GetValue(HttpToken) ?? config.GetString("fate-llm.board.token");
            try { return NodeWeb.Parse(p.GetValue(Http), token, p.GetValue(Otlp), node.Tls); }
            catch (ArgumentException e) { throw new UsageException(e.Message); }
        }

        IReadOnlyList<FateLlm.Actors.Services.ServedModelOptions> Services(ParseResult p)
        {
            var allowed = p.GetValue(ServeAllow)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
            if (allowed.Count == 0) throw new UsageException("--serve-allow names no organization (use * for all)");
            return (p.GetValue(Serve) ?? []).Select(sv =>
            {
                var eq = sv.IndexOf('=');
                if (eq <= 0 || eq == sv.Length - 1 || !System.Text.RegularExpressions.Regex.IsMatch(sv[..eq], "^[A-Za-z0-9_-]+$"))
                    throw new UsageException($"--serve '{sv}' must be NAME=MODEL_DIR with a name of letters, digits, '-' and '_'");
                var dir = Path.GetFullPath(sv[(eq + 1)..]);
                if (!File.Exists(Path.Combine(dir, "config.json"))) throw new UsageException($"--serve '{sv}': {dir} is not a model folder (no config.json)");
                return new FateLlm.Actors.Services.ServedModelOptions(sv[..eq], dir, allowed);
            }).ToList();
        }

        public NodeOptions Read(ParseResult p, NodeRole role, string defaultDir, string? org = null, IReadOnlyDictionary<string, string>? datasets = null)
        {
            var seeds = p.GetValue(Seed) ?? [];
            var port = p.GetValue(Port);
            if (role != NodeRole.Seed && seeds.Length == 0) throw new UsageException("--seed ADDRESS is required (e.g. akka.tcp://fate-llm@127.0.0.1:4053)");
            foreach (var s in seeds)
                if (!Address.TryParse(s, out _)) throw new UsageException($"--seed '{s}' is not an Akka address like akka.tcp://fate-llm@host:port");
            Config? overrides = null;
            if (p.GetValue(ConfigFile) is string file)
            {
                if (!File.Exists(file)) throw new FileNotFoundException($"{file}: config file not found", file);
                var text = File.ReadAllText(file);
                try { FateLlm.Actors.Configuration.HoconSyntax.Check(text, file); }
                catch (FateLlm.Actors.Configuration.HoconSyntaxException e) { throw new UsageException(e.Message); }
                try { overrides = ConfigurationFactory.ParseString(text); }
                catch (Exception e) { throw new UsageException($"{file}: not valid HOCON ({e.Message})"); }
            }
            var level = p.GetValue(LogLevel)!;
            try { FateLlm.Actors.Logging.NodeLog.Level(level); }
            catch (ArgumentException e) { throw new UsageException($"--log-level: {e.Message}"); }
            // --verbose brings Akka's own messages and stack traces back to the console.
            overrides = ConfigurationFactory.ParseString($"""
                fate-llm.logging.console-level = {level}
                fate-llm.logging.verbose = {(p.GetValue(Verbose) ? "on" : "off")}
                {(level == "debug" ? "akka.loglevel = DEBUG" : "")}
                """).WithFallback(overrides ?? Config.Empty);
            if (p.GetValue(ModelsRoot) is string root)
                overrides = ConfigurationFactory.ParseString($"fate-llm.models-root = \"{root.Replace("\\", "/")}\"").WithFallback(overrides ?? Config.Empty);
            var host = p.GetValue(Host)!;
            var bindHost = p.GetValue(BindHost);
            if (bindHost is not null && !IPAddress.TryParse(bindHost, out _))
                throw new UsageException($"--bind-host '{bindHost}' must be an IP address of this machine, e.g. 0.0.0.0");
            if (p.GetValue(StreamPort) is int streamPort)
            {
                if (streamPort is < 0 or > 65535) throw new UsageException($"--stream-port {streamPort} must be a port number (0–65535)");
                overrides = ConfigurationFactory.ParseString($"fate-llm.transfer.stream-port = {streamPort}").WithFallback(overrides);
            }
            var journal = p.GetValue(Journal);
            if (journal is not null)
            {
                if (role != NodeRole.Arbiter) throw new UsageException("--journal is for arbiters: seeds and parties keep no job state to share");
                try { JournalLocation.PostgresConnectionString(journal); }
                catch (ArgumentException e) { throw new UsageException(e.Message); }
            }
            var tls = LoadTls(p.GetValue(Tls), seeds);
            // A seed lists itself first so the first seed can form the cluster alone.
            if (role == NodeRole.Seed && seeds.Length == 0) seeds = [$"{(tls is null ? "akka.tcp" : "akka.ssl.tcp")}://fate-llm@{host}:{port}"];
            return new NodeOptions
            {
                Role = role, Host = host, BindHost = bindHost, Port = port, Seeds = seeds, Org = org, Tls = tls, Journal = journal,
                DataDir = p.GetValue(DataDir) ?? Path.Combine("fate-llm-data", defaultDir),
                Datasets = datasets ?? new Dictionary<string, string>(), Overrides = overrides, Services = Services(p),
            };
        }
    }

    /// <summary>
    /// Refuses a fixed port something already listens on. Akka's remoting asks for SO_REUSEADDR (so a restarted node
    /// gets its port back while the crashed one's connections linger), which .NET on Linux turns into SO_REUSEPORT too:
    /// a second node on a taken port would start, and the kernel would split the port's connections between the two.
    /// </summary>
    static void RefuseTaken(string listenHost, int port, string option)
    {
        if (port == 0) return;
        var probe = IPAddress.TryParse(listenHost, out var ip) && (ip.Equals(IPAddress.Any) || ip.Equals(IPAddress.IPv6Any)) ? "127.0.0.1" : listenHost;
        using var client = new System.Net.Sockets.TcpClient();
        try { client.ConnectAsync(probe, port).Wait(TimeSpan.FromSeconds(2)); }
        catch (AggregateException) { return; } // refused or unreachable: nothing listens there
        if (client.Connected)
            throw new InvalidOperationException($"{option} {port}: something already listens on {probe}:{port} (is this node already running?)");
    }

    /// <summary>The default columns of preference files (dpo's), for checking a party's data at start.</summary>
    static (string Prompt, string Chosen, string Rejected) PreferenceColumns()
    {
        var c = FederationNode.Reference().GetConfig("fate-llm.algorithms.dpo");
        return (c.GetString("prompt-column"), c.GetString("chosen-column"), c.GetString("rejected-column"));
    }

    static bool FirstObjectHas(string path, string key)
    {
        if (!File.Exists(path)) return false;
        var first = File.ReadLines(path).FirstOrDefault(l => l.Trim().Length > 0);
        try { return first is not null && System.Text.Json.Nodes.JsonNode.Parse(first) is System.Text.Json.Nodes.JsonObject o && o.ContainsKey(key); }
        catch (System.Text.Json.JsonException) { return false; } // the instruction reader names the line
    }

    public static IEnumerable<Command> Build(Terminal t, AlgorithmCatalog algorithms)
    {
        var shared = new Shared();
        var seed = new Command("seed", "Run a seed node (no training, no data): other nodes join through it");
        seed.With(p =>
        {
            var port = p.GetValue(shared.Port);
            if (port <= 0) throw new UsageException("a seed needs a fixed --port (e.g. 4053)");
            RunNode(t, p, shared, shared.Read(p, NodeRole.Seed, "seed") with { Algorithms = algorithms });
        }, shared.All);

        var arbiter = new Command("arbiter", "Run an arbiter node: hosts jobs and aggregation rounds");
        arbiter.With(p => RunNode(t, p, shared, shared.Read(p, NodeRole.Arbiter, "arbiter") with { Algorithms = algorithms }), shared.All);

        var org = Required<string>("--org", "This organization's id (its identity in the federation)");
        var data = new Option<string[]>("--data") { Description = "A private dataset, name=path.jsonl, or an evaluation task, name=task.yaml (repeatable)", Required = true };
        var taskPath = new Option<string[]>("--task-path") { Description = "A folder of evaluation task YAMLs for jobs' evaluation.tasks (repeatable; the built-in WordNet tasks need none)" };
        var party = new Command("party", "Run a party node next to an organization's private data");
        party.With(p =>
        {
            var id = p.GetValue(org)!;
            if (!System.Text.RegularExpressions.Regex.IsMatch(id, "^[A-Za-z0-9_-]+$")) throw new UsageException($"--org '{id}' may use letters, digits, '-' and '_' only");
            var datasets = new Dictionary<string, string>();
            foreach (var d in p.GetValue(data) ?? [])
            {
                var eq = d.IndexOf('=');
                if (eq <= 0 || eq == d.Length - 1) throw new UsageException($"--data '{d}' must be name=path.jsonl");
                var path = Path.GetFullPath(d[(eq + 1)..]);
                // Validate now: a bad line should stop the node with file:line, not fail a round later.
                if (path.EndsWith(".yaml") || path.EndsWith(".yml")) FateLlm.Training.Evaluation.Harness.TaskYaml.Load(path);
                else if (PreferenceColumns() is var (prompt, chosen, rejected) && FirstObjectHas(path, chosen))
                    FateLlm.Training.Algorithms.Dpo.PreferenceData.Read(path, prompt, chosen, rejected);
                else InstructionData.ReadJsonl(path, new DataOptions());
                datasets[d[..eq]] = path;
            }
            var folders = (p.GetValue(taskPath) ?? []).Select(Path.GetFullPath).ToList();
            foreach (var f in folders.Where(f => !Directory.Exists(f))) throw new UsageException($"--task-path '{f}' is not a folder");
            RunNode(t, p, shared, shared.Read(p, NodeRole.Party, "party-" + id, id, datasets) with { Algorithms = algorithms, TaskFolders = folders });
        }, [org, data, taskPath, .. shared.All]);
        return [seed, arbiter, party];
    }

    internal static Option<string?> TlsOption() =>
        new("--tls") { Description = "Folder with node.pfx and ca.crt (fate-llm certs issue): mutual TLS with the federation CA" };

    /// <summary>Loads --tls material and checks the seed addresses use the matching scheme.</summary>
    internal static FateLlm.Actors.Security.NodeTls? LoadTls(string? dir, IEnumerable<string> seeds)
    {
        foreach (var s in seeds)
        {
            var ssl = s.StartsWith("akka.ssl.tcp://");
            if (dir is not null && !ssl) throw new UsageException($"--seed '{s}': with --tls, seeds are akka.ssl.tcp:// addresses");
            if (dir is null && ssl) throw new UsageException($"--seed '{s}' is a TLS address: pass --tls DIR");
        }
        return dir is null ? null : FateLlm.Actors.Security.NodeTls.Load(dir);
    }

    internal static Option<string?> HttpOption(string description) => new("--http") { Description = description };

    internal static Option<string?> HttpTokenOption() => new("--http-token")
    {
        Description = "A token (16+ characters) every request to --http must carry (Authorization: Bearer, or ?token= once); needed for a non-loopback bind without --tls",
    };

    static void RunNode(Terminal t, ParseResult p, Shared shared, NodeOptions options)
    {
        var config = FederationNode.BuildConfig(options);
        FederationNode.CheckOwnIdentity(options, config);
        var listen = options.BindHost ?? options.Host;
        RefuseTaken(listen, options.Port, "--port");
        RefuseTaken(listen, config.GetInt("fate-llm.transfer.stream-port"), p.GetValue(shared.StreamPort) is null ? "fate-llm.transfer.stream-port =" : "--stream-port");
        var web = shared.Web(p, options, config);
        if (web.Endpoint is not null && options.Role == NodeRole.Arbiter) options = options with { Board = new FateLlm.Actors.Board.BoardFeed() };
        using var running = web.Start(options.Board, t.Out.WriteLine);
        Run(t, options, config);
    }

    static void Run(Terminal t, NodeOptions options, Config config)
    {
        FederationNode? started = null;
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.AddAkka(options.SystemName, (akka, services) =>
        {
            akka.AddHocon(config, HoconAddMode.Replace);
            if (options.Tls is { } tls) akka.AddSetup(tls.Setup());
            akka.AddStartup((system, _) =>
            {
                var node = started = FederationNode.Attach(system, options);
                var self = Akka.Cluster.Cluster.Get(system).SelfAddress;
                t.Out.WriteLine($"{options.Role.ToString().ToLowerInvariant()}{(options.Org is null ? "" : " " + options.Org)} node at {self}, data in {Path.GetFullPath(options.DataDir)}");
                // Downed by the split-brain resolver or shut down: end the process too.
                var lifetime = services.GetRequiredService<IHostApplicationLifetime>();
                system.WhenTerminated.ContinueWith(_ => lifetime.StopApplication());
            });
        });
        using var host = builder.Build();
        host.Run();
        // A party node refused because its organization is already served ends with that reason, not silently.
        if (started?.Refused is { } refused) throw new InvalidOperationException(refused);
    }
}
