using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FateLlm.Actors.Security;
using FateLlm.Training.IO;

namespace FateLlm.Actors.Transfer;

/// <summary>
/// The data plane of one node: a TCP listener that streams whole blobs (or their tail, to resume) to whoever redeems a
/// ticket the node's <see cref="BlobServer"/> handed out over Akka.Remote. Control stays on Akka.Remote, which already
/// authenticates members (and under TLS proves their organization); a ticket is 32 random bytes, bound to one digest,
/// single-use, valid for a minute. Under TLS the stream is TLS too, mutually authenticated with the federation's
/// certificates. Memory per connection is one copy buffer, whatever the blob's size.
/// </summary>
public sealed class BlobStreamServer : IDisposable
{
    const uint Magic = 0x31534C46; // "FLS1"
    public const int BufferSize = 1 << 20;
    static readonly TimeSpan TicketLife = TimeSpan.FromMinutes(1);

    readonly BlobStore _store;
    readonly NodeTls? _tls;
    readonly TcpListener _listener;
    readonly ConcurrentDictionary<string, (string Digest, DateTime Expires)> _tickets = new();
    readonly CancellationTokenSource _stop = new();

    public string Host { get; }
    public int Port { get; }

    long _cutFirstAfter;
    readonly bool _stallAtCut;

    /// <param name="host">The address offered to fetchers: where other nodes reach this one.</param>
    /// <param name="bindHost">The address listened on, when it differs from <paramref name="host"/> (behind NAT: 0.0.0.0).</param>
    /// <param name="port">The port listened on and offered (0: any free port).</param>
    /// <param name="cutFirstAfter">Fault injection (specs): the first stream served is cut after this many bytes.</param>
    /// <param name="stallAtCut">The cut holds the connection open and sends nothing more, as a stalled server does, instead of closing it.</param>
    public BlobStreamServer(BlobStore store, string host, NodeTls? tls, string? bindHost = null, int port = 0, long cutFirstAfter = 0, bool stallAtCut = false)
    {
        _cutFirstAfter = cutFirstAfter;
        _stallAtCut = stallAtCut;
        _store = store;
        _tls = tls;
        var listen = bindHost ?? host;
        var address = IPAddress.TryParse(listen, out var ip) ? ip : Dns.GetHostAddresses(listen).First(a => a.AddressFamily == AddressFamily.InterNetwork);
        _listener = new TcpListener(address, port);
        try { _listener.Start(); }
        catch (SocketException e) { throw new SocketException((int)e.SocketErrorCode, $"the blob stream cannot listen on {listen}:{port} (fate-llm.transfer.stream-port, --stream-port): {e.Message}"); }
        Host = host;
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _ = AcceptLoop();
    }

    public StreamOffered Offer(string digest)
    {
        foreach (var (k, v) in _tickets)
            if (v.Expires < DateTime.UtcNow) _tickets.TryRemove(k, out _);
        var ticket = RandomNumberGenerator.GetBytes(32);
        _tickets[Convert.ToHexString(ticket)] = (digest, DateTime.UtcNow + TicketLife);
        return new StreamOffered(digest, Host, Port, ticket, _tls is not null);
    }

    async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await _listener.AcceptTcpClientAsync(_stop.Token); }
            catch (Exception) when (_stop.IsCancellationRequested) { return; }
            catch (SocketException) { continue; }
            _ = Serve(client);
        }
    }

    async Task Serve(TcpClient client)
    {
        using var connection = client;
        try
        {
            client.NoDelay = true;
            Stream stream = client.GetStream();
            if (_tls is { } tls)
            {
                var ssl = new SslStream(stream, false, (_, cert, _, _) => cert is X509Certificate2 c && tls.IsFromFederation(c, out _));
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = tls.Certificate, ClientCertificateRequired = true }, _stop.Token);
                stream = ssl;
            }
            await using var s = stream;
            var header = new byte[4 + 32 + 8];
            await s.ReadExactlyAsync(header, _stop.Token);
            var offset = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(36));
            if (BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic
                || !_tickets.TryRemove(Convert.ToHexString(header.AsSpan(4, 32)), out var t) || t.Expires < DateTime.UtcNow || !_store.Has(t.Digest))
            {
                await s.WriteAsync(new byte[] { 1 }, _stop.Token);
                return;
            }
            await using var file = new FileStream(_store.PathOf(t.Digest), FileMode.Open, FileAccess.Read, FileShare.Read, BufferSize, FileOptions.SequentialScan);
            if (offset < 0 || offset > file.Length) offset = 0;
            var reply = new byte[9];
            BinaryPrimitives.WriteInt64LittleEndian(reply.AsSpan(1), file.Length);
            await s.WriteAsync(reply, _stop.Token);
            file.Seek(offset, SeekOrigin.Begin);
            var cut = Interlocked.Exchange(ref _cutFirstAfter, 0);
            if (cut > 0)
            {
                var part = new byte[Math.Min(cut, file.Length - offset)];
                await file.ReadExactlyAsync(part, _stop.Token);
                await s.WriteAsync(part, _stop.Token);
                if (_stallAtCut) await Task.Delay(Timeout.Infinite, _stop.Token);
                return;
            }
            await file.CopyToAsync(s, BufferSize, _stop.Token);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or System.Security.Authentication.AuthenticationException) { }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
    }
}

