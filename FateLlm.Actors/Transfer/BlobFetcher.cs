using System.Diagnostics;
using Akka.Actor;

namespace FateLlm.Actors.Transfer;

public sealed record TransferSettings(int ChunkSize, int Window, TimeSpan ChunkTimeout, int MaxAttemptsPerChunk)
{
    public static readonly TransferSettings Default = new(512 * 1024, 4, TimeSpan.FromSeconds(5), 8);
}

/// <summary>
/// Pulls one blob from a remote <see cref="BlobServer"/> into the local store: at most <c>Window</c> chunks in flight
/// (memory is bounded by window × chunk size, never the blob), chunks written in place to a scratch file,
/// re-requests after a timeout, SHA-256 verified before the blob becomes visible. Reports to its parent and stops.
/// </summary>
public sealed class BlobFetcher : ReceiveActor, IWithTimers
{
    readonly BlobStore _store;
    readonly BlobLocation _source;
    readonly TransferSettings _s;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly Dictionary<int, (DateTime SentAt, int Attempts)> _inFlight = new();
    readonly HashSet<int> _received = new();
    int _totalChunks = -1, _next, _retransmissions;
    FileStream? _file;
    string? _incoming;

    public ITimerScheduler Timers { get; set; } = null!;

    public BlobFetcher(BlobStore store, BlobLocation source, TransferSettings settings)
    {
        _store = store;
        _source = source;
        _s = settings;
        Receive<ChunkData>(OnChunk);
        Receive<BlobNotFound>(n => Fail($"the source no longer has blob {n.Digest[..12]}…"));
        Receive<Tick>(_ => CheckTimeouts());
    }

    sealed record Tick;

    protected override void PreStart()
    {
        if (_store.Has(_source.Digest))
        {
            Finish(0);
            return;
        }
        _incoming = _store.NewIncoming(_source.Digest);
        _file = new FileStream(_incoming, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
        if (_source.Size > 0) _totalChunks = (int)((_source.Size + _s.ChunkSize - 1) / _s.ChunkSize);
        Request(0);
        _next = 1;
        Timers.StartPeriodicTimer("tick", new Tick(), TimeSpan.FromMilliseconds(Math.Max(50, _s.ChunkTimeout.TotalMilliseconds / 4)));
    }

    protected override void PostStop()
    {
        _file?.Dispose();
        if (_incoming != null && File.Exists(_incoming)) File.Delete(_incoming);
    }

    void Request(int index)
    {
        var attempts = _inFlight.TryGetValue(index, out var f) ? f.Attempts + 1 : 1;
        _inFlight[index] = (DateTime.UtcNow, attempts);
        _source.Server.Tell(new FetchChunk(_source.Digest, index, _s.ChunkSize));
    }

    void OnChunk(ChunkData c)
    {
        if (c.Digest != _source.Digest || _received.Contains(c.Index) || _file is null) return;
        if (_totalChunks < 0) _totalChunks = (int)Math.Max(1, (c.TotalSize + _s.ChunkSize - 1) / _s.ChunkSize);
        _file.Seek((long)c.Index * _s.ChunkSize, SeekOrigin.Begin);
        _file.Write(c.Data);
        _received.Add(c.Index);
        _inFlight.Remove(c.Index);
        while (_inFlight.Count < _s.Window && _next < _totalChunks) Request(_next++);
        if (_received.Count == _totalChunks) Complete();
    }

    void CheckTimeouts()
    {
        var now = DateTime.UtcNow;
        foreach (var (index, (sentAt, attempts)) in _inFlight.ToList())
        {
            if (now - sentAt < _s.ChunkTimeout) continue;
            if (attempts >= _s.MaxAttemptsPerChunk)
            {
                Fail($"chunk {index} of blob {_source.Digest[..12]}… did not arrive after {attempts} attempts");
                return;
            }
            _retransmissions++;
            Request(index);
        }
    }

    void Complete()
    {
        _file!.Flush();
        _file.Dispose();
        _file = null;
        if (!_store.Commit(_incoming!, _source.Digest))
        {
            Fail($"blob {_source.Digest[..12]}… arrived but its SHA-256 does not match");
            return;
        }
        _incoming = null;
        Finish(_totalChunks);
    }

    void Finish(int chunks)
    {
        Context.Parent.Tell(new FetchCompleted(_source.Digest, _store.Size(_source.Digest), chunks, _retransmissions, _clock.Elapsed));
        Context.Stop(Self);
    }

    void Fail(string reason)
    {
        Context.Parent.Tell(new FetchFailed(_source.Digest, reason));
        Context.Stop(Self);
    }

    public static Props Props(BlobStore store, BlobLocation source, TransferSettings settings) =>
        Akka.Actor.Props.Create(() => new BlobFetcher(store, source, settings));
}
