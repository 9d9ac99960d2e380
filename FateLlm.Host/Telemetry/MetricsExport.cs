using System.Net;
using FateLlm.Actors.Telemetry;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;

namespace FateLlm.Host.Telemetry;

/// <summary>
/// Where a node's <see cref="FederationMetrics"/> go: a Prometheus scrape endpoint (<c>--http HOST:PORT</c>, served at
/// <c>/metrics</c>) and/or an OTLP exporter (<c>--otlp URL</c>). The endpoint binds loopback only: metrics name the
/// federation's organizations and jobs, and nothing here authenticates a scraper yet.
/// </summary>
public static class MetricsExport
{
    public static MeterProvider? Start(string? http, string? otlp)
    {
        if (http is null && otlp is null) return null;
        var builder = Sdk.CreateMeterProviderBuilder().AddMeter(FederationMetrics.MeterName);
        if (http is not null)
        {
            var (host, port) = Endpoint(http);
            builder.AddPrometheusHttpListener(o => (o.Host, o.Port, o.ScrapeResponseCacheDurationMilliseconds) = (host, port, 0));
        }
        if (otlp is not null)
        {
            if (!Uri.TryCreate(otlp, UriKind.Absolute, out var endpoint)) throw new ArgumentException($"--otlp '{otlp}' is not a URL (e.g. http://127.0.0.1:4317)");
            builder.AddOtlpExporter(o => o.Endpoint = endpoint);
        }
        return builder.Build();
    }

    /// <summary>"HOST:PORT" → the listener's host and port; any address but loopback is refused with the reason.</summary>
    public static (string Host, int Port) Endpoint(string http)
    {
        var colon = http.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(http[(colon + 1)..], out var port) || port is < 1 or > 65535)
            throw new ArgumentException($"--http '{http}' must be HOST:PORT (e.g. 127.0.0.1:9464)");
        var host = http[..colon].Trim('[', ']');
        var loopback = host == "localhost" || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));
        if (!loopback)
            throw new ArgumentException($"--http '{http}': only a loopback address is served (metrics name organizations and jobs, and no scraper is authenticated yet)");
        return (host, port);
    }
}
