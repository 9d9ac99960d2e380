using FateLlm.Training.Aggregation;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Ipr;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.HomoPeft;

/// <summary>
/// FedHomoLLM: every party holds the same base model and trains the same PEFT adapter (LoRA, P-Tuning v2, or full
/// fine-tuning); one exchange per round (global adapter down, delta up), aggregated by tensor name with the FedAvg
/// family or a robust rule. State: <c>global</c> (the adapter) and <c>server-state</c> (optimizer moments). Parties may
/// train LoRA at ranks of their own (<see cref="LoraRanks"/>): zero-padded into one layout, or under FlexLoRA (svd) and
/// FLoRA (stack) with factors of each party's own rank (<see cref="FlexLora"/>).
/// </summary>
public sealed class HomoPeftAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "homo-peft";
    public const string Global = AlgorithmState.Global, ServerStateArtifact = "server-state", AdapterDownload = "adapter";
    /// <summary>Under svd: the round-0 adapter, whose A rows seed components the global has none of yet.</summary>
    public const string InitialArtifact = "initial";
    /// <summary>Under stack: the download of a party's fresh factors of its own rank for the round.</summary>
    public const string FreshFactors = "fresh";

    public string Name => AlgorithmName;
    public bool Summable => true;
    public bool EvaluatesInRounds => true;
    public bool Watermarkable => true;
    public bool HeterogeneousRanks => true;
    public bool Buffered => true;
    public bool ExampleLevelDp => true;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new TensorUpdateCodec();

    public void Validate(JobSpec spec)
    {
        spec.Algorithm.Read().RefuseUnknown([]);
        AdapterAggregation.Validate(spec);
    }

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx)
        {
            var spec = ctx.Spec;
            if (!Directory.Exists(ctx.ModelPath))
                throw new JobSpecException($"job {spec.JobId}: job.model '{spec.ModelPath}' is not on the arbiter (nor a folder of that name under its models root)");
            var digest = WeightsDigest.Like(ctx.ModelPath, spec.ModelDigest);
            if (spec.ModelDigest.Length > 0 && spec.ModelDigest != digest)
                throw new JobSpecException($"job {spec.JobId}: the arbiter's copy of '{spec.ModelPath}' has digest {digest[..12]}…, the job names {spec.ModelDigest[..12]}…");
            // Parties of their own LoRA ranks: written out, and the global adapter at the largest (LoraRanks).
            spec = LoraRanks.Resolve(spec with { ModelDigest = digest });
            var initial = ctx.Store.Put(FederatedComputation.InitialAdapter(spec, ctx.ModelPath));
            var state = AlgorithmState.Of((Global, initial));
            return new Preparation(spec, Svd(spec) ? state.With(InitialArtifact, initial) : state);
        }

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state) => ctx.Spec.Aggregation.LoraRanks switch
        {
            LoraRankRule.Svd => new Exchange("fit", ctx.Participants.ToDictionary(p => p, p => PartyInstruction.Of(new Dictionary<string, string>
                { [Global] = Redistributed(ctx.Server, state, LoraRanks.RankOf(ctx.Spec, p)) }), StringComparer.Ordinal)) { VectorLayout = Global, LayoutPerParty = true },
            // FLoRA: everyone downloads the stacked global to merge into its base, and fresh factors of its own rank to train.
            LoraRankRule.Stack => new Exchange("fit", ctx.Participants.ToDictionary(p => p, p => PartyInstruction.Of(new Dictionary<string, string>
                { [Global] = state.Get(Global), [FreshFactors] = Fresh(ctx, LoraRanks.RankOf(ctx.Spec, p)) }), StringComparer.Ordinal))
                { VectorLayout = FreshFactors, LayoutPerParty = true },
            _ => Exchange.Broadcast("fit", ctx.Participants, PartyInstruction.Of(new Dictionary<string, string> { [Global] = state.Get(Global) }), vectorLayout: Global),
        };

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result) => ctx.Spec.Aggregation.LoraRanks switch
        {
            LoraRankRule.Svd => FlexStep(ctx, state, result, Global, (global, stacked) => stacked),
            LoraRankRule.Stack => FlexStep(ctx, state, result, FreshFactors, LoraRanks.Append),
            _ => AdapterAggregation.Step(ctx, state, result, Global, ServerStateArtifact),
        };

        /// <summary>FLoRA's fresh factors of one rank for this round (B = 0, A seeded by job and round), made from the config and headers.</summary>
        static string Fresh(RoundContext ctx, int rank) => ctx.Store.Put(FederatedComputation.InitialAdapter(
            LoraRanks.ForParty(ctx.Spec, rank) with { Seed = Seeds.LocalTraining(ctx.Spec.Seed, ctx.Round) }, ctx.Server.ModelPath));

        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) =>
            PartyInstruction.Of(new Dictionary<string, string> { [AdapterDownload] = Exported(ctx, state) });

        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir)
        {
            var adapter = ctx.Store.Read(Exported(ctx, state));
            var spec = ctx.Spec;
            if (spec.Aggregation.LoraRanks != LoraRankRule.ZeroPad) // svd: the largest party rank; stack: the stacked global's own
                using (NewDisposeScope()) spec = LoraRanks.ForParty(spec, LoraRanks.RankOf(SafeTensors.FromBytes(adapter, "adapter")));
            FederatedComputation.ExportAdapter(spec, ctx.ModelPath, adapter, Path.Combine(outputDir, "adapter"), Path.Combine(outputDir, "merged"));
        }

        /// <summary>The adapter parties evaluate and the job exports: the global, or under svd its best approximation at the largest party rank.</summary>
        static string Exported(ServerContext ctx, AlgorithmState state) =>
            Svd(ctx.Spec) ? Redistributed(ctx, state, LoraRanks.LargestRank(ctx.Spec)) : state.Get(Global);

        /// <summary>FlexLoRA: the global's products at <paramref name="rank"/> by truncated SVD, stored (content-addressed, so asked twice it is one blob).</summary>
        static string Redistributed(ServerContext ctx, AlgorithmState state, int rank)
        {
            using var scope = NewDisposeScope();
            var global = SafeTensors.FromBytes(ctx.Store.Read(state.Get(Global)), Global);
            var initial = SafeTensors.FromBytes(ctx.Store.Read(state.Get(InitialArtifact)), InitialArtifact);
            var (factors, discarded) = FlexLora.Redistribute(global, rank, initial);
            ctx.Log($"svd: the global at rank {rank} leaves out {discarded:P2} of its squared singular values");
            return ctx.Store.Put(SafeTensors.ToBytes(factors));
        }

        /// <summary>
        /// FlexLoRA's and FLoRA's step: Σ p_k·B_k·A_k over the parties' trained factors (what each was sent as
        /// <paramref name="sentAs"/> plus its delta) as stacked factors of rank Σ r_k of the round's parties, which
        /// <paramref name="next"/> makes the new global of (svd: it is; stack: appended to the old).
        /// </summary>
        static StepResult FlexStep(RoundContext ctx, AlgorithmState state, ExchangeResult result, string sentAs,
            Func<IReadOnlyDictionary<string, Tensor>, Dictionary<string, Tensor>, Dictionary<string, Tensor>> next)
        {
            using var scope = NewDisposeScope();
            var total = result.Updates.Sum(u => (double)u.Samples);
            var parties = result.Updates.Select(u =>
            {
                var sent = SafeTensors.FromBytes(ctx.Store.Read(result.Exchange.Instructions[u.Party].Downloads[sentAs]), $"factors sent to '{u.Party}'");
                var delta = (IReadOnlyDictionary<string, Tensor>)u.Parsed!;
                return ((IReadOnlyDictionary<string, Tensor>)sent.ToDictionary(kv => kv.Key, kv => kv.Value + delta[kv.Key]), total > 0 ? u.Samples / total : 1.0 / result.Updates.Count);
            }).ToList();
            var global = SafeTensors.FromBytes(ctx.Store.Read(state.Get(Global)), Global);
            // svd: the global's own rank, Σ r_k of every party; stack: Σ r_k of the parties this round asked (absent ones as zeros).
            var rank = ctx.Spec.Aggregation.LoraRanks == LoraRankRule.Svd ? LoraRanks.RankOf(global) : result.Exchange.Parties.Sum(p => LoraRanks.RankOf(ctx.Spec, p));
            var stacked = FlexLora.Stack(parties, LoraRanks.Shaped(global, rank));
            return new StepResult(state.With(Global, ctx.Store.Put(SafeTensors.ToBytes(next(global, stacked)))), Next: null);
        }
    }

    /// <summary>Whether the job aggregates by FlexLoRA (<c>aggregation.lora-ranks = svd</c>).</summary>
    static bool Svd(JobSpec spec) => spec.Aggregation.LoraRanks == LoraRankRule.Svd;

    sealed class ClientSide : IClientAlgorithm
    {
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            ct.ThrowIfCancellationRequested();
            var hash = FederatedComputation.VerifyModel(ctx.Spec, ctx.ModelPath, $"party '{ctx.Party}'");
            var global = File.ReadAllBytes(files[Global]);
            if (!LoraRanks.Heterogeneous(ctx.Spec) && ctx.Spec.Aggregation.RankPruning == 0 && ctx.Spec.Aggregation.LoraRanks == LoraRankRule.ZeroPad)
                return ClientUpdate.Of(Train(ctx, ctx, global, ct), hash);
            var rank = PartyRank.Of(ctx);
            if (Svd(ctx.Spec)) // the arbiter sent factors of this party's rank: trained and sent back as they are
                return WithRank(ClientUpdate.Of(Train(ctx with { Spec = LoraRanks.ForParty(ctx.Spec, rank) }, ctx, global, ct), hash), rank);
            if (ctx.Spec.Aggregation.LoraRanks == LoraRankRule.Stack)
                return WithRank(ClientUpdate.Of(TrainOnMerged(ctx, global, File.ReadAllBytes(files[FreshFactors]), rank, ct), hash), rank);
            // A rank of its own (or pruned): the global's first components, trained and sent back padded to the global's rank.
            // (Training stays outside the dispose scopes: a base it loads is kept resident beyond this call.)
            byte[] mine;
            using (var scope = NewDisposeScope()) mine = SafeTensors.ToBytes(LoraRanks.Truncate(SafeTensors.FromBytes(global, "global adapter"), rank));
            var r = Train(ctx with { Spec = LoraRanks.ForParty(ctx.Spec, rank) }, ctx, mine, ct);
            using (var scope = NewDisposeScope())
            {
                var (start, delta) = (SafeTensors.FromBytes(mine, "local start"), SafeTensors.FromBytes(r.Delta, "local delta"));
                PartyRank.Decide(ctx, rank, LoraRanks.Pruned(start.ToDictionary(kv => kv.Key, kv => kv.Value + delta[kv.Key]), rank, ctx.Spec.Aggregation.RankPruning));
                r = r with { Delta = SafeTensors.ToBytes(LoraRanks.Pad(delta, SafeTensors.FromBytes(global, "global adapter"))) };
            }
            return WithRank(ClientUpdate.Of(r, hash), rank);
        }

        /// <summary>
        /// FLoRA's party round: a copy of the base of its own with the stacked global merged in, fresh factors of its
        /// rank trained on it (the delta from those factors goes up).
        /// </summary>
        static LocalRoundResult TrainOnMerged(ClientContext ctx, byte[] stacked, byte[] fresh, int rank, CancellationToken ct)
        {
            var spec = LoraRanks.ForParty(ctx.Spec, rank);
            using var run = FederatedComputation.OpenPrivate(spec, ctx.ModelPath);
            using (NewDisposeScope()) LoraRanks.MergeIntoBase(run.Model, SafeTensors.FromBytes(stacked, "stacked global"), LoraRanks.Scaling(spec));
            return FederatedComputation.LocalRound(spec, run, fresh, ctx.TrainData, ctx.EvalData, ctx.Round, ct, party: ctx with { Spec = spec });
        }

        static ClientUpdate WithRank(ClientUpdate update, int rank) =>
            update with { Metrics = new Dictionary<string, double>(update.Metrics) { [PartyRank.Metric] = rank } };

        /// <param name="at">The context whose spec sets the model's PEFT (the party's rank); <paramref name="ctx"/> is the party's own.</param>
        static LocalRoundResult Train(ClientContext at, ClientContext ctx, byte[] global, CancellationToken ct)
        {
            using var run = FederatedComputation.Open(at.Spec, ctx.ModelPath);
            using var watermark = PartyWatermark.Open(at, run);
            return FederatedComputation.LocalRound(at.Spec, run, global, ctx.TrainData, ctx.EvalData, ctx.Round, ct, watermark, at);
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            FederatedComputation.VerifyModel(ctx.Spec, ctx.ModelPath, $"party '{ctx.Party}'");
            var adapter = File.ReadAllBytes(files[AdapterDownload]);
            var spec = ctx.Spec;
            if (spec.Aggregation.LoraRanks != LoraRankRule.ZeroPad) // svd: the global's approximation at the largest rank; stack: the stacked global
                using (NewDisposeScope()) spec = LoraRanks.ForParty(spec, LoraRanks.RankOf(SafeTensors.FromBytes(adapter, "adapter")));
            return FederatedComputation.Evaluate(spec, ctx.ModelPath, adapter, ctx.EvalData ?? ctx.TrainData, ct, ctx.Tasks);
        }
    }
}
