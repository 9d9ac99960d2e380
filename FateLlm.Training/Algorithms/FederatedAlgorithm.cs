using System.Text.Json.Serialization;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// A FedLLM paradigm as a plug-in: an arbiter side, a party side and an update codec. The job, round and party actors
/// orchestrate any plug-in through these contracts; secure aggregation, DP, validation, transfer, dropouts, retries
/// and resume reach every plug-in through them. Register built-ins in <see cref="AlgorithmCatalog"/>.
/// </summary>
public interface IFederatedAlgorithm
{
    /// <summary>The <c>job.algorithm.name</c> that selects it.</summary>
    string Name { get; }
    /// <summary>Refuses a job this algorithm cannot run, with a <see cref="JobSpecException"/> naming the field.</summary>
    void Validate(JobSpec spec);
    /// <summary>Whether its exchanges can declare a <see cref="Exchange.VectorLayout"/> (so secure aggregation and DP apply).</summary>
    bool Summable { get; }
    /// <summary>Whether parties can embed FedIPR watermarks (<c>job.ipr</c>) through <see cref="Ipr.PartyWatermark"/>.</summary>
    bool Watermarkable => false;
    /// <summary>Whether parties may train LoRA at ranks of their own (<c>parties[i].peft</c>, <see cref="Peft.LoraRanks"/>).</summary>
    bool HeterogeneousRanks => false;
    /// <summary>
    /// Whether it can run on a buffered schedule (<c>job.schedule = buffered</c>): rounds of one exchange whose step takes
    /// the updates of parties that trained from different versions, each with its <see cref="PartyContribution.Weight"/>.
    /// </summary>
    bool Buffered => false;
    /// <summary>Whether its parties train through <see cref="FederatedComputation.LocalRound"/>, so <c>local.dp-sgd</c> applies to them.</summary>
    bool ExampleLevelDp => false;
    /// <summary>Whether its parties run the job's evaluation tasks on the global state in their rounds (<c>evaluation.every</c>).</summary>
    bool EvaluatesInRounds => false;
    IServerAlgorithm Server { get; }
    IClientAlgorithm Client { get; }
    IUpdateCodec Codec { get; }
}

/// <summary>
/// Arbiter side. Stateless: everything that must survive an arbiter crash is in <see cref="AlgorithmState"/>, which the
/// job persists after each round (and each exchange of a multi-phase round). Every method but
/// <see cref="SelectParticipants"/> runs off the actor thread and may read and write the store, or train.
/// </summary>
public interface IServerAlgorithm
{
    /// <summary>Initial state and the spec as the job will run it (e.g. with the base model's digest filled in).</summary>
    Preparation Prepare(ServerContext ctx);

    /// <summary>Which parties a round asks. Cheap and deterministic (the job records the result in its journal).</summary>
    IReadOnlyList<string> SelectParticipants(JobSpec spec, int round, int attempt) => PartySelection.Sample(spec, round, attempt);

    /// <summary>The round's first exchange: what each participant downloads and is told.</summary>
    Exchange BeginRound(RoundContext ctx, AlgorithmState state);

    /// <summary>The server step after an exchange: a new state, and either the next exchange of the round or none (round done).</summary>
    StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result);

    /// <summary>What every party evaluates at the end of the job; null when parties do not evaluate.</summary>
    PartyInstruction? Evaluation(ServerContext ctx, AlgorithmState state);

    /// <summary>Writes the job's outputs (adapters, checkpoints, reports) under <paramref name="outputDir"/>.</summary>
    void Finalize(ServerContext ctx, AlgorithmState state, string outputDir);
}

/// <summary>Party side, run on the party's training thread with its private data; files are local paths by download name.</summary>
public interface IClientAlgorithm
{
    ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct);

    EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct);
}

/// <summary>What an update must look like: its size bound (checked before it is pulled) and its validation.</summary>
public interface IUpdateCodec
{
    long MaxBytes(Exchange exchange, UpdateLimits limits) => limits.MaxBytes;

    /// <summary>Parses and checks one party's update; runs off the actor thread inside the step's dispose scope.</summary>
    UpdateCheck Check(UpdateCheckContext ctx, byte[] update);
}

