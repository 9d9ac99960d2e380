using System.CommandLine;
using System.Globalization;
using FateLlm.Actors.Jobs;
using FateLlm.Host.Board;
using FateLlm.Host.Experiments;
using FateLlm.Host.Zoo;
using FateLlm.Training.IO;
using Spectre.Console;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>
/// <c>demo</c> (the embedded default) and <c>experiment paper</c>: the FATE-LLM experiment on WordNet through an
/// in-process federation (seed + arbiter + 3 parties as separate actor systems on 127.0.0.1).
/// </summary>
internal static class DemoCommand
{
    public static Command Build(Terminal t)
    {
        var outDir = Opt("--out", "Working folder (data, node state, outputs)", Path.Combine("runs", "demo"));
        var rounds = Opt("--rounds", "Federated rounds", ExperimentSettings.Demo("").Rounds);
        var secure = Opt("--secure", "Five parties over mutual TLS with SecAgg+ and distributed DP; one party is killed mid-round", false);
        var noise = Opt("--noise", "With --secure: DP noise multiplier z", 0.1);
        var kill = Opt("--kill", "With --secure: the party to kill when round 2's secure aggregation starts ('none' to keep all)", "gym");
        var clip = ClipOption();
        var zoo = ZooOption();
        var http = NodeCommands.HttpOption("Serve the live board (and Prometheus metrics at /metrics) on HOST:PORT while the demo runs, e.g. 127.0.0.1:8080");
        var token = NodeCommands.HttpTokenOption();
        return new Command("demo", "Federated LoRA on WordNet with 3 parties: live progress, then local vs federated vs centralized").With(p =>
        {
            var s = ExperimentSettings.Demo(Path.GetFullPath(p.GetValue(outDir)!)) with
            {
                Rounds = TrainingCommands.Positive(p.GetValue(rounds), "--rounds"), ZooRoot = p.GetValue(zoo)!,
            };
            NodeWeb web;
            try { web = NodeWeb.Parse(p.GetValue(http), p.GetValue(token), null, null); }
            catch (ArgumentException e) { throw new UsageException(e.Message); }
            if (web.Endpoint is not null) s = s with { Board = new FateLlm.Actors.Board.BoardFeed() };
            using var running = web.Start(s.Board, line => t.Ansi.MarkupLine($"[bold]{Markup.Escape(line)}[/]"));
            if (p.GetValue(secure))
            {
                var victim = p.GetValue(kill)!;
                if (victim != "none" && !PrivateFederation.FiveParties.ContainsKey(victim))
                    throw new UsageException($"--kill '{victim}' is not one of {string.Join(", ", PrivateFederation.FiveParties.Keys)} or none");
                if (!(p.GetValue(noise) > 0)) throw new UsageException("--noise must be > 0");
                if (!(p.GetValue(clip) > 0)) throw new UsageException("--clip must be > 0");
                t.Ansi.MarkupLine("[bold]FateLlm secure demo[/]: 5 organizations over mutual TLS, SecAgg+ (t = 3 of 5) and distributed DP on FedAvg LoRA");
                RunPrivate(t, s with { TrainPerParty = 300 }, [p.GetValue(noise)], victim == "none" ? null : victim, p.GetValue(clip));
                return;
            }
            t.Ansi.MarkupLine("[bold]FateLlm demo[/]: WordNet definition generation, 3 organizations with non-IID domains, FedAvg LoRA");
            Run(t, s);
        }, outDir, rounds, secure, noise, kill, clip, zoo, http, token);
    }

