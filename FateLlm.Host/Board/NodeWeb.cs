using FateLlm.Actors.Board;
using FateLlm.Actors.Security;
using FateLlm.Host.Telemetry;
using OpenTelemetry.Metrics;

namespace FateLlm.Host.Board;

/// <summary>A node's web side as asked on the command line: the board and metrics port (<c>--http</c>), and an OTLP target.</summary>
public sealed record NodeWeb(BoardEndpoint? Endpoint, string? Otlp)
{
    public static readonly NodeWeb None = new(null, null);

    /// <summary>Checks everything before the node starts; a bad value is an <see cref="ArgumentException"/> naming the option.</summary>
    public static NodeWeb Parse(string? http, string? token, string? otlp, NodeTls? tls)
    {
        if (otlp is not null) MetricsExport.Otlp(otlp);
        if (http is null && !string.IsNullOrEmpty(token)) throw new ArgumentException("--http-token needs --http HOST:PORT");
        return new NodeWeb(http is null ? null : BoardEndpoint.Parse(http, token, tls), otlp);
    }

    /// <summary>Starts as <see cref="StartAsync"/>; a port that cannot be bound is a usage error naming it.</summary>
    public Running Start(BoardFeed? feed, Action<string> say)
    {
        try { return StartAsync(feed, say).GetAwaiter().GetResult(); }
        catch (IOException e) { throw new Cli.UsageException($"--http {Endpoint?.Address}:{Endpoint?.Port}: {e.Message}"); }
    }

    /// <summary>Starts the exporters and, with an endpoint, the web port (the board too when <paramref name="feed"/> is given).</summary>
    public async Task<Running> StartAsync(BoardFeed? feed, Action<string> say)
    {
        var meters = MetricsExport.Start(Endpoint is not null, Otlp);
        if (Endpoint is null) return new Running(meters, null);
        var server = await BoardServer.StartAsync(Endpoint, feed, meters);
        if (feed is not null) say($"live board at {server.Address}");
        say($"metrics at {server.Address}metrics");
        return new Running(meters, server);
    }

    public sealed class Running(MeterProvider? meters, BoardServer? server) : IAsyncDisposable, IDisposable
    {
        public BoardServer? Server => server;

        public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

        public async ValueTask DisposeAsync()
        {
            if (server is not null) await server.DisposeAsync();
            meters?.Dispose();
        }
    }
}
