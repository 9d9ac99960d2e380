using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Services;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Inference;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary><c>fate-llm infer</c>: InferDPT against a model another organization serves in the cluster.</summary>
internal static class InferCommands
{
    /// <summary>What `infer` and `pdss rationales` share: the remote service, ε, the out-of-kit policy, the sampler seed.</summary>
    sealed class RemoteOptions
    {
        readonly Akka.Configuration.Config _defaults = FederationNode.Reference().GetConfig("fate-llm.inferdpt");
        public readonly Option<string> Remote = Required<string>("--remote", "The remote model as ORG/SERVICE (a node started with --serve SERVICE=DIR)");
        public readonly Option<string> Epsilon;
        public readonly Option<string?> Org = new("--org") { Description = "This organization (without --tls; under TLS it is the certificate's)" };
        public readonly Option<string> OutOfKit;
        public readonly Option<long> Seed = Opt("--sample-seed", "Seed of the perturbation sampler (prompt i uses seed + i)", 0L);
        public readonly Option<int> MaxNew;

        public RemoteOptions()
        {
            Epsilon = Opt("--epsilon", "ε per perturbed token (inf sends the prompt as it is)", _defaults.GetString("epsilon"));
            OutOfKit = Opt("--out-of-kit", "mask | perturb: tokens the kit does not cover", _defaults.GetString("out-of-kit"));
            MaxNew = Opt("--max-new-tokens", "Tokens generated remotely (and locally)", _defaults.GetInt("max-new-tokens"));
        }

        public string MaskText => _defaults.GetString("mask-text");
        static readonly int MaxPrompts = FederationNode.Reference().GetInt("fate-llm.services.max-prompts");
        public string LocalTemplate => _defaults.GetString("local-template");
        public Option[] All => [Remote, Epsilon, Org, OutOfKit, Seed, MaxNew, JobCommands.Seed, JobCommands.Timeout, JobCommands.Host, JobCommands.Tls];

        /// <summary>Checks the options, joins the cluster, fetches the service's kit and runs <paramref name="action"/> with a session.</summary>
        public void Run(ParseResult p, Action<RemoteSession> action)
        {
            var eps = ParseEpsilon(p.GetValue(Epsilon)!);
            var policy = p.GetValue(OutOfKit) switch
            {
                "mask" => Training.Inference.OutOfKit.Mask,
                "perturb" => Training.Inference.OutOfKit.Perturb,
                var other => throw new UsageException($"--out-of-kit '{other}' must be mask or perturb"),
            };
            var (remoteOrg, service) = ParseRemote(p.GetValue(Remote)!);
            var caller = p.GetValue(Org) ?? (p.GetValue(JobCommands.Tls) is null ? throw new UsageException("--org ORG is required without --tls (under TLS the certificate names it)") : null);
            var timeout = TimeSpan.FromSeconds(p.GetValue(JobCommands.Timeout));
            var maxNew = p.GetValue(MaxNew);
            JobCommands.WithMember(p, async node =>
            {
                var org = caller ?? node.Options.Tls!.Organization;
                var kit = await ModelServiceClient.FetchKit(node, remoteOrg, service, org, timeout);
                // Requests of at most the services' default max-prompts each, so a large batch is not refused as a whole.
                string[] Ask(string[] perturbed) => [.. perturbed.Chunk(MaxPrompts).SelectMany(chunk => ModelServiceClient.Call<GenerateReply>(node, remoteOrg,
                    new GenerateRequest(Guid.NewGuid().ToString("N"), org, service, chunk, maxNew, 0, p.GetValue(Seed)), timeout).GetAwaiter().GetResult().Answers)];
                action(new RemoteSession(new TokenPerturbation(kit), kit.OpenTokenizer(Path.Combine(Path.GetTempPath(), "fate-llm-kits")),
                    new PerturbationOptions(eps, policy, p.GetValue(Seed)), MaskText, Ask, maxNew));
            });
        }
    }

    sealed record RemoteSession(TokenPerturbation Mechanism, Training.Tokenization.ITextTokenizer RemoteTokenizer, PerturbationOptions Perturbation, string MaskText,
        Func<string[], string[]> Ask, int MaxNewTokens);

