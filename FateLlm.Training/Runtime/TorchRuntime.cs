using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Runtime;

/// <summary>Process-wide torch settings: thread cap and device choice.</summary>
public static class TorchRuntime
{
    static readonly object Gate = new();
    static int _threads;

    /// <summary>Caps intra-op threads (0 = all cores). libtorch allows setting interop threads only once.</summary>
    public static void SetThreads(int threads)
    {
        lock (Gate)
        {
            var n = threads > 0 ? threads : Environment.ProcessorCount;
            if (n == _threads) return;
            set_num_threads(n);
            _threads = n;
        }
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
