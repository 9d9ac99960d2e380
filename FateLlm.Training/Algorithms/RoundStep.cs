using FateLlm.Training.Aggregation;
using FateLlm.Training.Compression;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms;

/// <summary>A party's update as the round collected it: pulled into the arbiter's store (plain) or kept at the party (secure).</summary>
public sealed record OfferedUpdate(string Party, string Digest, long Samples, IReadOnlyDictionary<string, double> Metrics)
{
    /// <summary>A factor on its sample share (<see cref="PartyContribution.Weight"/>).</summary>
    public double Weight { get; init; } = 1.0;
}

/// <summary>What secure aggregation produced for one exchange: the unmasked sum and who is in it.</summary>
public sealed record SecureSumInput(SecAggSession Session, SecAggResult Result, IReadOnlyList<OfferedUpdate> Offered);

/// <param name="Contributors">Parties whose update is in the new state.</param>
public sealed record StepOutcome(AlgorithmState State, Exchange? Next, IReadOnlyList<Rejection> Rejected, IReadOnlyDictionary<string, double> Metrics,
    IReadOnlyList<string> Contributors);

/// <summary>
/// The framework's half of a server step, the same for every plug-in: validate each update through the plug-in's codec,
/// reduce to one mean under central DP or from a secure sum (through the exchange's vector layout), run the plug-in's
/// step, and keep the DP state. Runs off the actor thread; every tensor lives in one dispose scope.
/// </summary>
public static class RoundStep
{
    /// <summary>A plain exchange: every pulled update is checked by the codec; under central DP only their noised mean goes on.</summary>
    public static StepOutcome Plain(IFederatedAlgorithm algorithm, RoundContext ctx, AlgorithmState state, Exchange exchange, int phase,
        IReadOnlyList<OfferedUpdate> offered, int minAccepted)
    {
        using var scope = NewDisposeScope();
        var spec = ctx.Spec;
        var layout = Layout(ctx.Store, exchange);
        var rejected = new List<Rejection>();
        var accepted = new List<PartyContribution>();
        // A summable exchange (tensor updates, no central DP) never holds every party's update: a rule that needs only the
        // mean (the FedAvg family) folds the accepted ones one by one; one that needs them all (median, Krum, …) reads
        // them back from the store one tensor at a time. Either way each update is checked in its own scope first.
        // (Tensor deltas as the update's own bytes: what the store holds is what TensorsOnDisk reads.)
        var plainTensors = layout is not null && algorithm.Summable && algorithm.Codec is TensorUpdateCodec && spec.Dp.Mode != DpMode.Central;
        var folded = plainTensors && spec.Strategy().NeedsMeanOnly;
        foreach (var offer in offered.OrderBy(u => u.Party, StringComparer.Ordinal))
        {
            using var each = plainTensors ? NewDisposeScope() : null;
            var own = exchange.LayoutPerParty ? PartyLayout(ctx.Store, exchange, offer.Party) : layout;
            var (u, refused) = Uplinked(ctx.Store, spec, own, offer);
            if (u is null)
            {
                rejected.Add(new Rejection(offer.Party, refused!));
                continue;
            }
            var check = algorithm.Codec.Check(new UpdateCheckContext(exchange, u.Party, spec.Validation, own), ctx.Store.Read(u.Digest));
            if (check.Problem is not null) rejected.Add(new Rejection(u.Party, check.Problem));
            else accepted.Add(new PartyContribution(u.Party, u.Digest, u.Samples, u.Metrics, plainTensors ? new TensorsOnDisk(ctx.Store.PathOf(u.Digest)) : check.Parsed)
                { Weight = u.Weight });
        }
        if (accepted.Count < minAccepted)
            throw new AggregationException($"{accepted.Count} valid updates, {minAccepted} required; rejected: {string.Join("; ", rejected.Select(r => $"{r.Party}: {r.Reason}"))}");
        var result = new ExchangeResult(exchange, phase, accepted);
        if (folded)
        {
            // Folded from the store, already checked: each update's tensors are read once more, never validated twice.
            var mean = new RunningWeightedMean(layout!, accepted.Sum(c => (double)c.Samples));
            foreach (var c in accepted)
            {
                using var each = NewDisposeScope();
                mean.Add(new AdapterDelta(c.Party, (IReadOnlyDictionary<string, Tensor>)c.Parsed!, c.Samples) { Weight = c.Weight });
            }
            // The step sees the mean only, as under secure aggregation.
            result = new ExchangeResult(exchange, phase, accepted.Select(c => c with { Parsed = null }).ToList()) { Mean = mean.Result() };
        }
        PrivateMean? dp = null;
        if (spec.Dp.Mode == DpMode.Central && layout is not null)
        {
            var deltas = accepted.Select(c => new AdapterDelta(c.Party, (IReadOnlyDictionary<string, Tensor>)c.Parsed!, c.Samples) { Weight = c.Weight }).ToList();
            dp = PrivateAggregation.Central(layout, deltas, Clip(ctx.Store, state, spec.Dp), spec.Dp, exchange.Instructions.Count);
            // Under DP the algorithm sees the noised mean only, never an individual update.
            result = new ExchangeResult(exchange, phase, accepted.Select(c => c with { Digest = "", Parsed = null }).ToList()) { Mean = dp.Mean };
        }
        return Finish(algorithm, ctx, state, result, rejected, dp);
    }