/// <summary>
/// What one stream read left in the scratch file: its length, whether that is the whole blob, and then the digest of
/// the whole file in the offered digest's algorithm (hashed as it arrived, so the store need not read it again).
/// </summary>
public sealed record StreamRead(long Bytes, bool Complete, string? Digest);

/// <summary>
/// The reading side of <see cref="BlobStreamServer"/>: appends the stream to the scratch file from
/// <paramref name="offset"/>; a cut connection leaves a prefix to resume from with a new ticket. Every network step
/// (connect, handshake, header, each read) must make progress within <c>idle</c>: a server that stalls without closing
/// counts as a cut instead of holding the fetch until the round's deadline.
/// </summary>
public static class BlobStreamReader
{
    /// <param name="progress">Called with (bytes stored, total) after each block is hashed and written.</param>
    public static async Task<StreamRead> ReadAsync(StreamOffered offer, string incoming, long offset, NodeTls? tls, TimeSpan idle, CancellationToken ct,
        Action<long, long>? progress = null)
    {
        using var client = new TcpClient { NoDelay = true, ReceiveBufferSize = BlobStreamServer.BufferSize };
        await Within(idle, "connecting", ct, async t => { await client.ConnectAsync(offer.Host, offer.Port, t); return 0; });
        Stream stream = client.GetStream();
        if (offer.Tls)
        {
            if (tls is null) throw new IOException("the blob stream is TLS but this node has no certificate");
            var ssl = new SslStream(stream, false, (_, cert, _, _) => cert is X509Certificate2 c && tls.IsFromFederation(c, out _));
            await Within(idle, "the TLS handshake", ct, async t =>
            {
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = offer.Host, ClientCertificates = new X509CertificateCollection { tls.Certificate },
                }, t);
                return 0;
            });
            stream = ssl;
        }
        await using var s = stream;
        var header = new byte[44];
        BinaryPrimitives.WriteUInt32LittleEndian(header, 0x31534C46);
        offer.Ticket.CopyTo(header, 4);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(36), offset);
        var reply = new byte[9];
        await Within(idle, "the ticket exchange", ct, async t =>
        {
            await s.WriteAsync(header, t);
            await s.ReadExactlyAsync(reply.AsMemory(0, 1), t);
            if (reply[0] != 0) throw new IOException("the blob server refused the stream ticket");
            await s.ReadExactlyAsync(reply.AsMemory(1, 8), t);
            return 0;
        });
        var total = BinaryPrimitives.ReadInt64LittleEndian(reply.AsSpan(1));
        await using var file = new FileStream(incoming, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, BlobStreamServer.BufferSize);
        file.SetLength(offset);
        // The digest asked for names its algorithm: a SHA-256 blob of an older store verifies as SHA-256.
        using var hash = new ContentDigest.Hasher(ContentDigest.TryAlgorithmOf(offer.Digest, out var algorithm) ? algorithm : ContentDigest.Current);
        var buffer = new byte[BlobStreamServer.BufferSize];
        // A resumed stream hashes the prefix it already has first.
        for (int n; file.Position < offset && (n = await file.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, offset - file.Position)), ct)) > 0;)
            hash.Append(buffer.AsSpan(0, n));
        file.Seek(offset, SeekOrigin.Begin);
        // Two blocks: while one is hashed and written to the store (on another thread), the socket fills the other.
        // A block is filled whole before it is handed over: fewer, larger hash and write calls than one per socket read.
        var blocks = new[] { buffer, new byte[BlobStreamServer.BufferSize] };
        long received = offset, stored = offset;
        var storing = Task.CompletedTask;
        // One timer for the whole read loop, re-armed before each read. It also runs while the other block is hashed and
        // written, so a disk that stalls longer than idle makes the next read end as cut, to be resumed.
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(ct);
        for (var b = 0; received < total; b ^= 1)
        {
            var block = blocks[b];
            int want = (int)Math.Min(block.Length, total - received), filled = 0;
            var ended = false;
            try
            {
                while (filled < want)
                {
                    stall.CancelAfter(idle);
                    var n = await s.ReadAsync(block.AsMemory(filled, want - filled), stall.Token);
                    if (n == 0) { ended = true; break; }
                    filled += n;
                }
            }
            catch (IOException) { ended = true; } // cut: the caller resumes from what arrived
            catch (OperationCanceledException) when (!ct.IsCancellationRequested) { ended = true; } // stalled: the same
            await storing;
            if (filled > 0)
            {
                var count = filled;
                received += count;
                storing = Task.Run(async () =>
                {
                    hash.Append(block.AsSpan(0, count));
                    await file.WriteAsync(block.AsMemory(0, count), ct);
                    stored += count;
                    progress?.Invoke(stored, total);
                }, ct);
            }
            if (ended) break;
        }
        await storing;
        await file.FlushAsync(ct);
        return new StreamRead(stored, stored == total, stored == total ? hash.Finish() : null);
    }

    /// <summary>One step of setting up the stream under its own idle timer.</summary>
    static async Task<T> Within<T>(TimeSpan idle, string step, CancellationToken ct, Func<CancellationToken, ValueTask<T>> op)
    {
        using var timer = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timer.CancelAfter(idle);
        try { return await op(timer.Token); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TimeoutException($"the blob stream stalled: no progress in {step} for {idle.TotalSeconds:G3} s");
        }
    }
}
