using System.Globalization;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using FateLlm.Training.Federation;

namespace FateLlm.Actors.Faults;

public enum FaultAction { Throw, Terminate }

/// <summary>
/// The closed set of places an actor trips a fault (see <c>fate-llm.fault-injection.points</c> in reference.conf). A
/// configuration naming any other point is refused at load, so a misspelt point cannot silently never fire.
/// </summary>
public static class FaultPoints
{
    public const string JobPrepared = "job.prepared", JobRoundStarted = "job.round-started", JobRoundCompleted = "job.round-completed",
        JobEvaluating = "job.evaluating", JobExporting = "job.exporting";
    public const string RoundCollected = "round.collected", RoundStepped = "round.stepped";
    public const string PartyFit = "party.fit", PartyShare = "party.share", PartyMask = "party.mask", PartyUnmask = "party.unmask",
        PartyEvaluate = "party.evaluate";
    /// <summary>A party's update is stored and about to be offered: a crash here dies during its upload.</summary>
    public const string PartyOffer = "party.offer";
    /// <summary>Storing a fetched blob fails (an I/O error at the move into the store).</summary>
    public const string TransferCommit = "transfer.commit";

    public static readonly IReadOnlyList<string> All =
    [
        JobPrepared, JobRoundStarted, JobRoundCompleted, JobEvaluating, JobExporting, RoundCollected, RoundStepped,
        PartyFit, PartyOffer, PartyShare, PartyMask, PartyUnmask, PartyEvaluate, TransferCommit,
    ];

    /// <summary>The point of a party's secure-aggregation step.</summary>
    public static string OfSecAggStep(Parties.SecAggStep step) => step switch
    {
        Parties.SecAggStep.Share => PartyShare,
        Parties.SecAggStep.Mask => PartyMask,
        Parties.SecAggStep.Unmask => PartyUnmask,
        _ => throw new ArgumentOutOfRangeException(nameof(step), step, null),
    };
}

/// <summary>One deterministic crash point (see <c>fate-llm.fault-injection.points</c> in reference.conf).</summary>
public sealed record FaultPoint(string At, string Org, int Round, int Phase, FaultAction Action, int Times)
{
    /// <summary>Only in this job ("" = any).</summary>
    public string Job { get; init; } = "";
}

/// <summary>Raised by a <see cref="FaultAction.Throw"/> point: the actor fails there and its supervisor takes over.</summary>
public sealed class InjectedFaultException(string message) : Exception(message);

/// <summary>
/// The crash points configured for one node. Actors call <see cref="Trip"/> at their named points; a matching point
/// with firings left either throws (actor-level crash, supervised restart) or terminates the node (kill -9 as the
/// others see it). Points are counted per node, so "crash once, then recover" is reproducible.
/// </summary>
public sealed class FaultInjection
{
    public static readonly FaultInjection None = new([]);
    readonly FaultPoint[] _points;
    readonly int[] _fired;

    public FaultInjection(IReadOnlyList<FaultPoint> points)
    {
        foreach (var p in points)
            if (!FaultPoints.All.Contains(p.At)) throw new ArgumentException(Unknown(p.At));
        _points = points.ToArray();
        _fired = new int[_points.Length];
    }

    public IReadOnlyList<FaultPoint> Points => _points;

    static string Unknown(string at) =>
        $"'{at}' is not a fault point (did you mean '{Spelling.Nearest(at, FaultPoints.All)}'? known: {string.Join(", ", FaultPoints.All)})";

    public static FaultInjection FromConfig(Config config)
    {
        const string path = "fate-llm.fault-injection.points";
        if (!config.HasPath(path)) return None;
        var points = config.GetValue(path).GetArray().Select((v, i) =>
        {
            var o = v.GetObject() ?? throw new ConfigurationException($"{path}[{i}] must be an object {{ at, org, round, phase, action, times }}");
            foreach (var key in o.Items.Keys)
                if (!Keys.Contains(key)) throw new ConfigurationException($"{path}[{i}].{key} is not a field of a fault point (did you mean '{Spelling.Nearest(key, Keys)}'?)");
            string S(string k, string fallback) => o.Items.TryGetValue(k, out var x) ? x.GetString() : fallback;
            int I(string k, int fallback) => !o.Items.TryGetValue(k, out var x) ? fallback
                : int.TryParse(x.GetString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 0 ? n
                : throw new ConfigurationException($"{path}[{i}].{k} = '{x.GetString()}' is not a whole number ≥ 0");
            var action = S("action", "throw").ToLowerInvariant() switch
            {
                "throw" => FaultAction.Throw,
                "terminate" => FaultAction.Terminate,
                var a => throw new ConfigurationException($"{path}[{i}].action '{a}' is not throw or terminate"),
            };
            var at = S("at", "");
            if (at.Length == 0) throw new ConfigurationException($"{path}[{i}].at is required (one of {string.Join(", ", FaultPoints.All)})");
            if (!FaultPoints.All.Contains(at)) throw new ConfigurationException($"{path}[{i}].at: {Unknown(at)}");
            return new FaultPoint(at, S("org", ""), I("round", 0), I("phase", 0), action, I("times", 1)) { Job = S("job", "") };
        }).ToList();
        return new FaultInjection(points);
    }

    static readonly string[] Keys = ["at", "org", "job", "round", "phase", "action", "times"];

    /// <summary>
    /// Fires the first point matching <paramref name="at"/> that has firings left. Throws for <see cref="FaultAction.Throw"/>;
    /// for <see cref="FaultAction.Terminate"/> starts terminating the node and returns true (the caller stops what it was doing).
    /// </summary>
    public bool Trip(string at, IActorContext context, string org = "", int round = 0, int phase = 0, string job = "")
    {
        for (int i = 0; i < _points.Length; i++)
        {
            var p = _points[i];
            if (p.At != at || (p.Org.Length > 0 && p.Org != org) || (p.Round > 0 && p.Round != round) || (p.Phase > 0 && p.Phase != phase)
                || (p.Job.Length > 0 && p.Job != job)) continue;
            if (Interlocked.Increment(ref _fired[i]) > p.Times) continue;
            var what = $"fault injection at {at}{(org.Length > 0 ? $" of {org}" : "")} (round {round}, phase {phase})";
            if (p.Action == FaultAction.Throw) throw new InjectedFaultException(what);
            context.GetLogger().Warning("{0}: terminating this node", what);
            context.System.Terminate();
            return true;
        }
        return false;
    }
}
