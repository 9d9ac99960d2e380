namespace FateLlm.Actors.Board;

/// <summary>
/// Where a <see cref="FederationBoard"/> leaves its snapshots and where a web server takes them from: the latest one,
/// and a callback per live subscriber (a server-sent-events connection). Thread-safe; callbacks must not block.
/// </summary>
public sealed class BoardFeed
{
    readonly object _gate = new();
    readonly List<Action<BoardSnapshot>> _subscribers = new();

    public BoardSnapshot Latest { get; private set; } = new(DateTime.UtcNow, 0, [], [], []);

    public void Publish(BoardSnapshot snapshot)
    {
        Action<BoardSnapshot>[] targets;
        lock (_gate)
        {
            Latest = snapshot;
            targets = _subscribers.ToArray();
        }
        foreach (var t in targets) t(snapshot);
    }

    /// <summary>Calls <paramref name="onSnapshot"/> with the latest snapshot now and with every later one until disposed.</summary>
    public IDisposable Subscribe(Action<BoardSnapshot> onSnapshot)
    {
        BoardSnapshot latest;
        lock (_gate)
        {
            _subscribers.Add(onSnapshot);
            latest = Latest;
        }
        onSnapshot(latest);
        return new Subscription(this, onSnapshot);
    }

    sealed class Subscription(BoardFeed feed, Action<BoardSnapshot> callback) : IDisposable
    {
        public void Dispose()
        {
            lock (feed._gate) feed._subscribers.Remove(callback);
        }
    }
}
