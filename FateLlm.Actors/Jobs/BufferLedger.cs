using System.Collections.Immutable;

namespace FateLlm.Actors.Jobs;

/// <summary>An update waiting in the buffer: how it was dispatched and what arrived.</summary>
public sealed record PendingUpdate(UpdateDispatched Dispatch, UpdateBuffered Arrival)
{
    public int Id => Dispatch.UpdateId;
    public string Org => Dispatch.Org;
}

/// <summary>
/// Where a buffered schedule stands, folded from the job's events (the same fold on recovery and live): the version the
/// global is at, the updates dispatched and not yet settled, the updates waiting for a flush (in arrival order), and the
/// next update id. An update a flush applied or refused leaves the ledger with that flush, so none is applied twice.
/// </summary>
public sealed record BufferLedger(int Version, int NextUpdate, ImmutableSortedDictionary<int, UpdateDispatched> InFlight, ImmutableList<PendingUpdate> Pending)
{
    public static BufferLedger Empty { get; } = new(0, 1, ImmutableSortedDictionary<int, UpdateDispatched>.Empty, ImmutableList<PendingUpdate>.Empty);

    public BufferLedger Apply(IJobEvent e) => e switch
    {
        UpdateDispatched d => this with { InFlight = InFlight.SetItem(d.UpdateId, d), NextUpdate = Math.Max(NextUpdate, d.UpdateId + 1) },
        UpdateBuffered b when InFlight.TryGetValue(b.UpdateId, out var d) && Pending.All(p => p.Id != b.UpdateId) =>
            this with { InFlight = InFlight.Remove(b.UpdateId), Pending = Pending.Add(new PendingUpdate(d, b)) },
        UpdateDropped x => this with { InFlight = InFlight.Remove(x.UpdateId), Pending = Pending.RemoveAll(p => p.Id == x.UpdateId) },
        RoundCompleted { Summary.Buffer: { } flush } c => this with
        {
            Version = c.Summary.Round,
            Pending = Pending.RemoveAll(p => flush.Settled.Contains(p.Id)),
        },
        RoundCompleted c => this with { Version = c.Summary.Round },
        _ => this,
    };

    /// <summary>Whether the party has work dispatched or an update waiting (a party has at most one of either).</summary>
    public bool Busy(string org) => InFlight.Values.Any(d => d.Org == org) || Pending.Any(p => p.Org == org);
}
