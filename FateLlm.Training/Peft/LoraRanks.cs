using FateLlm.Training.Federation;
using static TorchSharp.torch;

namespace FateLlm.Training.Peft;

/// <summary>How a federation of parties with different LoRA ranks forms its global adapter (<c>aggregation.lora-ranks</c>).</summary>
public enum LoraRankRule { ZeroPad, Stack, Svd }

/// <summary>
/// Parties that train LoRA at their own rank (<c>parties[i].peft { r, alpha }</c>). Under svd see <see cref="FlexLora"/>; under
/// HetLoRA's zero-padding (Cho et al.
/// 2024): the global adapter has the largest rank R; a party of rank r trains the global's first r components (A's
/// rows, B's columns) and sends its delta zero-padded to R, so the exchange keeps one vector layout and secure
/// aggregation, DP, compression, validation and robust rules apply unchanged; the weighted sum of padded deltas is the
/// global update, and each party truncates the next global to its rank. Every party shares the job's scaling α/r, so
/// a component means the same at every rank. Pure functions over named tensors.
/// </summary>
public static class LoraRanks
{
    public static bool IsA(string name) => name.EndsWith("lora_A.weight", StringComparison.Ordinal);
    public static bool IsB(string name) => name.EndsWith("lora_B.weight", StringComparison.Ordinal);

    /// <summary>Whether any party trains at a rank of its own.</summary>
    public static bool Heterogeneous(JobSpec spec) => spec.Parties.Any(p => p.Peft is not null);

    /// <summary>The job's scaling α/r, which every party keeps.</summary>
    public static double Scaling(JobSpec spec) => spec.Peft.LoraAlpha / spec.Peft.LoraR;

    /// <summary>A party's rank: its own, else the job's.</summary>
    public static int RankOf(JobSpec spec, string org) => spec.Parties.Single(p => p.Org == org).Peft?.R ?? spec.Peft.LoraR;

    /// <summary>
    /// The spec as the arbiter runs it: every party's rank and α written out (α = its rank times the job's α/r), the
    /// job's own <c>peft</c> at the largest rank — the global adapter's and the export's. Unchanged when no party has its own.
    /// </summary>
    public static JobSpec Resolve(JobSpec spec)
    {
        var svd = spec.Aggregation.LoraRanks == LoraRankRule.Svd;
        int Global(IEnumerable<PartySpec> parties) => svd ? parties.Sum(p => p.Peft!.R) : parties.Max(p => p.Peft!.R);
        if (!Heterogeneous(spec) && !svd || spec.Parties.All(p => p.Peft is { Alpha: not null }) && spec.Peft.LoraR == Global(spec.Parties)) return spec;
        var scaling = Scaling(spec);
        var parties = spec.Parties.Select(p => p with { Peft = new PartyPeft(p.Peft?.R ?? spec.Peft.LoraR, (p.Peft?.R ?? spec.Peft.LoraR) * scaling) }).ToArray();
        // Zero-pad: the largest rank. svd: the sum of the ranks, which holds Σ p_k·B_k·A_k exactly (FlexLora.Stack).
        var rank = Global(parties);
        return spec with { Parties = parties, Peft = spec.Peft with { LoraR = rank, LoraAlpha = rank * scaling } };
    }

    /// <summary>The largest party rank: what an svd job exports and evaluates (the truncated SVD of its global).</summary>
    public static int LargestRank(JobSpec spec) => spec.Parties.Max(p => p.Peft?.R ?? spec.Peft.LoraR);

