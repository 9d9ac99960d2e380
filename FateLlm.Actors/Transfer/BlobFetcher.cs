using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Faults;
using FateLlm.Training.IO;

namespace FateLlm.Actors.Transfer;

public sealed record TransferSettings(int ChunkSize, int Window, TimeSpan ChunkTimeout, int MaxAttemptsPerChunk)
{
    public static readonly TransferSettings Default = new(512 * 1024, 4, TimeSpan.FromSeconds(5), 8);

    /// <summary>Blobs at least this large (sub-models, full checkpoints) log their progress every <see cref="ProgressInterval"/>.</summary>
    public long ProgressMinBytes { get; init; } = 16L << 20;
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>How often a <see cref="BlobGather"/> asks the cluster again, and when it gives up.</summary>
    public TimeSpan GatherRetry { get; init; } = TimeSpan.FromSeconds(2);
    public TimeSpan GatherDeadline { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Ask for the blob over the source's data-plane stream first (chunks remain the fallback).</summary>
    public bool Stream { get; init; }
    /// <summary>This node's certificate for TLS streams (nodes running mutual TLS).</summary>
    public Security.NodeTls? StreamTls { get; init; }
    /// <summary>The node's fault points (<see cref="FaultPoints.TransferCommit"/> fails storing a fetched blob).</summary>
    public FaultInjection Faults { get; init; } = FaultInjection.None;
}

/// <summary>
/// Pulls one blob from a remote <see cref="BlobServer"/> into the local store: at most <c>Window</c> chunks in flight
/// (memory is bounded by window × chunk size, never the blob), chunks written in place to a scratch file,
/// re-requests after a timeout, verified against its digest off the actor thread before the blob becomes visible. A blob that
/// cannot be stored (an I/O error moving it into place) is fetched again at once, and after
/// <see cref="TransferSettings.MaxAttemptsPerChunk"/> such failures the fetch fails naming the error, instead of waiting
/// for the round's deadline. Reports to its parent with the parent's correlation id and stops. Phases: transferring,
/// verifying.
/// </summary>
public sealed class BlobFetcher : ReceiveActor, IWithTimers
{
    readonly BlobStore _store;
    readonly BlobLocation _source;
    readonly TransferSettings _s;
    readonly string _correlation;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly Dictionary<int, (DateTimeOffset SentAt, int Attempts)> _inFlight = new();
    readonly HashSet<int> _received = new();
    int _totalChunks = -1, _next, _retransmissions;
    long _totalBytes, _receivedBytes;
    int _streamAttempts, _commitAttempts;
    /// <summary>Bytes a cut stream left in the scratch file: the next stream resumes there.</summary>
    long _streamed;
    readonly TransferProgress _progress;
    FileStream? _file;
    string? _incoming;
    /// <summary>Ends a stream read still running when this fetch stops (superseded, failed, or its requester gone).</summary>
    readonly CancellationTokenSource _stop = new();

    public ITimerScheduler Timers { get; set; } = null!;

    sealed record Tick;
    sealed record Verified(bool Ok);
    sealed record CommitFailed(string Reason);
    sealed record StreamTimeout;
    sealed record StreamFailed(string Reason);

    public BlobFetcher(BlobStore store, BlobLocation source, TransferSettings settings, string correlation, bool progress)
    {
        _store = store;
        _source = source;
        _s = settings;
        _correlation = correlation;
        _progress = new TransferProgress(Context.GetLogger(), source.Digest, settings, _clock, progress ? Context.Parent : null, correlation);
        Transferring();
    }

    void Transferring()
    {
        Receive<ChunkData>(OnChunk);
        Receive<BlobNotFound>(n => Fail($"the source no longer has blob {n.Digest[..12]}…"));
        Receive<Tick>(_ => CheckTimeouts());
    }

    void Verifying()
    {
        Receive<Verified>(v =>
        {
            if (!v.Ok)
            {
                Fail($"blob {_source.Digest[..12]}… arrived but its digest does not match");
                return;
            }
            _incoming = null;
            Finish(Math.Max(_totalChunks, 1));
        });
        Receive<CommitFailed>(f => Refetch(f.Reason));
        Receive<ChunkData>(_ => { }); // late duplicates of chunks already written
        Receive<BlobNotFound>(_ => { });
        Receive<StreamOffered>(_ => { });
    }

