using Spectre.Console;

namespace FateLlm.Host.Cli;

/// <summary>
/// Where a command writes: its output, its errors, and tables and markup (onto its output). Made by
/// <see cref="CliApp.Run"/> for each invocation and handed to the commands it builds, so two invocations in one process
/// (the specs run many) never write into each other's writers.
/// </summary>
public sealed record Terminal(TextWriter Out, TextWriter Err, IAnsiConsole Ansi)
{
    /// <summary>The process's console.</summary>
    public static Terminal System => new(Console.Out, Console.Error, AnsiConsole.Console);

    /// <summary>Writers given by the caller (specs); tables and markup go to <paramref name="output"/>.</summary>
    public static Terminal Of(TextWriter output, TextWriter error) =>
        new(output, error, AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output) }));
}