    /// <summary>
    /// FLoRA's party side: adds s·B·A of every module of <paramref name="adapter"/> to the base weights of a model the
    /// caller owns (a private copy: its base changes), so training starts from the federation's merged model.
    /// </summary>
    public static void MergeIntoBase(Models.CausalLm model, IReadOnlyDictionary<string, Tensor> adapter, double scaling)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var (path, projection) in model.Projections())
        {
            if (!adapter.TryGetValue(path + ".lora_A.weight", out var a) || !adapter.TryGetValue(path + ".lora_B.weight", out var b)) continue;
            var delta = b.to(ScalarType.Float32).matmul(a.to(ScalarType.Float32)).mul(scaling);
            projection.weight.add_((projection.Conv1DLayout ? delta.t() : delta).to(projection.weight.dtype));
        }
    }

    /// <summary>FLoRA's global after a round: the factors so far with the round's stacked factors appended (A's rows, B's columns).</summary>
    public static Dictionary<string, Tensor> Append(IReadOnlyDictionary<string, Tensor> global, IReadOnlyDictionary<string, Tensor> round) =>
        global.ToDictionary(kv => kv.Key, kv =>
            IsA(kv.Key) ? cat([kv.Value.to(ScalarType.Float32), round[kv.Key]], 0)
            : IsB(kv.Key) ? cat([kv.Value.to(ScalarType.Float32), round[kv.Key]], 1)
            : throw new ArgumentException($"tensor '{kv.Key}' is no LoRA factor; stacking appends factors only"), StringComparer.Ordinal);

    /// <summary>Zeros shaped as <paramref name="template"/>'s tensors with every LoRA factor at <paramref name="rank"/>.</summary>
    public static Dictionary<string, Tensor> Shaped(IReadOnlyDictionary<string, Tensor> template, int rank) =>
        template.ToDictionary(kv => kv.Key, kv =>
            IsA(kv.Key) ? zeros([rank, kv.Value.shape[1]]) : IsB(kv.Key) ? zeros([kv.Value.shape[0], rank]) : zeros_like(kv.Value), StringComparer.Ordinal);

    /// <summary>The rank of an adapter's LoRA factors (the rows of any lora_A).</summary>
    public static int RankOf(IReadOnlyDictionary<string, Tensor> adapter) =>
        (int)adapter.First(kv => IsA(kv.Key)).Value.shape[0];

    /// <summary>The spec as one party trains (or an adapter of that rank is evaluated): the job's PEFT settings at <paramref name="rank"/> and its α.</summary>
    public static JobSpec ForParty(JobSpec spec, int rank) =>
        spec.Peft.LoraR == rank ? spec : spec with { Peft = spec.Peft with { LoraR = rank, LoraAlpha = rank * Scaling(spec) } };

    /// <summary>The first <paramref name="rank"/> components of every LoRA factor (A's rows, B's columns); other tensors as they are.</summary>
    public static Dictionary<string, Tensor> Truncate(IReadOnlyDictionary<string, Tensor> adapter, int rank) =>
        adapter.ToDictionary(kv => kv.Key, kv =>
            IsA(kv.Key) ? kv.Value[..rank].contiguous()
            : IsB(kv.Key) ? kv.Value[.., ..rank].contiguous()
            : kv.Value, StringComparer.Ordinal);

    /// <summary>A delta at a party's rank zero-padded to the layout's (the global adapter's) shapes.</summary>
    public static Dictionary<string, Tensor> Pad(IReadOnlyDictionary<string, Tensor> delta, IReadOnlyDictionary<string, Tensor> layout) =>
        delta.ToDictionary(kv => kv.Key, kv =>
        {
            var shape = layout.TryGetValue(kv.Key, out var l) ? l.shape
                : throw new ArgumentException($"tensor '{kv.Key}' is not in the global adapter");
            if (kv.Value.shape.SequenceEqual(shape)) return kv.Value;
            var padded = zeros(shape, kv.Value.dtype);
            if (IsA(kv.Key)) padded[..(int)kv.Value.shape[0]] = kv.Value;
            else if (IsB(kv.Key)) padded[.., ..(int)kv.Value.shape[1]] = kv.Value;
            else throw new ArgumentException($"tensor '{kv.Key}' is {string.Join("×", kv.Value.shape)}, the global's {string.Join("×", shape)}, and is no LoRA factor");
            return padded;
        }, StringComparer.Ordinal);

    /// <summary>
    /// HetLoRA's rank self-pruning: the rank a party keeps next round. Each component j contributes Σ over modules of
    /// ‖b_j‖·‖a_j‖ (an upper bound on its share of ‖BA‖); when the last one contributes less than <paramref name="threshold"/>
    /// times the components' mean, the party drops it (never below 1). 0 turns pruning off.
    /// </summary>
    public static int Pruned(IReadOnlyDictionary<string, Tensor> adapter, int rank, double threshold)
    {
        if (threshold <= 0 || rank <= 1) return rank;
        using var scope = NewDisposeScope();
        var contribution = new double[rank];
        foreach (var (name, a) in adapter.Where(kv => IsA(kv.Key)))
        {
            var b = adapter[name[..^"lora_A.weight".Length] + "lora_B.weight"];
            var an = a[..rank].to(ScalarType.Float32).norm(1, keepdim: false);
            var bn = b[.., ..rank].to(ScalarType.Float32).norm(0, keepdim: false);
            var each = (an * bn).data<float>().ToArray();
            for (int j = 0; j < rank; j++) contribution[j] += each[j];
        }
        var mean = contribution.Average();
        return mean > 0 && contribution[^1] < threshold * mean ? rank - 1 : rank;
    }
}

/// <summary>
/// The rank a party trains at in a round: its own (or the job's), lowered by self-pruning decided in an earlier round
/// and kept in its workspace (so a restart keeps it); a round fitted again trains at the rank its first fit did.
/// </summary>
public static class PartyRank
{
    /// <summary>The update metric that reports the rank a party trained at.</summary>
    public const string Metric = "lora.rank";

    static string PathOf(Algorithms.ClientContext ctx) => Path.Combine(ctx.Workspace, "lora-rank");

    public static int Of(Algorithms.ClientContext ctx)
    {
        var own = LoraRanks.RankOf(ctx.Spec, ctx.Party);
        var path = PathOf(ctx);
        if (!File.Exists(path)) return own;
        var parts = File.ReadAllText(path).Split(' ');
        if (parts.Length != 3 || !int.TryParse(parts[0], out var round) || !int.TryParse(parts[1], out var started) || !int.TryParse(parts[2], out var next)) return own;
        return Math.Min(own, round < ctx.Round ? next : round == ctx.Round ? started : own);
    }

