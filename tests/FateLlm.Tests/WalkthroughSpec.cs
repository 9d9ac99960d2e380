using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The README's walkthrough, run as written: every <c>fate-llm</c> line of the blocks marked <c>&lt;!-- walkthrough --&gt;</c>,
/// read from README.md (not copied here), as real processes in a fresh folder that holds the repository's job file.
/// Node commands keep running (one per terminal); the others run to completion in order. The build and PATH lines
/// are what CI already did. No console may show an ERROR line or a stack trace.
/// </summary>
[Trait(Tier.Key, Tier.Process)]
[Collection(Tier.Process)]
public sealed class WalkthroughSpec : IDisposable
{
    readonly List<(string Name, Process Process, StringWriter Console)> _nodes = new();

    /// <summary>The fate-llm command lines of the README blocks under a marker, in order.</summary>
    internal static List<string[]> Commands(string marker)
    {
        var lines = File.ReadAllLines(TestSupport.RepoFile("README.md"));
        var commands = new List<string[]>();
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Trim() != marker) continue;
            var j = Array.FindIndex(lines, i + 1, l => l.StartsWith("```")) + 1;
            for (; j < lines.Length && !lines[j].StartsWith("```"); j++)
                if (lines[j].StartsWith("fate-llm ")) commands.Add(Split(lines[j])[1..]);
        }
        return commands;
    }

    /// <summary>A shell-like split: whitespace separates words, double quotes group them.</summary>
    static string[] Split(string line) => Regex.Matches(line, "\"([^\"]*)\"|(\\S+)").Select(m => m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value).ToArray();

    internal static ProcessStartInfo FateLlm(string workDir, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "fate-llm.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    internal static (Process, StringWriter) Start(ProcessStartInfo psi)
    {
        var console = new StringWriter();
        var sync = TextWriter.Synchronized(console);
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { if (e.Data != null) sync.WriteLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) sync.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return (p, console);
    }

    internal static void AssertCalm(string name, string console)
    {
        Assert.False(console.Contains("ERROR"), $"{name} printed an ERROR line:\n{console}");
        Assert.False(Regex.IsMatch(console, @"^\s+at \S+\(", RegexOptions.Multiline), $"{name} printed a stack trace:\n{console}");
    }

    [Fact]
    public async Task The_readme_walkthrough_runs_as_written_and_no_console_shows_an_error_or_a_stack_trace()
    {
        var work = TestSupport.TempDir();
        Directory.CreateDirectory(Path.Combine(work, "hocon"));
        File.Copy(TestSupport.RepoFile(Path.Combine("hocon", "walkthrough.conf")), Path.Combine(work, "hocon", "walkthrough.conf"));
        var commands = Commands("<!-- walkthrough -->");
        Assert.Contains(commands, c => c[0] == "seed");
        Assert.Equal(3, commands.Count(c => c[0] == "party"));
        foreach (var args in commands)
        {
            var name = string.Join(' ', args.Take(args[0] == "party" ? 3 : 2));
            var (process, console) = Start(FateLlm(work, args));
            if (args[0] is "seed" or "arbiter" or "party")
            {
                _nodes.Add((name, process, console));
                // A terminal's node is running once it prints where it is.
                var ready = DateTime.UtcNow.AddSeconds(60);
                while (!console.ToString().Contains(" node at "))
                {
                    Assert.False(process.HasExited, $"{name} exited: {console}");
                    Assert.True(DateTime.UtcNow < ready, $"{name} did not start: {console}");
                    await Task.Delay(100);
                }
                continue;
            }
            Assert.True(await Exited(process, TimeSpan.FromMinutes(8)), $"{name} did not finish:\n{console}");
            Assert.True(process.ExitCode == 0, $"{name} exited {process.ExitCode}:\n{console}\nnodes:\n{string.Join("\n", _nodes.Select(n => $"--- {n.Name}\n{n.Console}"))}");
            AssertCalm(name, console.ToString());
            if (args[0] == "job" && args[1] == "submit") Assert.Contains("job walkthrough: Completed, 2/2 rounds", console.ToString());
        }
        Assert.True(File.Exists(Path.Combine(work, "walkthrough", "output", "adapter", "adapter_model.safetensors")));

        // A second node for an organization that is already served is refused, says why, and exits 1; the first keeps serving.
        var nature = commands.First(c => c[0] == "party" && c[2] == "nature").ToList();
        nature[nature.IndexOf("--data-dir") + 1] = "walkthrough/nature-again";
        // The grace before a claimant concludes it is the second node is its own setting (20 s by default, for a restarted
        // node whose crashed incarnation is not yet unreachable); the first node here is alive, so 3 s only saves waiting.
        var quick = Path.Combine(work, "quick-refusal.conf");
        File.WriteAllText(quick, "fate-llm.party.duplicate-grace = 3s\n");
        nature.AddRange(["--config", quick]);
        var (again, againConsole) = Start(FateLlm(work, nature));
        Assert.True(await Exited(again, TimeSpan.FromSeconds(90)), againConsole.ToString());
        Assert.Equal(1, again.ExitCode);
        Assert.Matches(@"error: organization 'nature' is already served by node akka\.tcp://fate-llm@127\.0\.0\.1:\d+; this node is refused and leaves the cluster", againConsole.ToString());
        var first = _nodes.Single(n => n.Name == "party --org nature");
        await TestSupport.Until(() => first.Console.ToString().Contains("claims organization 'nature', which this node serves; it is refused"),
            TimeSpan.FromSeconds(30), "the first node to refuse the duplicate");
        foreach (var (name, process, console) in _nodes)
        {
            Assert.False(process.HasExited, $"{name} stopped early:\n{console}");
            AssertCalm(name, console.ToString());
        }
    }

    static async Task<bool> Exited(Process p, TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        try { await p.WaitForExitAsync(cts.Token); return true; }
        catch (OperationCanceledException) { return false; }
    }

    public void Dispose()
    {
        // Outermost first, as a person would close the terminals: parties, arbiter, seed.
        foreach (var (_, process, _) in Enumerable.Reverse(_nodes))
        {
            if (process.HasExited) continue;
            process.Kill(entireProcessTree: true);
            process.WaitForExit(10_000);
        }
    }
}
