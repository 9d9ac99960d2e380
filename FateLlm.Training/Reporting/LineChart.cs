namespace FateLlm.Training.Reporting;

public sealed record Series(string Name, double[] X, double[] Y);

/// <summary>PNG line charts for run reports (loss per round per party, metric per round per setting).</summary>
public static class LineChart
{
    public static void Save(string path, string title, string xLabel, string yLabel, IEnumerable<Series> series, int width = 800, int height = 480)
    {
        var plot = new ScottPlot.Plot();
        foreach (var s in series)
        {
            var keep = Enumerable.Range(0, s.X.Length).Where(i => double.IsFinite(s.Y[i])).ToArray();
            if (keep.Length == 0) continue;
            var line = plot.Add.Scatter(keep.Select(i => s.X[i]).ToArray(), keep.Select(i => s.Y[i]).ToArray());
            line.LegendText = s.Name;
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.ShowLegend();
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        plot.SavePng(path, width, height);
    }
}
