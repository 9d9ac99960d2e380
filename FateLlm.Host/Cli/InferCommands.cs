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
    public static Command Build()
    {
        var defaults = FederationNode.Reference().GetConfig("fate-llm.inferdpt");
        var model = Required<string>("--model", "The local (small) model folder: it writes the final answers");
        var remote = Required<string>("--remote", "The remote model as ORG/SERVICE (a node started with --serve SERVICE=DIR)");
        var epsilon = Opt("--epsilon", "ε per perturbed token (inf sends the prompt as it is)", defaults.GetString("epsilon"));
        var prompt = new Option<string?>("--prompt") { Description = "One prompt" };
        var input = new Option<string?>("--input") { Description = "Prompts as instruction JSONL (its prompt column), answered in batch" };
        var output = new Option<string?>("--output") { Description = "With --input: write one JSON line per prompt here (default: stdout)" };
        var org = new Option<string?>("--org") { Description = "This organization (without --tls; under TLS it is the certificate's)" };
        var outOfKit = Opt("--out-of-kit", "mask | perturb: tokens the kit does not cover", defaults.GetString("out-of-kit"));
        var seed = Opt("--sample-seed", "Seed of the perturbation sampler (prompt i uses seed + i)", 0L);
        var maxNew = Opt("--max-new-tokens", "Tokens generated remotely and locally", defaults.GetInt("max-new-tokens"));
        var cmd = new Command("infer", "Ask a remote model without revealing the prompt (InferDPT): perturb locally, answer locally from the remote answer");
        cmd.With(p =>
        {
            var eps = ParseEpsilon(p.GetValue(epsilon)!);
            var policy = p.GetValue(outOfKit) switch
            {
                "mask" => OutOfKit.Mask,
                "perturb" => OutOfKit.Perturb,
                var other => throw new UsageException($"--out-of-kit '{other}' must be mask or perturb"),
            };
            var (remoteOrg, service) = Remote(p.GetValue(remote)!);
            var prompts = (p.GetValue(prompt), p.GetValue(input)) switch
            {
                ({ } one, null) => new List<string> { one },
                (null, { } file) => InstructionData.ReadJsonl(file, new DataOptions()).Select(e => e.Prompt).ToList(),
                _ => throw new UsageException("give exactly one of --prompt TEXT and --input FILE.jsonl"),
            };
            if (!Directory.Exists(p.GetValue(model))) throw new UsageException($"--model '{p.GetValue(model)}' is not a folder");
            var tlsDir = p.GetValue(JobCommands.Tls);
            var caller = p.GetValue(org) ?? (tlsDir is null ? throw new UsageException("--org ORG is required without --tls (under TLS the certificate names it)") : null);
            var timeout = TimeSpan.FromSeconds(p.GetValue(JobCommands.Timeout));
            var maxNewTokens = p.GetValue(maxNew);
            JobCommands.WithClient(p, async node =>
            {
                caller ??= node.Options.Tls!.Organization;
                var kit = await ModelServiceClient.FetchKit(node, remoteOrg, service, caller, timeout);
                var mechanism = new TokenPerturbation(kit);
                var remoteTokenizer = kit.OpenTokenizer(Path.Combine(Path.GetTempPath(), "fate-llm-kits"));
                using var local = ServedModel.Open(p.GetValue(model)!);
                string[] Ask(string[] perturbed) => ModelServiceClient.Call<GenerateReply>(node, remoteOrg,
                    new GenerateRequest(Guid.NewGuid().ToString("N"), caller, service, perturbed, maxNewTokens, 0, p.GetValue(seed)), timeout).GetAwaiter().GetResult().Answers;
                var answers = InferDpt.Answer(mechanism, remoteTokenizer, local, prompts, new PerturbationOptions(eps, policy, p.GetValue(seed)),
                    defaults.GetString("mask-text"), defaults.GetString("local-template"), Ask, new SamplingOptions { MaxNewTokens = maxNewTokens });
                Write(answers, p.GetValue(input) is null ? null : p.GetValue(output));
            });
        }, model, remote, epsilon, prompt, input, output, org, outOfKit, seed, maxNew, JobCommands.Seed, JobCommands.Timeout, JobCommands.Host, JobCommands.Tls);
        return cmd;
    }

    static double ParseEpsilon(string text) =>
        text is "inf" or "∞" ? double.PositiveInfinity
        : double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
        : throw new UsageException($"--epsilon '{text}' must be a positive number or inf");

    static (string, string) Remote(string text)
    {
        try { return ModelServiceClient.ParseRemote(text); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    static void Write(IReadOnlyList<InferDptAnswer> answers, string? file)
    {
        if (file is null && answers.Count == 1)
        {
            var a = answers[0];
            Out.WriteLine($"sent ({a.Tokens} tokens, {a.Masked} masked, ε = {a.Epsilon:G4}): {a.Perturbed}");
            Out.WriteLine($"remote answer: {a.RemoteAnswer}");
            Out.WriteLine($"answer: {a.Answer}");
            return;
        }
        var lines = answers.Select(a => JsonSerializer.Serialize(a));
        if (file is null) foreach (var l in lines) Out.WriteLine(l);
        else
        {
            File.WriteAllLines(file, lines);
            Out.WriteLine($"{answers.Count} answers in {file}; ε per prompt {answers.Min(a => a.Epsilon):G4}–{answers.Max(a => a.Epsilon):G4}");
        }
    }
}
