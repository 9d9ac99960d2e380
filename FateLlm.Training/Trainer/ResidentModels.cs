using System.Runtime.InteropServices;

namespace FateLlm.Training.Trainer;

/// <summary>
/// Base models that stay loaded on a node between the rounds, evaluations and jobs that use them, so an 8 B base is
/// read once rather than once per exchange. A model is lent to one user at a time (a concurrent user loads its own
/// copy) and comes back when the user disposes it; one idle longer than <see cref="IdleRelease"/> is freed. Entries are
/// keyed by the caller: the weights' digest and everything that shapes the module (PEFT method, targets, rank, base
/// dtype), because adapter layers are part of it; a user's trainable state is loaded by the user every time.
/// </summary>
public sealed class ResidentModels
{
    /// <summary>The node's models (one process is one node; in-process federations share it, one user at a time).</summary>
    public static ResidentModels Shared { get; } = new();

    sealed class Entry(string key, string path, FineTuning run)
    {
        public string Key { get; } = key;
        public string Path { get; } = path;
        public FineTuning Run { get; } = run;
        public bool InUse { get; set; } = true;
        public DateTime IdleSince { get; set; }
    }

    readonly object _gate = new();
    readonly List<Entry> _entries = [];
    Timer? _sweeper;
    int _loads;

    /// <summary>How long an unused model stays loaded; zero (the default outside a party node) keeps none.</summary>
    public TimeSpan IdleRelease { get; set; } = TimeSpan.Zero;

    /// <summary>Models loaded through this cache so far (specs count reloads).</summary>
    public int Loads => _loads;

    /// <summary>Models held now, lent or idle.</summary>
    public int Count { get { lock (_gate) return _entries.Count; } }

    /// <summary>
    /// An idle model of <paramref name="key"/>, or a new one from <paramref name="load"/>. Disposing the result returns
    /// it. Idle models of the same folder under another key are freed first: never two copies of one base for nothing.
    /// </summary>
    public FineTuning Open(string modelPath, string key, Func<FineTuning> load)
    {
        var path = System.IO.Path.GetFullPath(modelPath);
        var freed = false;
        lock (_gate)
        {
            if (_entries.FirstOrDefault(e => !e.InUse && e.Key == key) is { } idle)
            {
                idle.InUse = true;
                idle.Run.LoadSeconds = 0;
                return idle.Run;
            }
            var stale = _entries.Where(e => !e.InUse && e.Path == path).ToList();
            stale.ForEach(Evict);
            freed = stale.Count > 0;
        }
        if (freed) ReturnFreedMemory();
        var run = load();
        Interlocked.Increment(ref _loads);
        if (IdleRelease <= TimeSpan.Zero) return run;
        // A model that stays resident must not die with the dispose scope its first user happened to load it in.
        foreach (var p in run.Model.parameters()) p.DetachFromDisposeScope();
        foreach (var b in run.Model.buffers()) b.DetachFromDisposeScope();
        var entry = new Entry(key, path, run);
        run.ReturnTo = () => Return(entry);
        lock (_gate) _entries.Add(entry);
        return run;
    }

    void Return(Entry entry)
    {
        lock (_gate)
        {
            if (!entry.InUse) return;
            // As a fresh load leaves it: no gradients held, training mode.
            entry.Run.Model.zero_grad();
            entry.Run.Model.train();
            entry.InUse = false;
            entry.IdleSince = DateTime.UtcNow;
            if (IdleRelease > TimeSpan.Zero)
            {
                var period = TimeSpan.FromTicks(Math.Max(TimeSpan.FromSeconds(1).Ticks, IdleRelease.Ticks / 4));
                _sweeper ??= new Timer(_ => Sweep(), null, period, period);
                return;
            }
        }
        Sweep();
    }

    /// <summary>Frees every model idle for <see cref="IdleRelease"/> or longer.</summary>
    public void Sweep() => Release(e => DateTime.UtcNow - e.IdleSince >= IdleRelease);

    /// <summary>Frees every idle model now (shutdown, specs).</summary>
    public void ReleaseIdle() => Release(_ => true);

    void Release(Func<Entry, bool> due)
    {
        var freed = false;
        lock (_gate)
        {
            var idle = _entries.Where(e => !e.InUse && due(e)).ToList();
            idle.ForEach(Evict);
            freed = idle.Count > 0;
            if (_entries.Count == 0 && _sweeper is not null)
            {
                _sweeper.Dispose();
                _sweeper = null;
            }
        }
        if (freed) ReturnFreedMemory();
    }

    void Evict(Entry e)
    {
        _entries.Remove(e);
        e.Run.ReturnTo = null;
        e.Run.Dispose();
    }

    /// <summary>glibc keeps freed blocks in its arenas; trimming gives a released base's gigabytes back to the OS.</summary>
    static void ReturnFreedMemory()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { /* not glibc */ }
    }

    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);
}
