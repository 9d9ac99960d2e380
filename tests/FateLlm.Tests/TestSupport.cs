using System.Runtime.CompilerServices;
using FateLlm.Training.Models;
using FateLlm.Training.Runtime;
using static TorchSharp.torch;

namespace FateLlm.Tests;

internal static class TestSupport
{
    /// <summary>Torch's threads capped; the thread pool's floor raised, as for any process that hosts several nodes.</summary>
    [ModuleInitializer]
    internal static void CapThreads()
    {
        TorchRuntime.SetThreads(2);
        Actors.Nodes.LocalFederation.HostManyNodes();
    }

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

    /// <summary>Polls <paramref name="condition"/> (a child process's output, a file) until it holds, failing with
    /// <paramref name="what"/> after <paramref name="within"/>: for what no actor event announces.</summary>
    public static async Task Until(Func<bool> condition, TimeSpan within, string what)
    {
        var deadline = DateTime.UtcNow + within;
        while (!condition())
        {
            Xunit.Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            await Task.Delay(100);
        }
    }

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "fatellm-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>A federation CA's operator node and member "acme", and an "acme" certificate of another CA.</summary>
    public static (Actors.Security.NodeTls Node, Actors.Security.NodeTls Member, Actors.Security.NodeTls Stranger) Certificates()
    {
        var root = TempDir();
        var caDir = Path.Combine(root, "tls", "ca");
        Actors.Security.CertificateAuthority.InitCa(caDir);
        var otherCa = Path.Combine(root, "other", "tls", "ca");
        Actors.Security.CertificateAuthority.InitCa(otherCa, "another federation");
        return (Actors.Nodes.LocalFederation.IssuedTls(root, caDir, "operator"), Actors.Nodes.LocalFederation.IssuedTls(root, caDir, "acme"),
            Actors.Nodes.LocalFederation.IssuedTls(Path.Combine(root, "other"), otherCa, "acme"));
    }

    const string WordNetHeader = "  1 This software and database is being provided to you, the LICENSEE, by  \n";

    /// <summary>A WordNet 3.0 dictionary folder in miniature: seven domains of <paramref name="perDomain"/> synsets each.</summary>
    public static string WordNetDictionary(int perDomain = 30)
    {
        var dir = TempDir();
        // Every synset but a domain's first is a kind of that first one (a hypernym pointer to it).
        string Line(int i, string lex, string type, string word) =>
            $"{i:D8} {lex} {type} 02 {word} 0 {word}_too 0 " + (i % 1000 == 0 ? "000" : $"001 @ {i - i % 1000:D8} {type} 0000") +
            $" | the meaning number {i} of {word}; \"an example with {word}\"";
        var noun = Enumerable.Range(0, perDomain).SelectMany(i => new[]
        {
            Line(1000 + i, "05", "n", "beast" + i), Line(2000 + i, "20", "n", "herb" + i), Line(3000 + i, "06", "n", "tool" + i),
            Line(4000 + i, "13", "n", "dish" + i), Line(5000 + i, "18", "n", "person" + i),
        });
        File.WriteAllText(Path.Combine(dir, "data.noun"), WordNetHeader + string.Join("\n", noun) + "\n");
        var verb = Enumerable.Range(0, perDomain).SelectMany(i => new[] { Line(6000 + i, "38", "v", "run" + i), Line(7000 + i, "35", "v", "hit" + i) });
        File.WriteAllText(Path.Combine(dir, "data.verb"), WordNetHeader + string.Join("\n", verb) + "\n");
        File.WriteAllText(Path.Combine(dir, "data.adj"), WordNetHeader + Line(8000, "00", "s", "big(a)") + "\n");
        File.WriteAllText(Path.Combine(dir, "data.adv"), WordNetHeader);
        return dir;
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