    public static Command PrivacyExperiment(Terminal t)
    {
        var outDir = Opt("--out", "Working folder", Path.Combine("runs", "privacy"));
        var zoo = ZooOption();
        var noises = Opt("--noise", "Comma-separated DP noise multipliers; 'none' is secure aggregation without DP", "none,0.001,0.1,0.5,2");
        var clip = ClipOption();
        return new Command("privacy", "ε versus quality: 5-party secure federated LoRA at several DP noise multipliers").With(p =>
        {
            List<double?> zs;
            try { zs = p.GetValue(noises)!.Split(',').Select(x => x.Trim() == "none" ? (double?)null : double.Parse(x, System.Globalization.CultureInfo.InvariantCulture)).ToList(); }
            catch (FormatException) { throw new UsageException($"--noise '{p.GetValue(noises)}' must be comma-separated numbers or 'none'"); }
            if (zs.Any(z => z is <= 0)) throw new UsageException("--noise values must be > 0");
            if (!(p.GetValue(clip) > 0)) throw new UsageException("--clip must be > 0");
            var s = ExperimentSettings.Demo(Path.GetFullPath(p.GetValue(outDir)!)) with { TrainPerParty = 300, ZooRoot = p.GetValue(zoo)! };
            var results = RunPrivate(t, s, zs, null, p.GetValue(clip));
            var md = new System.Text.StringBuilder("| noise multiplier z | ε (δ = 1e-5) | ROUGE-L | BLEU-4 | test loss | minutes |\n|---|---|---|---|---|---|\n");
            foreach (var r in results)
                md.AppendLine($"| {(r.NoiseMultiplier is { } z ? z.ToString("G3") : "no DP")} | {(r.Epsilon is { } e ? e.ToString("F1") : "∞")} | {r.Scores.RougeL:F2} | {r.Scores.Bleu4:F2} | {r.Scores.Loss:F3} | {r.Seconds / 60:F1} |");
            var path = Path.Combine(s.OutDir, "results-privacy.md");
            File.WriteAllText(path, md.ToString());
            t.Ansi.WriteLine(md.ToString());
            t.Ansi.MarkupLine($"written to [bold]{path}[/]");
        }, outDir, noises, clip, zoo);
    }

    static Option<double> ClipOption() => Opt("--clip", "Initial DP clip norm C (adaptive clipping moves it toward the median update norm)", 1.0);

    static List<PrivateRunResult> RunPrivate(Terminal t, ExperimentSettings s, IReadOnlyList<double?> noises, string? kill, double clip)
    {
        var results = new PrivateFederation(s, line => t.Ansi.WriteLine(line), clip).RunAsync(noises, kill, RoundPrinter(t)).GetAwaiter().GetResult();
        foreach (var r in results)
        {
            var st = r.Status;
            t.Ansi.MarkupLine($"job [bold]{st.JobId}[/]: {st.State}, {st.CompletedRounds}/{st.TotalRounds} rounds in {r.Seconds / 60:F1} min" +
                (r.Killed is null ? "" : $", party '{r.Killed}' crashed mid-protocol in round 2"));
            t.Ansi.MarkupLine(r.Epsilon is { } e
                ? $"  differential privacy spent: [bold](ε = {e:F2}, δ = {r.Delta:G2})[/] at noise multiplier z = {r.NoiseMultiplier:G3}"
                : "  no differential privacy (secure aggregation only)");
            t.Ansi.MarkupLine($"  all-domain test set: ROUGE-L {r.Scores.RougeL:F2}, BLEU-4 {r.Scores.Bleu4:F2}, loss {r.Scores.Loss:F3}; outputs in {st.OutputDir}");
        }
        return results;
    }

    static Progress RoundPrinter(Terminal t)
    {
        var printed = new Dictionary<string, int>();
        return new Progress(st =>
        {
            var n = printed.GetValueOrDefault(st.JobId);
            for (; n < st.Rounds.Length; n++)
            {
                t.Ansi.MarkupLine($"[grey]{st.JobId}[/]");
                JobCommands.PrintRound(t, st.Rounds[n], st.TotalRounds);
            }
            printed[st.JobId] = n;
        });
    }

