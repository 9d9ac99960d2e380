using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Compression;
using FateLlm.Training.IO;

namespace FateLlm.Training.Federation;

/// <summary>One party of a simulation: its datasets by the names the job's party list uses.</summary>
public sealed record SimulatedParty(string Org, IReadOnlyDictionary<string, string> Datasets);

/// <summary>One party's answer to one exchange in a simulation (null update: it dropped out).</summary>
public sealed record SimulatedFit(int Round, int Phase, string Party, ClientUpdate? Update, string? Dropped)
{
    /// <summary>What the party sent up: its update as it left, compressed when the job says so.</summary>
    public long UploadBytes { get; init; }
    /// <summary>What the party fetched for it: downloads it did not hold, a global offered as a delta counted as the delta.</summary>
    public long DownloadBytes { get; init; }
}

/// <summary>What a simulated job produced: its final state and store, every fit, each round's server step, and the final evaluation.</summary>
public sealed record SimulationResult(JobSpec Spec, AlgorithmState State, BlobStore Store, IReadOnlyList<SimulatedFit> Fits,
    IReadOnlyList<StepOutcome> Steps, IReadOnlyDictionary<string, EvaluationResult> Evaluation, string OutputDir);

/// <summary>
/// Drives a plug-in's arbiter and party sides in one process, with no actors, no cluster and no network (as Flower's
/// simulation drives a strategy): prepare, then per round the plug-in's participants, each exchange's fits in party
/// order, the framework's server step (<see cref="RoundStep.Plain"/>: codec validation, central DP, the plug-in's step),
/// the final evaluation and the export. Each party reads its downloads from its own store and keeps its own workspace,
/// as on a party node; a party whose fit throws drops out of that exchange with the reason, as in a federation. What it
/// cannot show — dropouts by timing, lost messages, crashes, secure aggregation — is the cluster's to test; a party can
/// be made to drop out of an exchange with <c>dropout</c>.
/// </summary>
public sealed class FederatedSimulation(IFederatedAlgorithm algorithm, JobSpec spec, string modelPath, IReadOnlyList<SimulatedParty> parties, string root)
{
    /// <summary>Runs the whole job; <paramref name="dropout"/> (round, phase, party) makes a party miss an exchange.</summary>
    public SimulationResult Run(Func<int, int, string, bool>? dropout = null, CancellationToken ct = default)
    {
        if (spec.SecureAggregation.Enabled) throw new NotSupportedException("secure aggregation needs the round's actors: run the job through a federation");
        algorithm.Validate(spec);
        var store = new BlobStore(Path.Combine(root, "arbiter"));
        var server = new ServerContext(spec, store, modelPath, _ => { });
        var prepared = algorithm.Server.Prepare(server);
        server = server with { Spec = prepared.Spec };
        var state = prepared.Initial;
        var fits = new List<SimulatedFit>();
        var steps = new List<StepOutcome>();
        for (int round = 1; round <= prepared.Spec.Rounds; round++)
        {
            var ctx = new RoundContext(server, round, 1, algorithm.Server.SelectParticipants(prepared.Spec, round, 1));
            var exchange = RoundStep.Begin(algorithm, ctx, state);
            for (int phase = 1; ; phase++)
            {
                var offered = new List<OfferedUpdate>();
                foreach (var (party, instruction) in exchange.Instructions.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    if (dropout?.Invoke(round, phase, party) == true)
                    {
                        fits.Add(new SimulatedFit(round, phase, party, null, "dropped by the simulation"));
                        continue;
                    }
                    ClientUpdate update;
                    byte[] payload;
                    long downloaded;
                    // A party whose fit fails is a dropout of the exchange, as in a federation (its node stays up there).
                    try
                    {
                        var context = Context(prepared.Spec, party, round, phase);
                        (var files, downloaded) = Fetch(store, party, instruction);
                        update = algorithm.Client.Fit(context, exchange.Name, instruction, files, ct);
                        payload = UpdateCompression.ForUpload(prepared.Spec.Compression, exchange.VectorLayout is { } v ? files[v] : null, update.Update,
                            context.Workspace, exchange.Name, round);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        fits.Add(new SimulatedFit(round, phase, party, null, e.GetBaseException().Message));
                        continue;
                    }
                    fits.Add(new SimulatedFit(round, phase, party, update, null) { UploadBytes = payload.Length, DownloadBytes = downloaded });
                    offered.Add(new OfferedUpdate(party, store.Put(payload), update.Samples, update.Metrics));
                }
                var quorum = Math.Min(prepared.Spec.Round.Quorum, exchange.Instructions.Count);
                if (offered.Count < quorum)
                    throw new AggregationException($"round {round}, exchange '{exchange.Name}': {offered.Count} updates, {quorum} required; dropped: " +
                        string.Join("; ", fits.Where(f => f.Round == round && f.Phase == phase && f.Update is null).Select(f => $"{f.Party}: {f.Dropped}")));
                var outcome = RoundStep.Plain(algorithm, ctx, state, exchange, phase, offered, quorum);
                steps.Add(outcome);
                state = outcome.State;
                if (outcome.Next is null) break;
                exchange = outcome.Next;
            }
        }
        var evaluation = new Dictionary<string, EvaluationResult>(StringComparer.Ordinal);
        if (algorithm.Server.Evaluation(server, state) is { } plan)
            foreach (var party in prepared.Spec.Parties.Where(p => p.EvalDataset is not null))
                evaluation[party.Org] = algorithm.Client.Evaluate(Context(prepared.Spec, party.Org, 0, 0), plan, Fetch(store, party.Org, plan).Files, ct);
        Directory.CreateDirectory(prepared.Spec.OutputDir);
        algorithm.Server.Finalize(server, state, prepared.Spec.OutputDir);
        return new SimulationResult(prepared.Spec, state, store, fits, steps, evaluation, prepared.Spec.OutputDir);
    }

