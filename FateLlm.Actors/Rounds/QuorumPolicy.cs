namespace FateLlm.Actors.Rounds;

/// <summary>When a round may aggregate: every selected party answered, or the deadline passed with at least Min answers.</summary>
public sealed record QuorumPolicy(int Min, IReadOnlyList<string> Parties)
{
    public bool AllAnswered(int answered) => answered >= Parties.Count;
    public bool Met(int succeeded) => succeeded >= Min;

    public string Shortfall(IReadOnlyDictionary<string, string> failures, IReadOnlyCollection<string> succeeded)
    {
        var missing = Parties.Where(p => !succeeded.Contains(p))
            .Select(p => failures.TryGetValue(p, out var why) ? $"{p} ({why})" : $"{p} (no answer)");
        return $"quorum not met: {succeeded.Count} of {Parties.Count} parties delivered an update, {Min} required; missing: {string.Join(", ", missing)}";
    }
}
