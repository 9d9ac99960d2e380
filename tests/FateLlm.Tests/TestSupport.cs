using System.Runtime.CompilerServices;
using FateLlm.Training.Models;
using FateLlm.Training.Runtime;
using static TorchSharp.torch;

namespace FateLlm.Tests;

internal static class TestSupport
{
    [ModuleInitializer]
    internal static void CapThreads() => TorchRuntime.SetThreads(2);

    public static string FixturePath(params string[] parts) =>
        Path.Combine([AppContext.BaseDirectory, "Fixtures", .. parts]);

    /// <summary>A file of the repository this test assembly was built from (found by walking up to FateLlm.sln).</summary>
    public static string RepoFile(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, name)) && File.Exists(Path.Combine(dir.FullName, "FateLlm.sln")))
                return Path.Combine(dir.FullName, name);
        throw new FileNotFoundException(name);
    }

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "fatellm-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }

    public static CausalLm TinyModel(string arch = "llama", long seed = 7)
    {
        var m = CausalLm.Create(ModelPresets.Create(arch, "tiny"));
        m.InitializeWeights(seed);
        m.eval();
        return m;
    }

    public static Tensor Ids(params long[][] rows) => tensor(rows.SelectMany(r => r).ToArray(), [rows.Length, rows[0].Length]);

    public static float MaxAbsDiff(Tensor a, Tensor b) => a.sub(b).abs().max().item<float>();
}
