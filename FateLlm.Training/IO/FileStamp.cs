using System.Runtime.InteropServices;

namespace FateLlm.Training.IO;

/// <summary>
/// What identifies a version of a file without reading it: name, size, modification time and inode (a file replaced by
/// a rename gets a new inode even with the same size and time). Caches of derived data (digests, prepared tokenizers)
/// are keyed by it.
/// </summary>
public static class FileStamp
{
    public static string Of(string path)
    {
        var info = new FileInfo(path);
        return $"{info.Name}:{info.Length}:{info.LastWriteTimeUtc.Ticks}:{Inode(path)}";
    }

    // struct stat on Linux x86-64 and arm64: st_dev (8 bytes), then st_ino (8 bytes).
    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    static extern int StatCall([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] buffer);

    static ulong Inode(string path)
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try
        {
            var buffer = new byte[256];
            return StatCall(path, buffer) == 0 ? BitConverter.ToUInt64(buffer, 8) : 0;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { return 0; }
    }
}
