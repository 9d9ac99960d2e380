using System.Diagnostics;
using FateLlm.Training.Trainer;

namespace FateLlm.Host.Cli;

/// <summary>A redrawn progress bar on a terminal; plain log lines (every few seconds and at the end) otherwise.</summary>
internal sealed class TrainingProgress : IProgress<TrainProgress>, IDisposable
{
    readonly bool _terminal;
    readonly TextWriter _out;
    readonly Stopwatch _sinceLine = Stopwatch.StartNew();
    readonly string _label;
    TrainProgress? _last;

    TrainingProgress(bool terminal, TextWriter output, string label)
    {
        _terminal = terminal;
        _out = output;
        _label = label;
    }

    /// <param name="t">Where the command writes: redrawn on the process's own interactive console, plain lines elsewhere.</param>
    public static TrainingProgress Create(Terminal t, string label = "train") =>
        new(t.Out == Console.Out && !Console.IsOutputRedirected, t.Out, label);

    public void Report(TrainProgress p)
    {
        _last = p;
        if (_terminal)
        {
            const int width = 30;
            var filled = (int)(width * (double)p.Step / Math.Max(1, p.TotalSteps));
            _out.Write($"\r{_label} [{new string('#', filled)}{new string('.', width - filled)}] {p.Step}/{p.TotalSteps} loss {p.Loss:F4} {p.TokensPerSecond:F0} tok/s ETA {p.Eta:mm\\:ss}   ");
        }
        else if (_sinceLine.Elapsed.TotalSeconds >= 5 || p.Step == p.TotalSteps || p.Step == 1)
        {
            _out.WriteLine(Line(p));
            _sinceLine.Restart();
        }
    }

    string Line(TrainProgress p) =>
        $"{_label} step {p.Step}/{p.TotalSteps} epoch {p.Epoch + 1} loss {p.Loss:F4} lr {p.LearningRate:E2} {p.TokensPerSecond:F0} tok/s elapsed {p.Elapsed:mm\\:ss} eta {p.Eta:mm\\:ss}";

    public void Dispose()
    {
        if (_terminal && _last != null) _out.WriteLine();
    }
}