    public static Command Build(Terminal t)
    {
        var remote = new RemoteOptions();
        var model = Required<string>("--model", "The local (small) model folder: it writes the final answers");
        var prompt = new Option<string?>("--prompt") { Description = "One prompt" };
        var input = new Option<string?>("--input") { Description = "Prompts as instruction JSONL (its prompt column), answered in batch" };
        var output = new Option<string?>("--output") { Description = "With --input: write one JSON line per prompt here (default: stdout)" };
        var cmd = new Command("infer", "Ask a remote model without revealing the prompt (InferDPT): perturb locally, answer locally from the remote answer");
        cmd.With(p =>
        {
            var prompts = (p.GetValue(prompt), p.GetValue(input)) switch
            {
                ({ } one, null) => new List<string> { one },
                (null, { } file) => InstructionData.ReadJsonl(file, new DataOptions()).Select(e => e.Prompt).ToList(),
                _ => throw new UsageException("give exactly one of --prompt TEXT and --input FILE.jsonl"),
            };
            if (!Directory.Exists(p.GetValue(model))) throw new UsageException($"--model '{p.GetValue(model)}' is not a folder");
            remote.Run(p, r =>
            {
                using var local = ServedModel.Open(p.GetValue(model)!);
                var answers = InferDpt.Answer(r.Mechanism, r.RemoteTokenizer, local, prompts, r.Perturbation, r.MaskText, remote.LocalTemplate, r.Ask,
                    new SamplingOptions { MaxNewTokens = r.MaxNewTokens });
                Write(t, answers, p.GetValue(input) is null ? null : p.GetValue(output));
            });
        }, [model, prompt, input, output, .. remote.All]);
        return cmd;
    }

    /// <summary><c>fate-llm pdss rationales</c>: a party's training file with a rationale column from the remote model, which sees only perturbed prompts.</summary>
    public static Command Pdss(Terminal t)
    {
        var remote = new RemoteOptions();
        var input = Required<string>("--input", "The party's training JSONL (prompt and response columns)");
        var output = Required<string>("--output", "The same lines with the rationale column added");
        var column = Opt("--column", "The rationale column's name", "rationale");
        var rationales = new Command("rationales", "Ask a remote model for rationales of private training prompts through InferDPT (PDSS / FedCoT)");
        rationales.With(p =>
        {
            var prompts = InstructionData.ReadJsonl(p.GetValue(input)!, new DataOptions()).Select(e => e.Prompt).ToList();
            remote.Run(p, r =>
            {
                var sent = InferDpt.PerturbAll(r.Mechanism, r.RemoteTokenizer, prompts, r.Perturbation, r.MaskText);
                var answers = r.Ask([.. sent.Select(x => x.Text)]);
                RationaleData.Write(p.GetValue(input)!, p.GetValue(output)!, p.GetValue(column)!, answers);
                t.Out.WriteLine($"{answers.Length} rationales in {p.GetValue(output)}; ε per prompt {sent.Min(x => x.EpsilonTotal):G4}–{sent.Max(x => x.EpsilonTotal):G4}, " +
                    $"{sent.Sum(x => x.Masked)} of {sent.Sum(x => x.Tokens.Count)} tokens masked");
            });
        }, [input, output, column, .. remote.All]);
        return new Command("pdss", "PDSS / FedCoT: rationales from a remote model for private prompts") { rationales };
    }

    static double ParseEpsilon(string text) =>
        text is "inf" or "∞" ? double.PositiveInfinity
        : double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
        : throw new UsageException($"--epsilon '{text}' must be a positive number or inf");

    static (string, string) ParseRemote(string text)
    {
        try { return ModelServiceClient.ParseRemote(text); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    static void Write(Terminal t, IReadOnlyList<InferDptAnswer> answers, string? file)
    {
        if (file is null && answers.Count == 1)
        {
            var a = answers[0];
            t.Out.WriteLine($"sent ({a.Tokens} tokens, {a.Masked} masked, ε = {a.Epsilon:G4}): {a.Perturbed}");
            t.Out.WriteLine($"remote answer: {a.RemoteAnswer}");
            t.Out.WriteLine($"answer: {a.Answer}");
            return;
        }
        // ε = ∞ (prompts sent as they are) is written as "Infinity", not refused by the serializer.
        var json = new JsonSerializerOptions { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
        var lines = answers.Select(a => JsonSerializer.Serialize(a, json));
        if (file is null) foreach (var l in lines) t.Out.WriteLine(l);
        else
        {
            File.WriteAllLines(file, lines);
            t.Out.WriteLine($"{answers.Count} answers in {file}; ε per prompt {answers.Min(a => a.Epsilon):G4}–{answers.Max(a => a.Epsilon):G4}");
        }
    }
}