    /// <summary>
    /// A compressed upload decoded into the store as the safetensors update it stands for (the offer then names that blob),
    /// or the offer itself when the job sends fp32; a payload that does not decode is refused with the reason.
    /// </summary>
    static (OfferedUpdate? Update, string? Problem) Uplinked(BlobStore store, JobSpec spec, IReadOnlyDictionary<string, Tensor>? layout, OfferedUpdate offer)
    {
        if (layout is null || spec.Compression.Up == CompressionScheme.None) return (offer, null);
        try { return (offer with { Digest = store.Put(UpdateCompression.Restore(spec.Compression, layout, store.Read(offer.Digest))) }, null); }
        catch (CompressedUpdateException e) { return (null, $"compressed update refused: {e.Message}"); }
    }

    /// <summary>A secure exchange: the unmasked sum becomes the mean update (weighted, or noised under distributed DP).</summary>
    public static StepOutcome Secure(IFederatedAlgorithm algorithm, RoundContext ctx, AlgorithmState state, Exchange exchange, int phase, SecureSumInput input)
    {
        using var scope = NewDisposeScope();
        var spec = ctx.Spec;
        var layout = Layout(ctx.Store, exchange) ?? throw new AggregationException($"exchange '{exchange.Name}' has no vector layout to sum securely");
        var (values, extras) = input.Result.Decode(input.Session);
        var sum = AdapterVector.Unflatten(layout, values);
        var contributors = input.Result.Contributors;
        PrivateMean? dp = null;
        Dictionary<string, Tensor> mean;
        if (spec.Dp.Enabled)
        {
            var noisedUnclipped = spec.Dp.AdaptiveClip ? extras[1] : contributors.Count;
            dp = PrivateAggregation.FromNoisedSum(layout, sum, noisedUnclipped, contributors.Count, Clip(ctx.Store, state, spec.Dp), spec.Dp, exchange.Instructions.Count);
            mean = dp.Mean;
        }
        else mean = PrivateAggregation.FromWeightedSum(layout, sum, extras[0]);
        var updates = input.Offered.Where(o => contributors.Contains(o.Party)).OrderBy(o => o.Party, StringComparer.Ordinal)
            .Select(o => new PartyContribution(o.Party, "", o.Samples, o.Metrics, null)).ToList();
        return Finish(algorithm, ctx, state, new ExchangeResult(exchange, phase, updates) { Mean = mean }, [], dp);
    }

    /// <summary>A round's first exchange as offered to parties: the plug-in's, with the global sent down compressed if the job says so.</summary>
    public static Exchange Begin(IFederatedAlgorithm algorithm, RoundContext ctx, AlgorithmState state) =>
        Downlink.Offer(ctx.Store, ctx.Spec, state, algorithm.Server.BeginRound(ctx, state));

    static StepOutcome Finish(IFederatedAlgorithm algorithm, RoundContext ctx, AlgorithmState state, ExchangeResult result, List<Rejection> rejected, PrivateMean? dp)
    {
        var step = algorithm.Server.Step(ctx, state, result);
        var next = step.State;
        // What parties now hold of the layout (the next downlink's base); carried over exchanges that declare none.
        if (ctx.Spec.Compression.Down != CompressionScheme.None && LayoutDigest(result.Exchange) is { } held) next = next.With(AlgorithmState.Downlink, held);
        else if (state.Find(AlgorithmState.Downlink) is { } kept) next = next.With(AlgorithmState.Downlink, kept);
        var metrics = new Dictionary<string, double>(step.Metrics);
        if (dp is not null)
        {
            next = next.With(AlgorithmState.Privacy, ctx.Store.Put(PrivacyState.ToBytes(dp.NextClip)));
            foreach (var (k, v) in dp.Metrics) metrics[k] = v;
        }
        else if (state.Find(AlgorithmState.Privacy) is { } privacy) next = next.With(AlgorithmState.Privacy, privacy);
        rejected.AddRange(step.Rejected);
        var contributors = result.Updates.Select(u => u.Party).Where(p => step.Rejected.All(r => r.Party != p)).ToList();
        return new StepOutcome(next, step.Next is { } n ? Downlink.Offer(ctx.Store, ctx.Spec, next, n) : null, rejected, metrics, contributors);
    }

