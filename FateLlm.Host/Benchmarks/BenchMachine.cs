using static TorchSharp.torch;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// The machine a bench ran on, printed first by every bench: figures only compare between runs on the same kind of
/// machine, and the last turn's ratios did not reproduce on a fresh one of the "same" kind without these facts.
/// </summary>
internal static class BenchMachine
{
    static readonly string[] Flags = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "sha_ni", "fma"];
    // BLAS and OpenMP, the allocator (glibc's mmap threshold changed a LoRA step by 8 %), the JIT (the data plane by 2-3x).
    static readonly string[] Environment_ = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY",
        "GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "THP_MEM_ALLOC_ENABLE", "DOTNET_gcServer", "DOTNET_TieredPGO", "DOTNET_TieredCompilation", "DOTNET_TC_QuickJit"];

    public static string Line()
    {
        var cpu = CpuInfo();
        var model = cpu.FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown CPU";
        var flags = cpu.FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal))?.Split(':', 2)[1].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet() ?? [];
        var have = Flags.Where(flags.Contains).ToList();
        var thp = Read("/sys/kernel/mm/transparent_hugepage/enabled") is { } t && t.IndexOf('[') is var i and >= 0 ? t[(i + 1)..t.IndexOf(']')] : "?";
        var env = Environment_.Where(v => Environment.GetEnvironmentVariable(v) is not null).Select(v => $"{v}={Environment.GetEnvironmentVariable(v)}").ToList();
        var memory = Read("/proc/meminfo")?.Split('\n').FirstOrDefault(l => l.StartsWith("MemTotal", StringComparison.Ordinal))?.Split(':')[1].Trim() ?? "?";
        return $"machine: {model}, {Environment.ProcessorCount} cores, {memory}; flags {(have.Count > 0 ? string.Join(" ", have) : "none of " + string.Join("/", Flags))}; " +
            $"THP {thp}; torch threads {get_num_threads()} (inter-op {get_num_interop_threads()}); {(env.Count > 0 ? string.Join(" ", env) : "no BLAS, OpenMP, allocator or JIT environment set")}; " +
            $".NET {Environment.Version}; load average {Read("/proc/loadavg")?.Split(' ').Take(3).Aggregate((a, b) => a + " " + b) ?? "?"}";
    }

    static string[] CpuInfo() => Read("/proc/cpuinfo")?.Split('\n') ?? [];

    static string? Read(string path)
    {
        try { return File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }
}
