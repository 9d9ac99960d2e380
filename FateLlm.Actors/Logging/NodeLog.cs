using Akka.Actor;
using Akka.Dispatch;
using Akka.Event;

namespace FateLlm.Actors.Logging;

/// <summary>
/// A node's logger: everything (Akka's own chatter and stack traces included) goes to the node's log file; the console
/// gets one line per event that matters to an operator — FateLlm's own messages at or above the console level, errors
/// reduced to their message. <c>fate-llm.logging.verbose = on</c> (the CLI's <c>--verbose</c>) echoes the file to the
/// console instead.
/// </summary>
public sealed class NodeLog : ReceiveActor, IRequiresMessageQueue<ILoggerMessageQueueSemantics>
{
    readonly StreamWriter? _file;
    readonly LogLevel? _console;
    readonly bool _verbose;
    readonly TextWriter _out = Console.Out;

    /// <summary>Internal to Akka.Remote, so matched by name.</summary>
    internal const string Disassociated = "Akka.Remote.EndpointDisassociatedException";

    public NodeLog()
    {
        var config = Context.System.Settings.Config;
        var path = config.GetString("fate-llm.logging.file");
        if (!string.IsNullOrEmpty(path))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            _file = new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite)) { AutoFlush = true };
        }
        _console = Level(config.GetString("fate-llm.logging.console-level"));
        _verbose = config.GetBoolean("fate-llm.logging.verbose");
        Receive<InitializeLogger>(_ => Sender.Tell(new LoggerInitialized()));
        Receive<LogEvent>(Log);
    }

    /// <summary>debug | info | warning | error | off (null).</summary>
    public static LogLevel? Level(string name) => name.ToLowerInvariant() switch
    {
        "debug" => LogLevel.DebugLevel,
        "info" => LogLevel.InfoLevel,
        "warning" or "warn" => LogLevel.WarningLevel,
        "error" => LogLevel.ErrorLevel,
        "off" or "" => null,
        _ => throw new ArgumentException($"'{name}' is not a log level (debug, info, warning, error, off)"),
    };

    static string Tag(LogLevel level) => level switch
    {
        LogLevel.DebugLevel => "DEBUG",
        LogLevel.InfoLevel => "INFO",
        LogLevel.WarningLevel => "WARNING",
        _ => "ERROR",
    };

    void Log(LogEvent e)
    {
        // Akka.Remote reports a peer's disassociation twice: a WARNING that the address is gated (with the reason), then
        // the endpoint supervisor's ERROR with a stack trace. Every node that leaves gracefully causes one on each peer,
        // so node.log showed ERRORs after a clean run; the WARNING says all there is to say, the echo is INFO.
        var echo = e is Error && e.Cause?.GetType().FullName == Disassociated;
        var level = echo ? LogLevel.InfoLevel : e.LogLevel();
        var full = $"{e.Timestamp:yyyy-MM-dd HH:mm:ss.fff} {Tag(level),-7} [{e.LogSource}] {e.Message}{(e.Cause is { } c && !echo ? Environment.NewLine + c : "")}";
        _file?.WriteLine(full);
        if (_verbose)
        {
            _out.WriteLine(full);
            return;
        }
        if (_console is not { } min || level < min || !IsOperatorEvent(e)) return;
        // One line: the message, and for an exception its message, never its stack trace.
        var line = e.Message?.ToString()?.ReplaceLineEndings(" ") ?? "";
        if (e.Cause is { } cause && !line.Contains(cause.Message))
            line += $": {(cause is Training.Runtime.TorchOperationException ? cause.Message : Training.Runtime.TorchErrors.OneLine(cause.GetBaseException()))}";
        _out.WriteLine($"{e.Timestamp:HH:mm:ss} {Tag(level)} {line}");
    }

    /// <summary>FateLlm's own messages; Akka's internals (remoting, gossip, dead letters) stay in the file.</summary>
    static bool IsOperatorEvent(LogEvent e) => e.LogClass?.Namespace?.StartsWith("FateLlm", StringComparison.Ordinal) == true;

    protected override void PostStop() => _file?.Dispose();
}