    protected override void PreStart()
    {
        if (_store.Has(_source.Digest))
        {
            Finish(0);
            return;
        }
        Start();
    }

    void Start()
    {
        _incoming = _store.NewIncoming(_source.Digest);
        if (_s.Stream)
        {
            AskForStream();
            return;
        }
        Become(Transferring);
        StartChunks();
    }

    /// <summary>Storing the blob failed: what arrived may be gone or half moved, so it is fetched again from the start.</summary>
    void Refetch(string reason)
    {
        DeleteIncoming();
        if (++_commitAttempts >= _s.MaxAttemptsPerChunk)
        {
            Fail($"blob {_source.Digest[..12]}… arrived but could not be stored ({_commitAttempts} times): {reason}");
            return;
        }
        Context.GetLogger().Warning("blob {0}…: could not be stored ({1}); fetching it again", _source.Digest[..12], reason);
        _retransmissions++;
        (_streamed, _next, _totalChunks, _receivedBytes, _streamAttempts) = (0, 0, -1, 0, 0);
        _received.Clear();
        _inFlight.Clear();
        Start();
    }

    void DeleteIncoming()
    {
        if (_incoming != null && File.Exists(_incoming)) File.Delete(_incoming);
    }

    // ---- the data plane: one stream, resumed from what arrived when cut; chunks over Akka.Remote when refused ----

    void AskForStream()
    {
        Timers.StartSingleTimer("stream", new StreamTimeout(), _s.ChunkTimeout); // before the ask: a spec's clock may move on seeing it
        _source.Server.Tell(new OpenStream(_source.Digest));
        Become(() =>
        {
            Receive<StreamOffered>(o => o.Digest == _source.Digest, o =>
            {
                Timers.Cancel("stream");
                var (incoming, offset, tls, idle, stop, progress) = (_incoming!, _streamed, _s.StreamTls, _s.ChunkTimeout, _stop.Token, _progress);
                Task.Run(() => BlobStreamReader.ReadAsync(o, incoming, offset, tls, idle, stop, progress.Report))
                    .PipeTo(Self, failure: e => new StreamFailed(e.GetBaseException().Message));
            });
            Receive<StreamRead>(r =>
            {
                _streamed = r.Bytes;
                if (r.Complete) Verify(r.Digest);
                else Restream("the stream was cut or stalled");
            });
            Receive<StreamFailed>(f => Restream(f.Reason));
            Receive<StreamRefused>(r => FallBack(r.Reason));
            Receive<StreamTimeout>(_ => FallBack("no stream offered in time"));
            Receive<BlobNotFound>(n => Fail($"the source no longer has blob {n.Digest[..12]}…"));
        });
    }

    void Restream(string why)
    {
        if (++_streamAttempts >= _s.MaxAttemptsPerChunk)
        {
            FallBack($"{why} ({_streamAttempts} times)");
            return;
        }
        _retransmissions++;
        AskForStream();
    }

    void FallBack(string why)
    {
        Context.GetLogger().Debug("blob {0}…: chunks instead of a stream ({1})", _source.Digest[..12], why);
        _streamed = 0;
        Become(Transferring);
        StartChunks();
    }