    ClientContext Context(JobSpec job, string org, int round, int phase)
    {
        var party = job.Parties.Single(p => p.Org == org);
        var data = parties.Single(p => p.Org == org).Datasets;
        string Dataset(string name) => data.TryGetValue(name, out var path) ? path
            : throw new JobSpecException($"simulated party '{org}' has no dataset '{name}' (known: {string.Join(", ", data.Keys)})");
        var home = Path.Combine(root, "party-" + org);
        return new ClientContext(job, org, round, 1, phase, modelPath, Dataset(party.Dataset), party.EvalDataset is null ? null : Dataset(party.EvalDataset),
            Path.Combine(home, "work", job.JobId)) { KeysDir = Path.Combine(home, "ipr") };
    }

    /// <summary>
    /// The instruction's downloads copied into the party's own store, as its node would have fetched them (a global
    /// offered as a delta is rebuilt from the one the party holds), and the bytes that moved.
    /// </summary>
    (IReadOnlyDictionary<string, string> Files, long Bytes) Fetch(BlobStore arbiter, string party, PartyInstruction instruction)
    {
        var own = new BlobStore(Path.Combine(root, "party-" + party, "blobs"));
        long bytes = 0;
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, digest) in instruction.Downloads.Where(kv => !Downlink.IsDelta(kv.Key)))
        {
            if (!own.Has(digest))
            {
                var delta = instruction.Downloads.GetValueOrDefault(Downlink.DeltaOf(name));
                if (delta is not null && Downlink.BaseOf(instruction.Parameters, name) is { } held && own.Has(held))
                {
                    var payload = arbiter.Read(delta);
                    own.Put(Downlink.Rebuild(own.Read(held), payload, digest));
                    bytes += payload.Length;
                }
                else
                {
                    var full = arbiter.Read(digest);
                    own.Put(full);
                    bytes += full.Length;
                }
            }
            files[name] = own.PathOf(digest);
        }
        return (files, bytes);
    }
}