    public static Command Experiment(Terminal t)
    {
        var quick = Opt("--quick", "Fewer examples per party (400 train, 100 test): the same comparison in about a third of the time", false);
        var outDir = Opt("--out", "Working folder", Path.Combine("runs", "paper"));
        var seeds = Opt("--seeds", "Comma-separated seeds", "1,2,3");
        var evalOn = Opt("--eval-on", "test | dev: score on the all-domain test set, or on the parties' pooled dev sets (for tuning: never tune on test)", "test");
        var methods = Opt("--methods", "Comma-separated PEFT methods", "lora,ptuning-v2");
        var rounds = new Option<int?>("--rounds") { Description = "Federated rounds (= local epochs of every other setting); default 5" };
        var lrLora = new Option<double?>("--lr-lora") { Description = "LoRA learning rate" };
        var lrPrefix = new Option<double?>("--lr-prefix") { Description = "P-Tuning v2 learning rate" };
        var perParty = new Option<int?>("--train-per-party") { Description = "Training examples per party" };
        var full = Opt("--full-baseline", "Also federate full fine-tuning once (communication comparison)", true);
        var zoo = ZooOption();
        var paper = new Command("paper", "Reproduce the FATE-LLM comparison: zero-shot, each party alone, federated, centralized; LoRA and P-Tuning v2; intervals; communication").With(p =>
        {
            var dir = Path.GetFullPath(p.GetValue(outDir)!);
            var s = p.GetValue(quick) ? ExperimentSettings.Quick(dir) : ExperimentSettings.Full(dir);
            s = s with { Seeds = Seeds(p.GetValue(seeds)!) };
            var m = p.GetValue(methods)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (m.Length == 0 || m.Any(x => x is not ("lora" or "ptuning-v2"))) throw new UsageException($"--methods '{p.GetValue(methods)}': each must be lora or ptuning-v2");
            s = s with
            {
                Methods = m, FullFineTuningBaseline = p.GetValue(full), ZooRoot = p.GetValue(zoo)!,
                EvaluateOn = EvaluateOn(p.GetValue(evalOn)!),
            };
            if (p.GetValue(rounds) is int r) s = s with { Rounds = TrainingCommands.Positive(r, "--rounds") };
            if (p.GetValue(perParty) is int n) s = s with { TrainPerParty = TrainingCommands.Positive(n, "--train-per-party") };
            if (p.GetValue(lrLora) is double a) s = s with { LoraLearningRate = a > 0 ? a : throw new UsageException("--lr-lora must be > 0") };
            if (p.GetValue(lrPrefix) is double b) s = s with { PrefixLearningRate = b > 0 ? b : throw new UsageException("--lr-prefix must be > 0") };
            Run(t, s);
        }, quick, outDir, seeds, evalOn, methods, rounds, lrLora, lrPrefix, perParty, full, zoo);
        var cmd = new Command("experiment", "Experiments");
        cmd.Subcommands.Add(paper);
        cmd.Subcommands.Add(PrivacyExperiment(t));
        cmd.Subcommands.Add(OffsiteExperimentCommand(t));
        cmd.Subcommands.Add(IprExperimentCommand(t));
        cmd.Subcommands.Add(FedKSeedExperimentCommand(t));
        cmd.Subcommands.Add(FedCoLlmExperimentCommand(t));
        cmd.Subcommands.Add(FedMktExperimentCommand(t));
        cmd.Subcommands.Add(InferencePrivacyExperimentCommand(t));
        cmd.Subcommands.Add(DpoExperimentCommand(t));
        cmd.Subcommands.Add(CommunicationExperimentCommand(t));
        cmd.Subcommands.Add(StragglerExperimentCommand(t));
        cmd.Subcommands.Add(FdktExperimentCommand(t));
        return cmd;
    }