    void StartChunks()
    {
        _file = new FileStream(_incoming!, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
        if (_source.Size > 0) _totalChunks = (int)((_source.Size + _s.ChunkSize - 1) / _s.ChunkSize);
        Timers.StartPeriodicTimer("tick", new Tick(), TimeSpan.FromMilliseconds(Math.Max(50, _s.ChunkTimeout.TotalMilliseconds / 4)));
        Request(0);
        _next = 1;
    }

    protected override void PostStop()
    {
        _stop.Cancel();
        _file?.Dispose();
        DeleteIncoming();
    }

    // The scheduler's clock, so chunk timeouts follow the same time as the timers that check them (virtual in specs).
    DateTimeOffset Now => Context.System.Scheduler.Now;

    void Request(int index)
    {
        var attempts = _inFlight.TryGetValue(index, out var f) ? f.Attempts + 1 : 1;
        _inFlight[index] = (Now, attempts);
        _source.Server.Tell(new FetchChunk(_source.Digest, index, _s.ChunkSize));
    }

    void OnChunk(ChunkData c)
    {
        if (c.Digest != _source.Digest || _received.Contains(c.Index) || _file is null) return;
        if (_totalChunks < 0) _totalChunks = (int)Math.Max(1, (c.TotalSize + _s.ChunkSize - 1) / _s.ChunkSize);
        _file.Seek((long)c.Index * _s.ChunkSize, SeekOrigin.Begin);
        _file.Write(c.Data);
        _received.Add(c.Index);
        ReportProgress(c);
        _inFlight.Remove(c.Index);
        while (_inFlight.Count < _s.Window && _next < _totalChunks) Request(_next++);
        if (_received.Count == _totalChunks) Verify();
    }

    // Large downloads (an offsite sub-model, a checkpoint) say how far they are, so a long wait is not taken for a hang.
    void ReportProgress(ChunkData c)
    {
        _totalBytes = c.TotalSize;
        _receivedBytes += c.Data.Length;
        _progress.Report(_receivedBytes, _totalBytes);
    }

    /// <summary>
    /// Tells the parent (when it asked) how far the fetch is every progress interval, and logs a large blob's received MB then and once
    /// complete. The stream's read task reports through it as well, so it keeps its last report under its own lock; it
    /// only reads the fetch's clock and tells the parent captured when the fetch started.
    /// </summary>
    sealed class TransferProgress(ILoggingAdapter log, string digest, TransferSettings s, Stopwatch clock, IActorRef? parent, string correlation)
    {
        readonly object _gate = new();
        TimeSpan _last;

        public void Report(long received, long total)
        {
            TimeSpan now;
            lock (_gate)
            {
                now = clock.Elapsed;
                if (received < total && now - _last < s.ProgressInterval) return;
                _last = now;
            }
            if (received < total) parent?.Tell(new FetchProgress(correlation, received, total)); // the end is FetchCompleted
            if (total < s.ProgressMinBytes) return;
            log.Info("blob {0}…: {1:N1} of {2:N1} MB ({3:P0}) in {4:F1} s", digest[..12], received / 1e6, total / 1e6, (double)received / total, now.TotalSeconds);
        }
    }

    void CheckTimeouts()
    {
        var now = Now;
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

    void Verify(string? hashed = null)
    {
        Timers.CancelAll();
        _file?.Flush();
        _file?.Dispose();
        _file = null;
        Become(Verifying);
        var (store, incoming, digest) = (_store, _incoming!, _source.Digest);
        Exception? injected = null;
        try { _s.Faults.Trip(FaultPoints.TransferCommit, Context); }
        catch (InjectedFaultException e) { injected = new IOException(e.Message); }
        // Hashing a large blob takes long: off the actor thread.
        Task.Run(() => injected is null ? new Verified(store.Commit(incoming, digest, hashed)) : throw injected)
            .PipeTo(Self, failure: e => new CommitFailed(e.GetBaseException().Message));
    }

    void Finish(int chunks)
    {
        Context.Parent.Tell(new FetchCompleted(_correlation, _source.Digest, _store.Size(_source.Digest), chunks, _retransmissions, _clock.Elapsed));
        Context.Stop(Self);
    }

    void Fail(string reason)
    {
        Context.Parent.Tell(new FetchFailed(_correlation, _source.Digest, reason));
        Context.Stop(Self);
    }

    /// <param name="progress">Tell the parent <see cref="FetchProgress"/> every progress interval (it shows the transfer as work moving on).</param>
    public static Props Props(BlobStore store, BlobLocation source, TransferSettings settings, string correlation, bool progress = false) =>
        Akka.Actor.Props.Create(() => new BlobFetcher(store, source, settings, correlation, progress));
}
