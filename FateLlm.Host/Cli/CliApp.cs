using System.CommandLine;
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

    public static RootCommand Build()
    {
        var root = new RootCommand("fate-llm: federated fine-tuning of language models (LoRA, P-Tuning v2) across organizations");
        root.Options.Add(Verbose);
        root.Subcommands.Add(ModelCommands.Build());
        root.Subcommands.Add(TrainingCommands.Train());
        root.Subcommands.Add(TrainingCommands.Eval());
        root.Subcommands.Add(TrainingCommands.Generate());
        root.Subcommands.Add(AdapterCommands.Build());
        root.Subcommands.Add(BenchCommands.Build());
        foreach (var node in NodeCommands.Build()) root.Subcommands.Add(node);
        root.Subcommands.Add(JobCommands.Build());
        root.Subcommands.Add(CertCommands.Build());
        root.Subcommands.Add(DemoCommand.Build());
        root.Subcommands.Add(DemoCommand.Experiment());
        root.Subcommands.Add(DataCommands.Data());
        root.Subcommands.Add(DataCommands.Pretrain());
        root.Subcommands.Add(TokenizerCommands.Build());
        root.Subcommands.Add(ZooCommands.Build());
        root.Subcommands.Add(IprCommands.Build());
        root.Subcommands.Add(KSeedCommands.Build());
        root.Subcommands.Add(InferCommands.Build());
        root.Subcommands.Add(InferCommands.Pdss());
        return root;
    }

    /// <summary>Where every command writes: the writers <see cref="Run"/> was given (the console by default).</summary>
    internal static TextWriter Out { get; private set; } = Console.Out;
    internal static TextWriter Err { get; private set; } = Console.Error;
    /// <summary>Tables, markup and progress, written to <see cref="Out"/>.</summary>
    internal static Spectre.Console.IAnsiConsole Ansi { get; private set; } = Spectre.Console.AnsiConsole.Console;

    public static int Run(string[] args, TextWriter? output = null, TextWriter? error = null)
    {
        var stdout = Out = output ?? Console.Out;
        var stderr = Err = error ?? Console.Error;
        Ansi = output is null ? Spectre.Console.AnsiConsole.Console
            : Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings { Out = new Spectre.Console.AnsiConsoleOutput(output) });
        var parse = Build().Parse(args);
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
            or FateLlm.Actors.Services.ServiceRefusedException => (RuntimeError, e.Message),
        FileNotFoundException f => (RuntimeError, $"{f.FileName ?? "file"}: not found"),
        DirectoryNotFoundException or IOException or UnauthorizedAccessException or ArgumentException => (RuntimeError, e.Message),
        OperationCanceledException => (RuntimeError, "cancelled"),
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
