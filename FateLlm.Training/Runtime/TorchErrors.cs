using System.Runtime.InteropServices;

namespace FateLlm.Training.Runtime;

/// <summary>A libtorch error in one line: what was being done, on what shapes, and the error's own first line.</summary>
public sealed class TorchOperationException(string message, Exception inner) : Exception(message, inner);

/// <summary>
/// libtorch reports an error as an <see cref="ExternalException"/> whose message is the C++ error followed by its
/// stack ("Exception raised from … frame #0 …", a dozen lines). Consoles, job lists and the arbiter get one line.
/// </summary>
public static class TorchErrors
{
    /// <summary>The first line of a message, without libtorch's "Exception raised from" tail.</summary>
    public static string FirstLine(string message)
    {
        var line = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "";
        var tail = line.IndexOf("Exception raised from", StringComparison.Ordinal);
        return (tail > 0 ? line[..tail] : line).Trim();
    }

    /// <summary>An exception's message for a console or a remote report: one line, a native error's frames dropped.</summary>
    public static string OneLine(Exception e) => e switch
    {
        TorchOperationException => e.Message,
        _ when e.GetBaseException() is ExternalException native => $"libtorch: {FirstLine(native.Message)}",
        _ => e.Message.ReplaceLineEndings(" "),
    };

    /// <summary>Runs <paramref name="work"/>; a libtorch error becomes one line naming <paramref name="operation"/>.</summary>
    public static T Guard<T>(Func<string> operation, Func<T> work)
    {
        try { return work(); }
        catch (ExternalException e) { throw new TorchOperationException($"{operation()}: {FirstLine(e.Message)}", e); }
    }

    public static string Shape(TorchSharp.torch.Tensor t) => $"[{string.Join(", ", t.shape)}]";
}