    static Command IprExperimentCommand(Terminal t)
    {
        var quick = Opt("--quick", "One seed, 3 rounds, 200 training and 30 test examples per party", false);
        var outDir = Opt("--out", "Working folder", Path.Combine("runs", "ipr"));
        var seeds = Opt("--seeds", "Comma-separated seeds (the full run's; --quick runs seed 1 unless given)", "1,2,3");
        var zoo = ZooOption();
        return new Command("ipr", "FedIPR: own-key verification, false positives, key-less fine-tuning, pruning, SecAgg and DP, and the watermark's cost in quality").With(p =>
        {
            var s = Settings(p, quick, outDir, seeds, zoo, quickRounds: 3);
            var result = new IprExperiment(s, new IprExperimentOptions(), IprCommands.DefaultThresholds(), line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
            IprExperiment.Write(result, s.OutDir);
            t.Ansi.WriteLine(IprExperiment.Markdown(result));
            t.Ansi.MarkupLine($"results-ipr.md and results-ipr.json in [bold]{s.OutDir}[/] ({result.Seconds / 60:F1} min)");
        }, quick, outDir, seeds, zoo);
    }

    /// <summary>
    /// A paradigm experiment's command: --quick, --out, --seeds, --zoo and its own options; <paramref name="run"/> runs it,
    /// writes its results and returns the markdown and minutes to print.
    /// </summary>
    static Command ParadigmExperiment(Terminal t, string name, string description, string quickHelp, int quickRounds,
        Func<ParseResult, ExperimentSettings, bool, (string Markdown, double Seconds)> run, params Option[] extra)
    {
        var quick = Opt("--quick", quickHelp, false);
        var outDir = Opt("--out", "Working folder", Path.Combine("runs", name));
        var seeds = Opt("--seeds", "Comma-separated seeds (the full run's; --quick runs seed 1 unless given)", "1,2,3");
        var zoo = ZooOption();
        return new Command(name, description).With(p =>
        {
            var s = Settings(p, quick, outDir, seeds, zoo, quickRounds);
            var (markdown, seconds) = run(p, s, p.GetValue(quick));
            t.Ansi.WriteLine(markdown);
            t.Ansi.MarkupLine($"results-{name}.md and results-{name}.json in [bold]{s.OutDir}[/] ({seconds / 60:F1} min)");
        }, [quick, outDir, seeds, zoo, .. extra]);
    }

    static EvaluationSet EvaluateOn(string value) => value switch
    {
        "test" => EvaluationSet.Test, "dev" => EvaluationSet.Dev,
        var x => throw new UsageException($"--eval-on '{x}' is not test or dev"),
    };

    static Command FedKSeedExperimentCommand(Terminal t)
    {
        var evalOn = Opt("--eval-on", "test | dev: score on the all-domain test set, or on the parties' pooled dev sets (for tuning)", "test");
        var defaults = new FedKSeedOptions();
        var lr = Opt("--learning-rate", "η of the zeroth-order steps", defaults.LearningRate);
        var steps = new Option<int?>("--steps") { Description = $"τ: steps per party and round (default {defaults.Steps}, {FedKSeedOptions.Quick.Steps} with --quick)" };
        return ParadigmExperiment(t, "fedkseed", "FedKSeed-Pro: full-parameter zeroth-order tuning with seeds against federated LoRA given the same training time; bytes per round; replay cost",
            "One seed, 2 rounds, 100 steps per round, 200 training and 30 test examples per party", 2, (p, s, quick) =>
            {
                s = s with { EvaluateOn = EvaluateOn(p.GetValue(evalOn)!) };
                var o = (quick ? FedKSeedOptions.Quick : defaults) with { LearningRate = p.GetValue(lr) > 0 ? p.GetValue(lr) : throw new UsageException("--learning-rate must be > 0") };
                if (p.GetValue(steps) is int n) o = o with { Steps = TrainingCommands.Positive(n, "--steps") };
                var result = new FedKSeedExperiment(s, o, line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
                FedKSeedExperiment.Write(result, s.OutDir);
                return (FedKSeedExperiment.Markdown(result), result.Seconds);
            }, evalOn, lr, steps);
    }

    static Command CommunicationExperimentCommand(Terminal t)
    {
        var evalOn = Opt("--eval-on", "test | dev: score on the all-domain test set, or on the parties' pooled dev sets (for tuning)", "test");
        var part = Opt("--part", "all | compression | ranks: which settings to run (fp32 is the baseline of both)", "all");
        return ParadigmExperiment(t, "communication",
            "Update compression (fp16, int8, NF4, top-1 % with and without error feedback, up and down) through the federation: bytes per party and round against ROUGE-L, paired with fp32",
            "One seed, 3 rounds, 200 training and 30 test examples per party", 3, (p, s, _) =>
            {
                s = s with { EvaluateOn = EvaluateOn(p.GetValue(evalOn)!), FullFineTuningBaseline = false };
                var which = p.GetValue(part) switch
                {
                    "all" => CommunicationExperiment.Part.All, "compression" => CommunicationExperiment.Part.Compression, "ranks" => CommunicationExperiment.Part.Ranks,
                    var x => throw new UsageException($"--part '{x}' is not all, compression or ranks"),
                };
                var result = new CommunicationExperiment(s, line => t.Ansi.WriteLine(line)).RunAsync(which, RoundPrinter(t)).GetAwaiter().GetResult();
                CommunicationExperiment.Write(result, s.OutDir);
                return (CommunicationExperiment.Markdown(result), result.Seconds);
            }, evalOn, part);
    }

    static Command StragglerExperimentCommand(Terminal t)
    {
        var slowdown = Opt("--slowdown", "How many times slower the straggler trains (fate-llm.party.slowdown on its node)", 4.0);
        var buffer = new Option<int?>("--buffer") { Description = "K, updates per buffered flush (default: parties − 1)" };
        var evalOn = Opt("--eval-on", "test | dev: final scores on the all-domain test set, or on the parties' pooled dev sets (for tuning)", "test");
        return ParadigmExperiment(t, "stragglers",
            "Synchronous FedAvg against the buffered schedule (FedBuff) with one party slowed and with none: dev loss against wall time, time to sync's final dev loss, final scores",
            "One seed, 3 rounds, 200 training and 30 test examples per party", 3, (p, s, _) =>
            {
                s = s with { EvaluateOn = EvaluateOn(p.GetValue(evalOn)!), FullFineTuningBaseline = false };
                var factor = p.GetValue(slowdown) >= 1 ? p.GetValue(slowdown) : throw new UsageException("--slowdown must be ≥ 1");
                if (p.GetValue(buffer) is < 1) throw new UsageException("--buffer must be ≥ 1");
                var result = new StragglerExperiment(s, line => t.Ansi.WriteLine(line), factor, p.GetValue(buffer)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
                StragglerExperiment.Write(result, s.OutDir);
                return (StragglerExperiment.Markdown(result), result.Seconds);
            }, slowdown, buffer, evalOn);
    }

    static Command FdktExperimentCommand(Terminal t)
    {
        var defaults = new FdktExperimentOptions();
        var server = Opt("--server-model", "The arbiter's LLM (a zoo model)", defaults.ServerModel);
        var party = Opt("--party-model", "Every party's small model (a zoo model)", defaults.PartyModel);
        var epsilons = Opt("--epsilons", "Comma-separated target ε of the parties' DP-SGD (inf: none)", string.Join(",", defaults.Epsilons.Select(e => double.IsPositiveInfinity(e) ? "inf" : e.ToString(CultureInfo.InvariantCulture))));
        return ParadigmExperiment(t, "fdkt",
            "FDKT: each party's small model on its own data, own + DP synthetic, own + LLM-augmented (FDKT) and zero-shot per target ε; membership-inference AUC and verbatim copies",
            "200 training and 30 test examples per party, 32 synthetic per category, 64 augmented per party", 1, (p, s, quick) =>
            {
                s = s with { FullFineTuningBaseline = false };
                double Epsilon(string x) => x.Trim() is "inf" or "∞" ? double.PositiveInfinity
                    : double.TryParse(x, NumberStyles.Float, CultureInfo.InvariantCulture, out var e) && e > 0 ? e
                    : throw new UsageException($"--epsilons: '{x}' is not a positive number or inf");
                var o = (quick ? FdktExperimentOptions.Quick : defaults) with
                {
                    ServerModel = p.GetValue(server)!, PartyModel = p.GetValue(party)!, Epsilons = [.. p.GetValue(epsilons)!.Split(',').Select(Epsilon)],
                };
                var result = new FdktExperiment(s, o, line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
                FdktExperiment.Write(result, s.OutDir);
                return (FdktExperiment.Markdown(result), result.Seconds);
            }, server, party, epsilons);
    }

    static Command DpoExperimentCommand(Terminal t)
    {
        var defaults = new DpoExperimentOptions();
        var beta = Opt("--beta", "DPO's β", defaults.Beta);
        var lr = Opt("--learning-rate", "LoRA learning rate of the DPO stage", defaults.LearningRate);
        var evalOn = Opt("--eval-on", "test | dev: score on the all-domain test pairs, or on the parties' pooled dev pairs (for tuning)", "test");
        return ParadigmExperiment(t, "dpo",
            "SFT then DPO on WordNet preferences (a sibling's gloss rejected): the SFT model, each party alone, federated, centralized; preference accuracy, reward margin, ROUGE-L",
            "One seed, 2 rounds, 200 training pairs and 30 test pairs per party", 2, (p, s, _) =>
            {
                s = s with { EvaluateOn = EvaluateOn(p.GetValue(evalOn)!) };
                var o = defaults with
                {
                    Beta = p.GetValue(beta) > 0 ? p.GetValue(beta) : throw new UsageException("--beta must be > 0"),
                    LearningRate = p.GetValue(lr) > 0 ? p.GetValue(lr) : throw new UsageException("--learning-rate must be > 0"),
                };
                var result = new DpoExperiment(s, o, line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
                DpoExperiment.Write(result, s.OutDir);
                return (DpoExperiment.Markdown(result), result.Seconds);
            }, beta, lr, evalOn);
    }

    static Command FedCoLlmExperimentCommand(Terminal t) => ParadigmExperiment(t, "fedcollm",
        "FedCoLLM: the small model (zero-shot, each party alone, federated LoRA, FedCoLLM, centralized) and the server model (zero-shot, FedCoLLM, centralized)",
        "One seed, 2 rounds, 200 training and 30 test examples per party, 30 co-tuning steps per round", 2, (_, s, quick) =>
        {
            var result = new FedCoLlmExperiment(s, quick ? FedCoLlmOptions.Quick : new FedCoLlmOptions(), line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
            FedCoLlmExperiment.Write(result, s.OutDir);
            return (FedCoLlmExperiment.Markdown(result), result.Seconds);
        });

    static Command InferencePrivacyExperimentCommand(Terminal t) => ParadigmExperiment(t, "inference-privacy",
        "InferDPT and PDSS: utility and token recovery per ε with the zoo's server model served through the cluster and the base model local; PDSS against labels only and clear rationales",
        "One seed, ε ∈ {1, 6, ∞}, 30 test examples per domain, PDSS on 150 examples for 2 epochs", 2, (_, s, quick) =>
        {
            // Five ε values × seeds of generation by two models: the full run scores 100 test examples per domain.
            if (!quick) s = s with { TestPerParty = 100 };
            var result = new InferencePrivacyExperiment(s, quick ? InferencePrivacyOptions.Quick : new InferencePrivacyOptions(), line => t.Ansi.WriteLine(line))
                .RunAsync().GetAwaiter().GetResult();
            InferencePrivacyExperiment.Write(result, s.OutDir);
            return (InferencePrivacyExperiment.Markdown(result), result.Seconds);
        });

    static Command FedMktExperimentCommand(Terminal t) => ParadigmExperiment(t, "fedmkt",
        "FedMKT: three small models with three tokenizers and the server model exchange top-k logits; each against its own-data-only and centralized references; bytes per round",
        "One seed, 2 rounds, 200 training and 30 test examples per party, 32 public examples", 2, (_, s, quick) =>
        {
            var result = new FedMktExperiment(s, quick ? FedMktOptions.Quick : new FedMktOptions(), line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
            FedMktExperiment.Write(result, s.OutDir);
            return (FedMktExperiment.Markdown(result), result.Seconds);
        });

    /// <summary>
    /// A paradigm experiment's settings: one seed, <paramref name="quickRounds"/> rounds and 200 training / 30 test
    /// examples per party with --quick, else the full run over --seeds; the zoo from --zoo.
    /// </summary>
    static ExperimentSettings Settings(ParseResult p, Option<bool> quick, Option<string> outDir, Option<string> seeds, Option<string> zoo, int quickRounds)
    {
        var dir = Path.GetFullPath(p.GetValue(outDir)!);
        // --quick runs one seed unless --seeds is given: the same small comparison with intervals over seeds.
        var given = p.GetResult(seeds) is { Implicit: false };
        return (p.GetValue(quick)
            ? ExperimentSettings.Quick(dir) with { Seeds = given ? Seeds(p.GetValue(seeds)!) : [1], Rounds = quickRounds, TrainPerParty = 200, TestPerParty = 30 }
            : ExperimentSettings.Full(dir) with { Seeds = Seeds(p.GetValue(seeds)!) }) with { ZooRoot = p.GetValue(zoo)! };
    }

    static int[] Seeds(string list)
    {
        try { return list.Split(',').Select(int.Parse).ToArray(); }
        catch (FormatException) { throw new UsageException($"--seeds '{list}' must be comma-separated integers"); }
    }

    static Command OffsiteExperimentCommand(Terminal t)
    {
        var quick = Opt("--quick", "One seed, 2 rounds, 200 training and 30 test examples per party, 150 distillation steps", false);
        var outDir = Opt("--out", "Working folder", Path.Combine("runs", "offsite"));
        var seeds = Opt("--seeds", "Comma-separated seeds (the full run's; --quick runs seed 1 unless given)", "1,2,3");
        var zoo = ZooOption();
        return new Command("offsite", "Offsite tuning: full zero-shot, emulator zero-shot and fine-tuned, plug-in (FedOST+, FedOST), full-model federated LoRA; with and without emulator distillation").With(p =>
        {
            var s = Settings(p, quick, outDir, seeds, zoo, quickRounds: 2) with { BaseModel = "server" };
            var o = p.GetValue(quick) ? OffsiteOptions.Quick : new OffsiteOptions();
            var result = new OffsiteExperiment(s, o, line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
            OffsiteExperiment.Write(result, s.OutDir);
            t.Ansi.WriteLine(OffsiteExperiment.Markdown(result));
            t.Ansi.MarkupLine($"results-offsite.md and results-offsite.json in [bold]{s.OutDir}[/] ({result.Seconds / 60:F1} min)");
        }, quick, outDir, seeds, zoo);
    }

    static Option<string> ZooOption() => Opt("--zoo", "Zoo folder: the base model is built there on first use and reused after", ZooCatalog.Load().Root);

    static void Run(Terminal t, ExperimentSettings s)
    {
        var result = new PaperExperiment(s, line => t.Ansi.WriteLine(line)).RunAsync(RoundPrinter(t)).GetAwaiter().GetResult();
        ExperimentReport.Write(result, s.OutDir);
        Render(t, result);
        t.Ansi.MarkupLine($"results.md, results.json, rougeL_by_setting.png and loss.png in [bold]{s.OutDir}[/] ({result.Seconds / 60:F1} min)");
    }

    sealed class Progress(Action<JobStatus> report) : IProgress<JobStatus>
    {
        public void Report(JobStatus value) => report(value);
    }

    /// <summary>The comparison on the console (cells are plain text: an interval's brackets are not markup).</summary>
    internal static void Render(Terminal t, ExperimentResult r)
    {
        var set = r.Settings.EvaluateOn == EvaluationSet.Test ? "all-domain test set" : "pooled dev sets";
        var table = new Table().Title($"{set}: local vs federated vs centralized ({r.Examples.Count} examples; 95 % bootstrap intervals)")
            .AddColumns("method", "setting", "ROUGE-L", "95 %", "BLEU-4", "95 %", "loss", "gloss acc_norm %", "bits/byte");
        string Likelihood(ExperimentReport.Row x, Func<LikelihoodScores, double[]> f)
        {
            var runs = r.Runs.Where(y => y.Method == x.Method && y.Setting == x.Setting && y.Scores.Likelihood is not null).ToList();
            return runs.Count == 0 ? "–" : $"{ExperimentReport.PerExample(runs, y => f(y.Likelihood!)).Average():F2}";
        }
        foreach (var x in ExperimentReport.Summarize(r.Runs))
            table.AddRow(new[] { x.Method, x.Setting, $"{x.RougeL:F2}", $"[{x.RougeLInterval.Low:F2}, {x.RougeLInterval.High:F2}]", $"{x.Bleu4:F2}",
                $"[{x.Bleu4Interval.Low:F2}, {x.Bleu4Interval.High:F2}]", $"{x.Loss:F3}", Likelihood(x, l => l.GlossAccNorm), Likelihood(x, l => l.BitsPerByte) }
                .Select(cell => new Text(cell)));
        t.Ansi.Write(table);
        foreach (var c in ExperimentReport.Claims(r.Runs).Where(c => c.Metric is "ROUGE-L" or "−bits/byte"))
            t.Ansi.MarkupLine(Markup.Escape($"{c.Method}: federated vs {c.Versus}: {(c.Difference.Estimate >= 0 ? "+" : "")}{c.Difference.Estimate:F2} " +
                $"[{c.Difference.Low:F2}, {c.Difference.High:F2}] {c.Metric} ({c.Expectation}: {c.Verdict})"));
        var comm = new Table().Title("communication").AddColumns("method", "trainable params", "% of model", "sent per party per round", "total (up + down)");
        foreach (var c in r.Communication)
            comm.AddRow(c.Method, $"{c.TrainableParameters:N0}", $"{c.PercentOfModel:F3} %", ByteSize.Text(c.BytesPerPartyPerRound, 2), ByteSize.Text(c.TotalBytes, 2));
        t.Ansi.Write(comm);
    }
}
