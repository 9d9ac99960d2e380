using System.Net;
using FateLlm.Actors.Board;
using FateLlm.Actors.Security;
using FateLlm.Host.Board;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Who may look at the board: loopback only by default; any other bind needs a token or the federation's TLS.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class BoardServerSpec
{
    const string Token = "a-board-token-of-32-characters!!";

    static BoardFeed Feed()
    {
        var feed = new BoardFeed();
        feed.Publish(new BoardSnapshot(DateTime.UtcNow, 7, [new MemberView("akka.tcp://fate-llm@10.0.0.1:4053", ["seed"], null, "Up", true)], [], []));
        return feed;
    }

    [Fact]
    public void A_bind_beyond_loopback_is_refused_without_a_token_or_tls_naming_the_option()
    {
        Assert.True(BoardEndpoint.Parse("127.0.0.1:0", null, null).Loopback);
        Assert.True(BoardEndpoint.Parse("localhost:8080", "", null).Loopback);
        Assert.Contains("is not a loopback address", Assert.Throws<ArgumentException>(() => BoardEndpoint.Parse("0.0.0.0:8080", null, null)).Message);
        Assert.Contains("--http-token must be at least 16", Assert.Throws<ArgumentException>(() => BoardEndpoint.Parse("0.0.0.0:8080", "short", null)).Message);
        Assert.Contains("must be HOST:PORT", Assert.Throws<ArgumentException>(() => BoardEndpoint.Parse("8080", null, null)).Message);
        Assert.Contains("IP address or localhost", Assert.Throws<ArgumentException>(() => BoardEndpoint.Parse("board.example:8080", null, null)).Message);
        Assert.Equal(Token, BoardEndpoint.Parse("0.0.0.0:8080", Token, null).Token);
        Assert.Contains("--http-token needs --http", Assert.Throws<ArgumentException>(() => NodeWeb.Parse(null, Token, null, null)).Message);
    }

    [Fact]
    public async Task With_a_token_every_request_needs_it_and_the_page_gets_it_as_a_cookie()
    {
        await using var server = await BoardServer.StartAsync(BoardEndpoint.Parse("127.0.0.1:0", Token, null), Feed(), null);
        using var plain = new HttpClient { BaseAddress = server.Address };
        Assert.Equal(HttpStatusCode.Unauthorized, (await plain.GetAsync("api/board")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await plain.GetAsync("/?token=wrong-token-of-enough-length")).StatusCode);
        using (var bearer = new HttpRequestMessage(HttpMethod.Get, "api/board") { Headers = { Authorization = new("Bearer", Token) } })
            Assert.Contains("10.0.0.1:4053", await (await plain.SendAsync(bearer)).Content.ReadAsStringAsync());
        using var browser = new HttpClient(new HttpClientHandler { CookieContainer = new CookieContainer() }) { BaseAddress = server.Address };
        Assert.Contains("board.js", await browser.GetStringAsync($"/?token={Token}"));
        Assert.Contains("\"version\":7", await browser.GetStringAsync("api/board")); // the cookie set above
        Assert.Contains("EventSource", await browser.GetStringAsync("board.js")); // the page's own script, served here
    }

    [Fact]
    public async Task Over_tls_the_board_serves_https_to_federation_certificates_only()
    {
        var (node, caller, stranger) = TestSupport.Certificates();

        await using var server = await BoardServer.StartAsync(BoardEndpoint.Parse("127.0.0.1:0", null, node), Feed(), null);
        Assert.Equal("https", server.Address.Scheme);
        HttpClient Client(NodeTls? who)
        {
            var handler = new HttpClientHandler { ServerCertificateCustomValidationCallback = (_, cert, _, _) => cert is not null && node.IsFromFederation(cert, out _) };
            if (who is not null) handler.ClientCertificates.Add(who.Certificate);
            return new HttpClient(handler) { BaseAddress = server.Address };
        }
        using (var member = Client(caller)) Assert.Contains("10.0.0.1:4053", await member.GetStringAsync("api/board"));
        using (var outsider = Client(stranger)) await Assert.ThrowsAnyAsync<HttpRequestException>(() => outsider.GetStringAsync("api/board"));
        using (var anonymous = Client(null)) await Assert.ThrowsAnyAsync<HttpRequestException>(() => anonymous.GetStringAsync("api/board"));
    }
}
