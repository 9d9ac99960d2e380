namespace FateLlm.Training.IO;

/// <summary>A byte count as people read it: B, KiB or MiB.</summary>
public static class ByteSize
{
    public static string Text(long bytes, int mibDecimals = 1) =>
        bytes >= 1 << 20 ? (bytes / 1048576.0).ToString("F" + mibDecimals) + " MiB" : bytes >= 1024 ? $"{bytes / 1024.0:F1} KiB" : $"{bytes} B";
}
