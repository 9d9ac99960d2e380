using System.CommandLine;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;

namespace FateLlm.Host.Cli;

/// <summary>A usage error: bad option values or combinations (exit code 2).</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>The <c>fate-llm</c> command tree and its exit-code policy: 0 ok, 1 runtime error, 2 usage error.</summary>
public static class CliApp
{
    public const int Ok = 0, RuntimeError = 1, UsageError = 2;

    public static readonly Option<bool> Verbose = new("--verbose") { Description = "Print stack traces with errors", Recursive = true };

    /// <param name="algorithms">The plug-ins jobs are checked against and nodes run (the product's own unless given).</param>
    public static RootCommand Build(Terminal t, AlgorithmCatalog? algorithms = null)
    {
        var plugins = algorithms ?? AlgorithmCatalog.BuiltIn;
        var root = new RootCommand("fate-llm: federated fine-tuning of language models (LoRA, P-Tuning v2) across organizations");
        root.Options.Add(Verbose);
        root.Subcommands.Add(ModelCommands.Build(t));
        root.Subcommands.Add(TrainingCommands.Train(t));
        root.Subcommands.Add(TrainingCommands.Eval(t));
        root.Subcommands.Add(EvaluateCommand.Build(t));
        root.Subcommands.Add(TrainingCommands.Generate(t));
        root.Subcommands.Add(AdapterCommands.Build(t));
        root.Subcommands.Add(BenchCommands.Build(t));
        foreach (var node in NodeCommands.Build(t, plugins)) root.Subcommands.Add(node);
        root.Subcommands.Add(JobCommands.Build(t, plugins));
        root.Subcommands.Add(CertCommands.Build(t));
        root.Subcommands.Add(DemoCommand.Build(t));
        root.Subcommands.Add(DemoCommand.Experiment(t));
        root.Subcommands.Add(DataCommands.Data(t));
        root.Subcommands.Add(DataCommands.Pretrain(t));
        root.Subcommands.Add(TokenizerCommands.Build(t));
        root.Subcommands.Add(ZooCommands.Build(t));
        root.Subcommands.Add(IprCommands.Build(t));
        root.Subcommands.Add(KSeedCommands.Build(t));
        root.Subcommands.Add(InferCommands.Build(t));
        root.Subcommands.Add(InferCommands.Pdss(t));
        return root;
    }

    /// <param name="output">Where the command writes (the console when null); its errors go to <paramref name="error"/>.</param>
    /// <param name="algorithms">For an application that embeds the CLI with plug-ins of its own (and for specs).</param>
    public static int Run(string[] args, TextWriter? output = null, TextWriter? error = null, AlgorithmCatalog? algorithms = null)
    {
        var t = output is null ? Terminal.System with { Err = error ?? Console.Error } : Terminal.Of(output, error ?? Console.Error);
        var (stdout, stderr) = (t.Out, t.Err);
        // Text is text: System.CommandLine would read "@home is where" as a response file (and encode a file's content
        // when one of that name exists).
        var parse = Build(t, algorithms).Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (parse.Errors.Count > 0)
        {
            stderr.WriteLine($"error: {parse.Errors[0].Message} (see fate-llm --help)");
            return UsageError;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e)
        {
            var (code, message) = Classify(e);
            stderr.WriteLine($"error: {message}");
            if (parse.GetValue(Verbose)) stderr.WriteLine(e);
            return code;
        }
    }

    static (int, string) Classify(Exception e) => e switch
    {
        // Only a usage error exits 2; an ArgumentException thrown at run time is a runtime fault. FormatException covers
        // DataFormatException and every plug-in's parse errors (fedkseed histories, fedmkt blocks).
        UsageException => (UsageError, e.Message),
        ModelFormatException or FormatException or PeftException or SafeTensorsFormatException or InvalidOperationException
            or FateLlm.Training.Federation.JobSpecException or TimeoutException or FateLlm.Actors.Security.TlsConfigurationException
            or FateLlm.Actors.Services.ServiceRefusedException or FateLlm.Training.Evaluation.Harness.TaskConfigException => (RuntimeError, e.Message),
        FileNotFoundException f => (RuntimeError, $"{f.FileName ?? "file"}: not found"),
        DirectoryNotFoundException or IOException or UnauthorizedAccessException or ArgumentException => (RuntimeError, e.Message),
        OperationCanceledException => (RuntimeError, "cancelled"),
        System.Runtime.InteropServices.ExternalException or FateLlm.Training.Runtime.TorchOperationException => (RuntimeError, FateLlm.Training.Runtime.TorchErrors.OneLine(e)),
        _ => (RuntimeError, $"{e.GetType().Name}: {e.Message}"),
    };

    internal static Option<T> Opt<T>(string name, string description, T defaultValue) =>
        new(name) { Description = description, DefaultValueFactory = _ => defaultValue };

    internal static Option<T> Required<T>(string name, string description) =>
        new(name) { Description = description, Required = true };

    /// <summary>Adds options and sets an action that returns Ok unless it throws.</summary>
    internal static Command With(this Command cmd, Action<ParseResult> action, params Option[] options)
    {
        foreach (var o in options) cmd.Options.Add(o);
        cmd.SetAction(p => { action(p); return Ok; });
        return cmd;
    }
}