    /// <summary>Records the rank this round trained at and the one the next round trains at.</summary>
    public static void Decide(Algorithms.ClientContext ctx, int started, int next)
    {
        if (next == started && !File.Exists(PathOf(ctx))) return;
        Directory.CreateDirectory(ctx.Workspace);
        IO.AtomicFile.TryWriteAllText(PathOf(ctx), $"{ctx.Round} {started} {next}");
    }
}

/// <summary>
/// FlexLoRA (Bai et al. 2024): the arbiter forms the weighted sum of the parties' full updates ΔW = Σ p_k·B_k·A_k per
/// module and gives each party the best approximation of it at that party's rank (truncated SVD, Eckart–Young). The sum
/// is kept exactly, as stacked factors of rank Σ r_k; one module's factors at a time, and the SVD through the small
/// core of their QR factors, so no module's full ΔW is ever formed. All parties share one scaling α/r, which cancels.
/// </summary>
public static class FlexLora
{
    /// <summary>
    /// Σ p_k·B_k·A_k exactly, per LoRA module, as B = [p_1·B_1 | p_2·B_2 | …] and A = [A_1; A_2; …] zero-padded to the
    /// layout's rank; tensors that are no LoRA factor are averaged with the same weights (which sum to 1).
    /// </summary>
    public static Dictionary<string, Tensor> Stack(IReadOnlyList<(IReadOnlyDictionary<string, Tensor> Factors, double Weight)> parties,
        IReadOnlyDictionary<string, Tensor> layout)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, shape) in layout)
        {
            if (LoraRanks.IsA(name) || LoraRanks.IsB(name))
            {
                var a = LoraRanks.IsA(name);
                var parts = parties.Select(p => a ? p.Factors[name].to(ScalarType.Float32) : p.Factors[name].to(ScalarType.Float32) * p.Weight).ToList();
                var stacked = cat(parts, a ? 0 : 1);
                var padded = zeros(shape.shape, ScalarType.Float32);
                if (a) padded[..(int)stacked.shape[0]] = stacked;
                else padded[.., ..(int)stacked.shape[1]] = stacked;
                result[name] = padded;
            }
            else result[name] = parties.Select(p => p.Factors[name].to(ScalarType.Float32) * p.Weight).Aggregate((x, y) => x + y);
        }
        return result;
    }

    /// <summary>
    /// Every module's product B·A at rank <paramref name="rank"/> by truncated SVD, split evenly: B_r = U_r·√S_r,
    /// A_r = √S_r·V_rᵀ. A component with no singular value (round 1, when the sum is zero) takes
    /// <paramref name="fallback"/>'s A row and a zero B column, as a fresh LoRA does, so it can still learn. Returns the
    /// factors and the share of the squared singular values left out, Σ_{j&gt;r} σ_j² / Σ σ_j², over all modules.
    /// </summary>
    public static (Dictionary<string, Tensor> Factors, double Discarded) Redistribute(IReadOnlyDictionary<string, Tensor> global, int rank,
        IReadOnlyDictionary<string, Tensor> fallback)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        double kept = 0, total = 0;
        foreach (var (name, t) in global)
        {
            if (LoraRanks.IsB(name)) continue;
            if (!LoraRanks.IsA(name))
            {
                result[name] = t;
                continue;
            }
            var bName = name[..^"lora_A.weight".Length] + "lora_B.weight";
            var (b, a) = (global[bName].to(ScalarType.Float64), t.to(ScalarType.Float64));
            var (qb, rb) = linalg.qr(b);
            var (qa, ra) = linalg.qr(a.t());
            var (u, sv, vh) = linalg.svd(rb.matmul(ra.t()), fullMatrices: false);
            var (left, right) = (qb.matmul(u), qa.matmul(vh.t()));
            var r = Math.Min(rank, (int)sv.shape[0]);
            var sigma = sv.data<double>().ToArray();
            var scale = sv[..r].sqrt();
            var bk = zeros([b.shape[0], rank], ScalarType.Float64);
            var ak = fallback[name][..rank].to(ScalarType.Float64).clone();
            var top = sigma.Length == 0 ? 0 : sigma[0];
            for (int j = 0; j < r; j++)
            {
                if (!(sigma[j] > 1e-12 * top)) continue; // no such component: the fresh one stays
                bk[.., j] = left[.., j] * scale[j];
                ak[j] = right[.., j] * scale[j];
            }
            kept += sigma.Take(r).Sum(x => x * x);
            total += sigma.Sum(x => x * x);
            result[bName] = bk.to(ScalarType.Float32);
            result[name] = ak.to(ScalarType.Float32);
        }
        return (result, total > 0 ? 1 - kept / total : 0);
    }
}
