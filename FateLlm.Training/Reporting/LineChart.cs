namespace FateLlm.Training.Reporting;

public sealed record Series(string Name, double[] X, double[] Y);

/// <summary>PNG line charts for run reports (loss per round per party, metric per round per setting).</summary>
public static class LineChart
{
    /// <param name="integerX">The x axis counts something (rounds): ticks at whole numbers only.</param>
    public static void Save(string path, string title, string xLabel, string yLabel, IEnumerable<Series> series, int width = 900, int height = 480, bool integerX = true)
    {
        var plot = new ScottPlot.Plot();
        int count = 0;
        foreach (var s in series)
        {
            var keep = Enumerable.Range(0, s.X.Length).Where(i => double.IsFinite(s.Y[i])).ToArray();
            if (keep.Length == 0) continue;
            var line = plot.Add.Scatter(keep.Select(i => s.X[i]).ToArray(), keep.Select(i => s.Y[i]).ToArray());
            line.LegendText = s.Name;
            line.MarkerSize = 7;
            count++;
        }
        if (integerX) plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericFixedInterval(1);
        Chart.Finish(plot, title, xLabel, yLabel, legend: count > 0, path, width, height);
    }
}

/// <summary>A bar with a confidence interval: <paramref name="Low"/>..<paramref name="High"/> drawn as a whisker.</summary>
public sealed record BarValue(string Group, string Category, double Value, double Low, double High);

/// <summary>PNG bar charts of a metric by category (settings), one bar per group (methods) side by side, with interval whiskers.</summary>
public static class BarChart
{
    public static void Save(string path, string title, string yLabel, IReadOnlyList<BarValue> values, int width = 1000, int height = 520)
    {
        var plot = new ScottPlot.Plot();
        var categories = values.Select(v => v.Category).Distinct().ToList();
        var groups = values.Select(v => v.Group).Distinct().ToList();
        var palette = new ScottPlot.Palettes.Category10();
        const double groupWidth = 0.8;
        var barWidth = groupWidth / groups.Count;
        for (int g = 0; g < groups.Count; g++)
        {
            var bars = new List<ScottPlot.Bar>();
            foreach (var v in values.Where(v => v.Group == groups[g]))
            {
                var c = categories.IndexOf(v.Category);
                var x = c - groupWidth / 2 + barWidth * (g + 0.5);
                bars.Add(new ScottPlot.Bar { Position = x, Value = v.Value, Size = barWidth * 0.92, FillColor = palette.GetColor(g) });
                // Bootstrap intervals are asymmetric: drawn as their own whisker and caps, not as a ± error.
                var whisker = plot.Add.Line(x, v.Low, x, v.High);
                whisker.Color = ScottPlot.Colors.Black;
                whisker.LineWidth = 1.5f;
                foreach (var y in new[] { v.Low, v.High })
                {
                    var cap = plot.Add.Line(x - barWidth * 0.2, y, x + barWidth * 0.2, y);
                    cap.Color = ScottPlot.Colors.Black;
                    cap.LineWidth = 1.5f;
                }
            }
            var plotted = plot.Add.Bars(bars);
            plotted.LegendText = groups[g];
        }
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, categories.Count).Select(i => (double)i).ToArray(), categories.ToArray());
        plot.Axes.Bottom.MajorTickStyle.Length = 0;
        plot.Axes.Margins(bottom: 0);
        Chart.Finish(plot, title, "", yLabel, legend: groups.Count > 1, path, width, height);
    }
}

static class Chart
{
    /// <summary>Title sized to fit, labels, the legend to the right of the data (never over it), then the PNG.</summary>
    public static void Finish(ScottPlot.Plot plot, string title, string xLabel, string yLabel, bool legend, string path, int width, int height)
    {
        // ScottPlot does not wrap titles: shrink long ones so they fit the figure's width.
        var size = Math.Clamp((float)(width * 1.6 / Math.Max(1, title.Length)), 11f, 16f);
        plot.Title(title, size);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        if (legend) plot.ShowLegend(ScottPlot.Edge.Right);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        plot.SavePng(path, width, height);
    }
}
