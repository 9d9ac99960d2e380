using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Runtime;

/// <summary>Torch settings of the calling thread (thread cap) and the device choice.</summary>
public static class TorchRuntime
{
    /// <summary>What this thread last set: libtorch's OpenMP cap belongs to the calling thread (a new thread starts from
    /// the last value set anywhere), so each party's training thread sets its own and a process-wide cache would skip it.</summary>
    [ThreadStatic] static int _threads;

    /// <summary>Caps intra-op threads of the calling thread's torch work (0 = all cores).</summary>
    public static void SetThreads(int threads)
    {
        var n = threads > 0 ? threads : Environment.ProcessorCount;
        if (n == _threads && get_num_threads() == n) return;
        set_num_threads(n);
        _threads = n;
    }

    /// <summary>cpu, cuda or auto (cuda when a GPU and a CUDA build of libtorch are present).</summary>
    public static Device ResolveDevice(string name) => name.ToLowerInvariant() switch
    {
        "cpu" => CPU,
        "cuda" => cuda.is_available() ? CUDA
            : throw new ArgumentException("--device cuda: no CUDA device or this build uses the CPU libtorch (rebuild with -p:TorchBackend=cuda)"),
        "auto" => cuda.is_available() ? CUDA : CPU,
        _ => throw new ArgumentException($"--device '{name}' is not one of cpu, cuda, auto"),
    };
}
