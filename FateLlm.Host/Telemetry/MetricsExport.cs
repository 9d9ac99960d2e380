using FateLlm.Actors.Telemetry;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace FateLlm.Host.Telemetry;

/// <summary>
/// Where a node's <see cref="FederationMetrics"/> go: the Prometheus exporter, scraped at <c>/metrics</c> on the node's
/// web port (<c>--http</c>, <see cref="Board.BoardServer"/>), and/or an OTLP exporter (<c>--otlp URL</c>).
/// </summary>
public static class MetricsExport
{
    public static MeterProvider? Start(bool prometheus, string? otlp)
    {
        if (!prometheus && otlp is null) return null;
        var builder = Sdk.CreateMeterProviderBuilder().AddMeter(FederationMetrics.MeterName);
        if (prometheus) builder.AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0);
        if (otlp is not null) builder.AddOtlpExporter(o => o.Endpoint = Otlp(otlp));
        return builder.Build();
    }

    public static Uri Otlp(string url) =>
        Uri.TryCreate(url, UriKind.Absolute, out var endpoint) ? endpoint : throw new ArgumentException($"--otlp '{url}' is not a URL (e.g. http://127.0.0.1:4317)");
}