    /// <summary>The clip norm this round's DP uses: the adaptive one from the privacy state, else the configured one.</summary>
    public static double Clip(BlobStore store, AlgorithmState state, DpOptions dp) =>
        PrivacyState.Clip(state.Find(AlgorithmState.Privacy) is { } d ? store.Read(d) : null, dp);

    /// <summary>The tensors of the exchange's vector layout (the same download for every party), or null when not summable.</summary>
    public static Dictionary<string, Tensor>? Layout(BlobStore store, Exchange exchange) =>
        LayoutDigest(exchange) is { } digest ? SafeTensors.FromBytes(store.Read(digest), $"vector layout '{exchange.VectorLayout}'") : null;

    /// <summary>One party's own vector layout in an exchange whose layout differs by party.</summary>
    static Dictionary<string, Tensor> PartyLayout(BlobStore store, Exchange exchange, string party) =>
        SafeTensors.FromBytes(store.Read(exchange.Instructions[party].Downloads[exchange.VectorLayout!]), $"vector layout '{exchange.VectorLayout}' of party '{party}'");

    /// <summary>The digest of the exchange's one vector layout; null when it declares none or each party has its own.</summary>
    public static string? LayoutDigest(Exchange exchange)
    {
        if (exchange.VectorLayout is not { } name || exchange.LayoutPerParty) return null;
        var digests = exchange.Instructions.Select(kv => kv.Value.Downloads.TryGetValue(name, out var d) ? d
            : throw new AggregationException($"exchange '{exchange.Name}': party '{kv.Key}' does not download its vector layout '{name}'")).Distinct().ToList();
        if (digests.Count != 1) throw new AggregationException($"exchange '{exchange.Name}': parties download different vector layouts '{name}'");
        return digests[0];
    }

    /// <summary>The secure-aggregation session of one exchange, as every participant derives it.</summary>
    public static SecAggSession Session(JobSpec spec, string sessionId, IReadOnlyCollection<string> cohort, int round, int attempt, int phase, int vectorLength)
    {
        var n = cohort.Count;
        var sa = spec.SecureAggregation;
        return new SecAggSession
        {
            SessionId = sessionId,
            Parties = cohort.Order(StringComparer.Ordinal).ToArray(),
            Threshold = sa.ThresholdFor(n),
            Degree = sa.DegreeFor(n),
            GraphSeed = Seeds.SecAggGraph(spec.Seed, round, attempt, phase),
            VectorLength = vectorLength,
            ClipRange = sa.ClipRange,
            Extras = spec.Dp.Enabled && spec.Dp.AdaptiveClip ? 2 : 1,
            WordBits = SecureWordBits(spec.Compression.Up, n),
        };
    }

    /// <summary>
    /// Under secure aggregation the fixed-point words are the compression: int8 gives each coordinate 8 bits, fp16 and
    /// bf16 16, each over the clip range plus the headroom n parties' sum needs; otherwise 32-bit words as before.
    /// </summary>
    public static int SecureWordBits(CompressionScheme up, int parties) => up switch
    {
        CompressionScheme.Int8 => 8 + FixedPoint.HeadroomBits(parties),
        CompressionScheme.Fp16 or CompressionScheme.Bf16 => 16 + FixedPoint.HeadroomBits(parties),
        _ => 32,
    };

    /// <summary>A party's masked contribution: its update in the layout (clipped and noised under distributed DP, weighted otherwise), masked.</summary>
    public static byte[] MaskedInput(SecAggClient client, byte[] update, byte[] layout, long samples, JobSpec spec, double clip, int expectedParties,
        IReadOnlyList<EncryptedShare> inbox)
    {
        using var scope = NewDisposeScope();
        var tensors = SafeTensors.FromBytes(update, "local update");
        var shape = SafeTensors.FromBytes(layout, "vector layout");
        var (values, extras) = AdapterVector.PrepareInput(shape, tensors, samples, spec.SecureAggregation.SampleCap, spec.Dp, clip, expectedParties);
        return client.Session.Pack(client.MaskInput(values, extras, inbox));
    }

    /// <summary>Reads masked words sent by a party; the length must be the session's.</summary>
    public static uint[] MaskedWords(byte[] bytes, SecAggSession session, string party) => session.Unpack(bytes, party);

    public static int VectorLength(byte[] layout)
    {
        using var scope = NewDisposeScope();
        return checked((int)AdapterVector.Length(SafeTensors.FromBytes(layout, "vector layout")));
    }
}