public sealed record UpdateCheck(string? Problem, object? Parsed)
{
    public static UpdateCheck Refused(string problem) => new(problem, null);
    public static UpdateCheck Accepted(object? parsed) => new(null, parsed);
}

/// <param name="Layout">For summable exchanges, the tensors of the exchange's <see cref="Exchange.VectorLayout"/> download.</param>
public sealed record UpdateCheckContext(Exchange Exchange, string Party, UpdateLimits Limits, IReadOnlyDictionary<string, Tensor>? Layout);

/// <summary>A plug-in's persistent arbiter state: named content-addressed artifacts (adapters, optimizer moments, histories).</summary>
public sealed record AlgorithmState(IReadOnlyDictionary<string, string> Artifacts)
{
    /// <summary>Reserved for the framework's DP state (the adaptive clip norm).</summary>
    public const string Privacy = "privacy";
    /// <summary>Reserved for the framework's downlink: what parties were last sent for a vector layout (Compression.Downlink).</summary>
    public const string Downlink = "downlink";
    /// <summary>
    /// The artifact an algorithm names this when it has one global model (an adapter, a sub-model): the job and the
    /// round report its digest as the round's and the job's global digest.
    /// </summary>
    public const string Global = "global";

    public static AlgorithmState Of(params (string Name, string Digest)[] artifacts) =>
        new(artifacts.ToDictionary(a => a.Name, a => a.Digest, StringComparer.Ordinal));

    public string Get(string name) => Artifacts.TryGetValue(name, out var d) ? d
        : throw new InvalidOperationException($"algorithm state has no artifact '{name}' (has: {string.Join(", ", Artifacts.Keys)})");

    public string? Find(string name) => Artifacts.GetValueOrDefault(name);

    public AlgorithmState With(string name, string digest) =>
        new(new Dictionary<string, string>(Artifacts, StringComparer.Ordinal) { [name] = digest });
}

/// <summary>What one party is told in one exchange: the artifacts it downloads (name → digest) and small parameters.</summary>
public sealed record PartyInstruction(IReadOnlyDictionary<string, string> Downloads, IReadOnlyDictionary<string, string> Parameters)
{
    public static PartyInstruction Of(IReadOnlyDictionary<string, string> downloads, IReadOnlyDictionary<string, string>? parameters = null) =>
        new(downloads, parameters ?? new Dictionary<string, string>());
}

/// <summary>
/// One exchange of a round: the parties addressed and what each is told. A round holds one or more exchanges, each
/// with its own deadline, dropout handling and persisted progress.
/// </summary>
public sealed record Exchange(string Name, IReadOnlyDictionary<string, PartyInstruction> Instructions)
{
    /// <summary>
    /// The download whose tensors define a summable update (names, shapes): the vector view that secure aggregation and
    /// DP work on. Null for updates that are not summed (statistics, logits, seeds).
    /// </summary>
    public string? VectorLayout { get; init; }

    /// <summary>
    /// The <see cref="VectorLayout"/> download differs by party (each party's own shapes, as FlexLoRA's per-rank factors):
    /// each update is validated and compressed against its party's own, and the updates are never summed — no secure
    /// aggregation, central DP or folding into one mean; the plug-in's step sees every update.
    /// </summary>
    public bool LayoutPerParty { get; init; }

    [JsonIgnore] public IReadOnlyList<string> Parties => Instructions.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>The same instruction to every party.</summary>
    public static Exchange Broadcast(string name, IEnumerable<string> parties, PartyInstruction instruction, string? vectorLayout = null) =>
        new(name, parties.ToDictionary(p => p, _ => instruction, StringComparer.Ordinal)) { VectorLayout = vectorLayout };
}

public sealed record Preparation(JobSpec Spec, AlgorithmState Initial);

/// <param name="ModelPath">The base model as this node resolves the job's model path (models root fallback).</param>
public sealed record ServerContext(JobSpec Spec, BlobStore Store, string ModelPath, Action<string> Log);

public sealed record RoundContext(ServerContext Server, int Round, int Attempt, IReadOnlyList<string> Participants)
{
    public JobSpec Spec => Server.Spec;
    public BlobStore Store => Server.Store;
}

