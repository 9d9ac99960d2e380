using Akka.Actor;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Parties;

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
    readonly long _total;
    /// <summary>Seconds from asking for the files until the last one was here.</summary>
    public double DownloadSeconds { get; private set; }
    readonly System.Diagnostics.Stopwatch _fetching = System.Diagnostics.Stopwatch.StartNew();

    public WorkFiles(IActorContext context, PartyNodeSettings s, BlobLocation spec, IReadOnlyDictionary<string, BlobLocation> downloads)
    {
        _downloads = downloads.Keys.ToArray();
        _total = downloads.Values.Sum(d => d.Size) + spec.Size;
        foreach (var (name, location) in downloads.Prepend(new(SpecDownload, spec)))
            context.ActorOf(BlobFetcher.Props(s.Store, location, s.Transfer, name, progress: true));
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
        _paths[f.Correlation] = s.Store.PathOf(f.Digest);
        if (f.Correlation != SpecDownload && f.Chunks > 0) DownloadBytes += f.Bytes;
        if (_paths.Count < _downloads.Count + 1) return false;
        DownloadSeconds = _fetching.Elapsed.TotalSeconds;
        return true;
    }

    public JobSpec Spec(string jobId) => JobSpec.FromJson(File.ReadAllBytes(_paths[SpecDownload]), $"job {jobId}");

    /// <summary>The downloads' local paths by name (without the spec).</summary>
    public IReadOnlyDictionary<string, string> Downloads => _downloads.ToDictionary(k => k, k => _paths[k]);

    public string PathOf(string download) => _paths[download];
}
