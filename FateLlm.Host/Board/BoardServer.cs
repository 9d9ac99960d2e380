using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Threading.Channels;
using FateLlm.Actors.Board;
using FateLlm.Actors.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;

namespace FateLlm.Host.Board;

/// <summary>
/// Where the board listens (<c>--http HOST:PORT</c>) and who may look. Loopback is open to the machine's users; any
/// other address needs the node's TLS material (HTTPS, and callers show a certificate of the federation) or a token.
/// </summary>
public sealed record BoardEndpoint(IPAddress Address, int Port, string? Token, NodeTls? Tls)
{
    public bool Loopback => IPAddress.IsLoopback(Address);
    public string Scheme => Tls is null ? "http" : "https";
    public string Url(int port) => $"{Scheme}://{(Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{Address}]" : Address.ToString())}:{port}";

    /// <summary>"HOST:PORT" with HOST an IP address or localhost; refused, with the reason, when the bind is not protected.</summary>
    public static BoardEndpoint Parse(string http, string? token, NodeTls? tls)
    {
        var colon = http.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(http[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 0 or > 65535)
            throw new ArgumentException($"--http '{http}' must be HOST:PORT (e.g. 127.0.0.1:8080)");
        var host = http[..colon].Trim('[', ']');
        var address = host == "localhost" ? IPAddress.Loopback
            : IPAddress.TryParse(host, out var ip) ? ip
            : throw new ArgumentException($"--http '{http}': the host must be an IP address or localhost");
        if (string.IsNullOrEmpty(token)) token = null;
        else if (token.Length < 16) throw new ArgumentException("--http-token must be at least 16 characters");
        var endpoint = new BoardEndpoint(address, port, token, tls);
        if (!endpoint.Loopback && endpoint.Tls is null && endpoint.Token is null)
            throw new ArgumentException($"--http '{http}' is not a loopback address: the board names organizations, jobs and their losses, so another bind " +
                "needs the node's --tls (HTTPS; callers show a certificate of the federation) or --http-token TOKEN");
        return endpoint;
    }
}

/// <summary>
/// The node's web port: the live board (<c>/</c>, its assets, <c>/api/board</c> as JSON and <c>/api/events</c> as
/// server-sent events) when the node runs one, and the Prometheus scrape endpoint (<c>/metrics</c>) of the node's
/// meters. Every asset is embedded; nothing is loaded from elsewhere.
/// </summary>
public sealed class BoardServer : IAsyncDisposable
{
    public const string TokenCookie = "fatellm_board";
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter() },
    };

    readonly WebApplication _app;
    public Uri Address { get; }

    BoardServer(WebApplication app, Uri address)
    {
        _app = app;
        Address = address;
    }

    public static async Task<BoardServer> StartAsync(BoardEndpoint endpoint, BoardFeed? feed, MeterProvider? meters)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders(); // the node's own log says what matters; no request lines on the console
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
        builder.WebHost.ConfigureKestrel(k => k.Listen(endpoint.Address, endpoint.Port, listen =>
        {
            if (endpoint.Tls is not { } tls) return;
            listen.UseHttps(https =>
            {
                https.ServerCertificate = tls.Certificate;
                https.ClientCertificateMode = ClientCertificateMode.RequireCertificate;
                https.ClientCertificateValidation = (cert, _, _) => tls.IsFromFederation(cert, out _);
            });
        }));
        var app = builder.Build();
        if (endpoint.Token is { } token) app.Use((ctx, next) => Authorize(ctx, token, next));
        if (meters is not null)
            app.UseOpenTelemetryPrometheusScrapingEndpoint(meters, ctx => ctx.Request.Path == "/metrics", path: null, configureBranchedPipeline: null, optionsName: null);
        if (feed is not null) MapBoard(app, feed);
        else app.MapGet("/", () => Results.Text("This node runs no board (arbiters and demo do); its metrics are at /metrics.\n"));
        await app.StartAsync();
        var port = new Uri(app.Urls.First()).Port;
        return new BoardServer(app, new Uri(endpoint.Url(port) + "/"));
    }

    static Task Authorize(HttpContext ctx, string token, Func<Task> next)
    {
        static bool Same(string? given, string expected) =>
            given is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(expected));
        var header = ctx.Request.Headers.Authorization.ToString();
        if (Same(header.StartsWith("Bearer ") ? header[7..] : null, token) || Same(ctx.Request.Cookies[TokenCookie], token)) return next();
        if (Same(ctx.Request.Query["token"], token))
        {
            // The page's own requests (fetch, EventSource) carry the cookie from here on.
            ctx.Response.Cookies.Append(TokenCookie, token, new CookieOptions { HttpOnly = true, SameSite = SameSiteMode.Strict, Secure = ctx.Request.IsHttps });
            return next();
        }
        ctx.Response.StatusCode = StatusCodes.Status401Unauthorized;
        return ctx.Response.WriteAsync("this board needs its token: Authorization: Bearer TOKEN, or open it once with ?token=TOKEN\n");
    }

    static void MapBoard(WebApplication app, BoardFeed feed)
    {
        foreach (var (path, asset, type) in new[] { ("/", "board.html", "text/html; charset=utf-8"), ("/board.js", "board.js", "text/javascript; charset=utf-8"),
                     ("/board.css", "board.css", "text/css; charset=utf-8") })
        {
            var bytes = Asset(asset);
            app.MapGet(path, () => Results.Bytes(bytes, type));
        }
        app.MapGet("/api/board", () => Results.Json(feed.Latest, Json));
        app.MapGet("/api/events", (HttpContext ctx, IHostApplicationLifetime life) => Stream(ctx, feed, life.ApplicationStopping));
    }

    static byte[] Asset(string name)
    {
        using var s = typeof(BoardServer).Assembly.GetManifestResourceStream("board/" + name) ?? throw new InvalidOperationException($"embedded board asset {name} missing");
        using var m = new MemoryStream();
        s.CopyTo(m);
        return m.ToArray();
    }

    /// <summary>Server-sent events: the latest snapshot at once, then each new one; a slow reader only ever misses intermediate ones.</summary>
    static async Task Stream(HttpContext ctx, BoardFeed feed, CancellationToken stopping)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        var snapshots = Channel.CreateBounded<BoardSnapshot>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropOldest });
        using var subscription = feed.Subscribe(s => snapshots.Writer.TryWrite(s));
        using var done = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, stopping);
        try
        {
            while (!done.IsCancellationRequested)
            {
                using var wait = CancellationTokenSource.CreateLinkedTokenSource(done.Token);
                wait.CancelAfter(TimeSpan.FromSeconds(15));
                string frame;
                try { frame = $"event: board\ndata: {JsonSerializer.Serialize(await snapshots.Reader.ReadAsync(wait.Token), Json)}\n\n"; }
                catch (OperationCanceledException) when (!done.IsCancellationRequested) { frame = ": keep-alive\n\n"; }
                await ctx.Response.WriteAsync(frame, done.Token);
                await ctx.Response.Body.FlushAsync(done.Token);
            }
        }
        catch (OperationCanceledException) { } // the browser went away or the node stops
        catch (IOException) { }
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
