namespace FateLlm.Training.IO;

/// <summary>Writes a file so that readers see the old content or the whole new one, never a part.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text) => Write(path, tmp => File.WriteAllText(tmp, text));

    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, tmp => File.WriteAllBytes(tmp, bytes));

    /// <summary>False (and nothing left behind) when the folder cannot be written: callers keep what they cache elsewhere.</summary>
    public static bool TryWriteAllText(string path, string text)
    {
        try
        {
            WriteAllText(path, text);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    /// <summary>Through a temporary file of its own (two writers of one path never share one), moved over the path; its folder is made if missing.</summary>
    static void Write(string path, Action<string> write)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var tmp = $"{path}.{Guid.NewGuid():N}.tmp";
        try
        {
            write(tmp);
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception)
        {
            try { File.Delete(tmp); } catch (Exception) { /* nothing was written */ }
            throw;
        }
    }
}
