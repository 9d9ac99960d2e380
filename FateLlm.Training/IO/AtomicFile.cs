namespace FateLlm.Training.IO;

/// <summary>Writes a file so that readers see the old content or the whole new one, never a part.</summary>
public static class AtomicFile
{
    /// <summary>False (and nothing left behind) when the folder cannot be written: callers keep what they cache elsewhere.</summary>
    public static bool TryWriteAllText(string path, string text)
    {
        var tmp = $"{path}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
        try
        {
            File.WriteAllText(tmp, text);
            File.Move(tmp, path, overwrite: true);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (Exception) { /* nothing was written */ }
            return false;
        }
    }
}