/// <param name="Workspace">A folder of this party's for the job, kept across rounds and attempts (local state between exchanges).</param>
public sealed record ClientContext(JobSpec Spec, string Party, int Round, int Attempt, int Phase, string ModelPath, string TrainData, string? EvalData,
    string Workspace)
{
    /// <summary>The party's private keys folder (FedIPR keys and the secret they derive from); never inside a checkpoint or output.</summary>
    public string KeysDir { get; init; } = "";
    /// <summary>Where a local round reports its steps (the party's node forwards them to the arbiter as heartbeats).</summary>
    public IProgress<Trainer.TrainProgress>? Progress { get; init; }
    /// <summary>Where this party finds the job's evaluation tasks; null where it runs none.</summary>
    public Evaluation.Harness.TaskSources? Tasks { get; init; }
}

/// <summary>A party's answer to one exchange: the update's bytes, the samples behind it, and figures worth reporting.</summary>
public sealed record ClientUpdate(byte[] Update, long Samples, IReadOnlyDictionary<string, double> Metrics)
{
    public const string FirstLoss = "loss.first", LastLoss = "loss.last", EvalLoss = "loss.eval", Steps = "train.steps";
    /// <summary>Where a party's seconds went (rounds.jsonl reports every metric under this prefix).</summary>
    public const string SecondsPrefix = "seconds.";

    /// <summary>A local round's delta with its losses, steps and seconds (plus <paramref name="hashSeconds"/> spent verifying the base) as the update's metrics.</summary>
    public static ClientUpdate Of(LocalRoundResult r, double hashSeconds = 0)
    {
        var metrics = new Dictionary<string, double>
        {
            [FirstLoss] = r.FirstLoss, [LastLoss] = r.LastLoss, [Steps] = r.Steps,
            [SecondsPrefix + "hash"] = hashSeconds, [SecondsPrefix + "load"] = r.LoadSeconds,
            [SecondsPrefix + "eval"] = r.EvalSeconds, [SecondsPrefix + "train"] = r.TrainSeconds,
        };
        if (r.EvalLoss is { } e) metrics[EvalLoss] = e;
        if (r.Privacy is { } dp)
            (metrics["dpsgd.epsilon"], metrics["dpsgd.noise-multiplier"], metrics["dpsgd.sampling-rate"], metrics["dpsgd.steps"]) = (dp.Epsilon, dp.NoiseMultiplier, dp.SamplingRate, dp.Steps);
        foreach (var (k, v) in TaskScore.ToMetrics(r.Tasks)) metrics[k] = v;
        return new ClientUpdate(r.Delta, r.Samples, metrics);
    }
}

/// <summary>One party's accepted update as the server step sees it.</summary>
/// <param name="Digest">Its blob in the arbiter's store (empty under secure aggregation, where only the sum is seen).</param>
/// <param name="Parsed">What the codec parsed while validating (tensor updates: the named tensors), valid during the step.</param>
public sealed record PartyContribution(string Party, string Digest, long Samples, IReadOnlyDictionary<string, double> Metrics, object? Parsed)
{
    /// <summary>
    /// A factor on this update's sample share (a buffered update's staleness weight; 1 in synchronous rounds). The
    /// framework applies it where it folds the mean; a step that reads <see cref="Parsed"/> applies it itself.
    /// </summary>
    public double Weight { get; init; } = 1.0;
}

/// <summary>
/// What an exchange produced. In plain rounds without DP: every accepted update. Under secure aggregation or DP the
/// arbiter sees only <see cref="Mean"/> (the mean update in the vector layout), and the contributions carry no bytes.
/// </summary>
public sealed record ExchangeResult(Exchange Exchange, int Phase, IReadOnlyList<PartyContribution> Updates)
{
    public IReadOnlyDictionary<string, Tensor>? Mean { get; init; }
}

public sealed record Rejection(string Party, string Reason);

/// <param name="Next">The next exchange of this round, or null when the round is done.</param>
public sealed record StepResult(AlgorithmState State, Exchange? Next)
{
    public IReadOnlyDictionary<string, double> Metrics { get; init; } = new Dictionary<string, double>();
    /// <summary>Updates the algorithm itself refused (robust rules, its own checks), named and explained.</summary>
    public IReadOnlyList<Rejection> Rejected { get; init; } = [];
}
