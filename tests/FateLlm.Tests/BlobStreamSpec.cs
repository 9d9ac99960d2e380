using Akka.Actor;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Transfer;
using FateLlm.Training.IO;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The data plane: a blob redeemed with a ticket streams over its own TCP connection (TLS with the federation's
/// certificates under --tls), resumes where a cut stream stopped, and falls back to chunks when no stream is offered.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class BlobStreamSpec() : TestKit(ActorSpecs.Config(extra: "akka.loglevel = INFO"))
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(20), Idle = TimeSpan.FromSeconds(5);
    static readonly TransferSettings Streaming = TransferSettings.Default with { Stream = true, ChunkTimeout = TimeSpan.FromSeconds(5) };
    readonly BlobStore _source = new(TestSupport.TempDir());
    readonly byte[] _blob = new byte[3 << 20];

    (string Digest, BlobStore Target) Blob()
    {
        new Random(5).NextBytes(_blob);
        return (_source.Put(_blob), new BlobStore(TestSupport.TempDir()));
    }

    FetchCompleted Fetch(BlobStore target, string digest, IActorRef server, TransferSettings settings)
    {
        ChildActorOf(BlobFetcher.Props(target, new BlobLocation(digest, _blob.Length, server), settings, "adapter"));
        var done = ExpectMsg<FetchCompleted>(Wait);
        Assert.Equal(_blob, target.Read(digest));
        return done;
    }

    [Fact]
    public void A_blob_streams_in_one_piece_and_a_cut_stream_resumes_where_it_stopped()
    {
        var (digest, target) = Blob();
        // Cut inside the reader's second block: what arrived of it is stored, and the resumed stream starts there.
        using var stream = new BlobStreamServer(_source, "127.0.0.1", null, cutFirstAfter: (1 << 20) + 4099);
        var server = Sys.ActorOf(BlobServer.Props(_source, stream: stream));
        var resumed = Fetch(target, digest, server, Streaming);
        Assert.Equal((1, 1), (resumed.Chunks, resumed.Retransmissions)); // one stream, cut once, resumed

        var again = Fetch(new BlobStore(TestSupport.TempDir()), digest, server, Streaming);
        Assert.Equal((1, 0), (again.Chunks, again.Retransmissions));
    }

    [Fact]
    public async Task A_stream_that_stalls_without_closing_resumes_and_a_silent_server_fails_within_the_idle_time()
    {
        var (digest, target) = Blob();
        using var stream = new BlobStreamServer(_source, "127.0.0.1", null, cutFirstAfter: 1 << 20, stallAtCut: true);
        var server = Sys.ActorOf(BlobServer.Props(_source, stream: stream));
        var resumed = Fetch(target, digest, server, Streaming with { ChunkTimeout = TimeSpan.FromSeconds(1) });
        Assert.Equal((1, 1), (resumed.Chunks, resumed.Retransmissions)); // stalled at 1 MiB, resumed there after 1 s

        // A server that accepts and never answers: the reader gives up naming the step, not at some far deadline.
        using var silent = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        silent.Start();
        var offer = stream.Offer(digest) with { Port = ((System.Net.IPEndPoint)silent.LocalEndpoint).Port };
        var e = await Assert.ThrowsAsync<TimeoutException>(() =>
            BlobStreamReader.ReadAsync(offer, Path.Combine(TestSupport.TempDir(), "part"), 0, null, TimeSpan.FromMilliseconds(300), CancellationToken.None));
        Assert.Equal("the blob stream stalled: no progress in the ticket exchange for 0.3 s", e.Message);
    }

    [Fact]
    public void A_large_streamed_blob_logs_its_progress()
    {
        var (digest, target) = Blob();
        using var stream = new BlobStreamServer(_source, "127.0.0.1", null);
        var server = Sys.ActorOf(BlobServer.Props(_source, stream: stream));
        EventFilter.Info(contains: $"blob {digest[..12]}…: 3.1 of 3.1 MB (100").ExpectOne(Wait,
            () => Fetch(target, digest, server, Streaming with { ProgressMinBytes = 1 << 20 }));
    }

    [Fact]
    public void A_stream_listening_on_every_interface_offers_the_address_others_reach_it_at_on_its_fixed_port()
    {
        var (digest, target) = Blob();
        var port = Actors.Nodes.LocalFederation.FreePort();
        // Behind NAT: listen on 0.0.0.0, offer the public address (here loopback, so the fetch can reach it).
        using var stream = new BlobStreamServer(_source, "127.0.0.1", null, bindHost: "0.0.0.0", port: port);
        var offer = stream.Offer(digest);
        Assert.Equal(("127.0.0.1", port), (offer.Host, offer.Port));
        Fetch(target, digest, Sys.ActorOf(BlobServer.Props(_source, stream: stream)), Streaming);
        var taken = Assert.Throws<System.Net.Sockets.SocketException>(() => new BlobStreamServer(_source, "127.0.0.1", null, port: port));
        Assert.Contains($"the blob stream cannot listen on 127.0.0.1:{port} (fate-llm.transfer.stream-port, --stream-port)", taken.Message);
    }

    [Fact]
    public void A_server_that_streams_nothing_is_read_in_chunks()
    {
        var (digest, target) = Blob();
        var done = Fetch(target, digest, Sys.ActorOf(BlobServer.Props(_source)), Streaming);
        Assert.Equal((_blob.Length + Streaming.ChunkSize - 1) / Streaming.ChunkSize, done.Chunks);
    }

    [Fact]
    public async Task A_ticket_serves_once_and_a_forged_one_never()
    {
        var (digest, _) = Blob();
        using var stream = new BlobStreamServer(_source, "127.0.0.1", null);
        var offer = stream.Offer(digest);
        var file = Path.Combine(TestSupport.TempDir(), "part");
        Assert.True((await BlobStreamReader.ReadAsync(offer, file, 0, null, Idle, CancellationToken.None)).Complete);
        var reused = await Assert.ThrowsAsync<IOException>(() => BlobStreamReader.ReadAsync(offer, file, 0, null, Idle, CancellationToken.None));
        Assert.Contains("refused the stream ticket", reused.Message);
        await Assert.ThrowsAsync<IOException>(() => BlobStreamReader.ReadAsync(offer with { Ticket = new byte[32] }, file, 0, null, Idle, CancellationToken.None));
    }

    [Fact]
    public async Task Under_tls_only_a_certificate_of_the_federation_reads_the_stream()
    {
        var (digest, target) = Blob();
        var (node, member, stranger) = TestSupport.Certificates();
        using var stream = new BlobStreamServer(_source, "127.0.0.1", node);

        var server = Sys.ActorOf(BlobServer.Props(_source, stream: stream));
        Fetch(target, digest, server, Streaming with { StreamTls = member });
        var file = Path.Combine(TestSupport.TempDir(), "part");
        await Assert.ThrowsAnyAsync<Exception>(() => BlobStreamReader.ReadAsync(stream.Offer(digest), file, 0, stranger, Idle, CancellationToken.None));
        await Assert.ThrowsAsync<IOException>(() => BlobStreamReader.ReadAsync(stream.Offer(digest), file, 0, null, Idle, CancellationToken.None));
    }
}
