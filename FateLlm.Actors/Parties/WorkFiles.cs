using Akka.Actor;
using Akka.Event;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Compression;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Parties;

/// <summary>A global offered as a delta did not rebuild: fetch it in full.</summary>
internal sealed record RefetchInFull(string Name, BlobLocation Location);

/// <summary>
/// What every piece of party work starts with: the job's spec (a blob, fetched once per job and then found in the
/// store) and the downloads it was given, each pulled by a <see cref="BlobFetcher"/> child whose correlation id is
/// the download's name.
/// </summary>
internal sealed class WorkFiles
{
    const string SpecDownload = "job-spec";
    readonly Dictionary<string, string> _paths = new();
    readonly IReadOnlyCollection<string> _downloads;

    public long DownloadBytes { get; private set; }
    readonly Dictionary<string, long> _received = new();
    long _total;
    /// <summary>Seconds from asking for the files until the last one was here.</summary>
    public double DownloadSeconds { get; private set; }
    readonly System.Diagnostics.Stopwatch _fetching = System.Diagnostics.Stopwatch.StartNew();

    // A global offered as a delta (Downlink): by the delta's download name, the global it rebuilds and the base it needs.
    readonly Dictionary<string, (string Name, BlobLocation Full, string Base)> _rebuilds = new();
    readonly IActorContext _context;
    readonly PartyNodeSettings _s;

    public WorkFiles(IActorContext context, PartyNodeSettings s, BlobLocation spec, IReadOnlyDictionary<string, BlobLocation> downloads,
        IReadOnlyDictionary<string, string> parameters)
    {
        (_context, _s) = (context, s);
        _downloads = downloads.Keys.Where(k => !Downlink.IsDelta(k)).ToArray();
        Fetch(SpecDownload, spec);
        foreach (var name in _downloads)
        {
            var full = downloads[name];
            // Holding what the arbiter sent last time, the party fetches only the compressed delta and rebuilds the rest.
            if (!s.Store.Has(full.Digest) && downloads.TryGetValue(Downlink.DeltaOf(name), out var delta)
                && Downlink.BaseOf(parameters, name) is { } held && s.Store.Has(held))
            {
                _rebuilds[Downlink.DeltaOf(name)] = (name, full, held);
                Fetch(Downlink.DeltaOf(name), delta);
            }
            else Fetch(name, full);
        }
    }

    void Fetch(string name, BlobLocation location)
    {
        _total += location.Size;
        _context.ActorOf(BlobFetcher.Props(_s.Store, location, _s.Transfer, name, progress: true));
    }

    /// <summary>Records how far one fetch is; what all of them have moved so far.</summary>
    public WorkProgress Progressed(FetchProgress p)
    {
        _received[p.Correlation] = p.Received;
        return new WorkProgress(WorkProgress.Downloading, 0, 0, 0) { Bytes = _received.Values.Sum(), TotalBytes = _total };
    }

    /// <summary>Records a finished fetch; true once the spec and every download are here.</summary>
    public bool Arrived(FetchCompleted f, PartyNodeSettings s)
    {
        if (f.Correlation != SpecDownload && f.Chunks > 0) DownloadBytes += f.Bytes;
        if (_rebuilds.Remove(f.Correlation, out var r))
        {
            Rebuild(r.Name, r.Full, r.Base, f.Digest);
            return false;
        }
        _paths[f.Correlation] = s.Store.PathOf(f.Digest);
        if (_paths.Count < _downloads.Count + 1) return false;
        DownloadSeconds = _fetching.Elapsed.TotalSeconds;
        return true;
    }

    /// <summary>
    /// Rebuilds a global from the held one and its delta off the actor thread, told back as the global's fetch; one that
    /// does not rebuild to the offered digest is fetched in full instead.
    /// </summary>
    void Rebuild(string name, BlobLocation full, string held, string delta)
    {
        var (store, self, log) = (_s.Store, _context.Self, _context.System.Log);
        Task.Run(() =>
        {
            try
            {
                var digest = store.Put(Downlink.Rebuild(store.Read(held), store.Read(delta), full.Digest));
                self.Tell(new FetchCompleted(name, digest, 0, 0, 0, TimeSpan.Zero));
            }
            catch (Exception e) when (e is CompressedUpdateException or IOException or InvalidDataException)
            {
                log.Warning("could not rebuild '{0}' from its delta ({1}); fetching it in full", name, e.Message);
                self.Tell(new RefetchInFull(name, full));
            }
        });
    }

    /// <summary>A rebuild failed: the full download takes its place.</summary>
    public void Refetch(RefetchInFull r) => Fetch(r.Name, r.Location);

    public JobSpec Spec(string jobId) => JobSpec.FromJson(File.ReadAllBytes(_paths[SpecDownload]), $"job {jobId}");

    /// <summary>The downloads' local paths by name (without the spec).</summary>
    public IReadOnlyDictionary<string, string> Downloads => _downloads.ToDictionary(k => k, k => _paths[k]);

    public string PathOf(string download) => _paths[download];
}
