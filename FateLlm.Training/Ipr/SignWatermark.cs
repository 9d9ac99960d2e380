using FateLlm.Training.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Ipr;

/// <summary>
/// FedIPR's feature-based sign watermark bound to a model: per site b, the secret matrix E_b ∈ R^{p_b×n_b} and target
/// bits s_b ∈ {−1, +1}^{n_b}; the signature is sign(z_b) with z_b = γ_bᵀE_b / √p_b (normalised so a margin means the same
/// at any width). Training descends Σ max(0, margin − s·z) (FATE's hinge has margin 0, which leaves bits on the
/// boundary where averaging and fine-tuning flip them).
/// </summary>
public sealed class SignWatermark : IDisposable
{
    readonly List<(Parameter Gamma, Tensor E, Tensor S)> _sites = [];
    List<Tensor>? _anchor;
    double _share = 1;

    SignWatermark() { }

    public int Bits => _sites.Sum(s => (int)s.S.numel());

    public static SignWatermark Bind(CausalLm model, OwnershipKeys keys, string origin)
    {
        var key = keys.KeyBytes();
        var w = new SignWatermark();
        for (int b = 0; b < keys.Sites.Length; b++)
        {
            var site = keys.Sites[b];
            var gamma = WatermarkSites.Find(model, site.Site, origin);
            if (site.Bits == 0) continue;
            // Out of place, into tensors libtorch allocates: worked on in place, the tensor TorchSharp makes from a .NET array
            // gave products whose last bits varied from run to run (its memory's alignment is the suspected cause).
            using var raw = tensor(KeyedNormal.Values(key, 2 * b, site.Length * site.Bits), [site.Length, site.Bits], device: gamma.device);
            using var signs = tensor(KeyedNormal.Signs(key, 2 * b + 1, site.Bits).Select(x => (float)x).ToArray(), device: gamma.device);
            var e = raw.div(Math.Sqrt(site.Length));
            var s = signs.clone();
            w._sites.Add((gamma, e.DetachFromDisposeScope(), s.DetachFromDisposeScope()));
        }
        return w;
    }

    static Tensor Projection(Parameter gamma, Tensor e) => gamma.to_type(ScalarType.Float32).matmul(e);

    /// <summary>
    /// From now on the hinge looks at the model the round is expected to produce, γ₀ + share·(γ − γ₀) with γ₀ the
    /// current (global) scales: FedAvg moves the global model by the party's share of its change, so a hinge on the
    /// local scales alone would place each bit only a share of the way per round (bits starting far on the wrong
    /// side then need many rounds). Other parties' changes are independent of this party's E, which the margin absorbs.
    /// </summary>
    public void Anchor(double share)
    {
        if (share is <= 0 or > 1) throw new ArgumentOutOfRangeException(nameof(share), $"a party's share of the aggregate is in (0, 1], got {share}");
        ReleaseAnchor();
        using var _ = no_grad();
        _anchor = _sites.Select(s => s.Gamma.detach().to_type(ScalarType.Float32).clone().DetachFromDisposeScope()).ToList();
        _share = share;
    }

    /// <summary>
    /// One update of the scales on the hinge Σ max(0, margin − s·z) over the bits still short of the margin: z of the
    /// expected aggregate moves by <paramref name="rate"/> per step towards its target sign (γ += rate/share · s·E/√p,
    /// the gradient step in the span of this party's own E only, so other parties' bits see little of it — an
    /// Adam step would move every scale and walk their bits across the boundary). Returns the hinge before the step.
    /// </summary>
    public double Step(double margin, double rate)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        double hinge = 0;
        for (int i = 0; i < _sites.Count; i++)
        {
            var (gamma, e, s) = _sites[i];
            var current = gamma.to_type(ScalarType.Float32);
            var z = _anchor is null ? current.matmul(e) : _anchor[i].add(current.sub(_anchor[i]).mul(_share)).matmul(e);
            var shortfall = s.mul(z).neg().add(margin).clamp_min(0);
            hinge += shortfall.sum().item<float>();
            var active = shortfall.gt(0).to_type(ScalarType.Float32).mul(s);
            gamma.add_(e.matmul(active).mul(rate / _share).to_type(gamma.dtype));
        }
        return hinge;
    }

    void ReleaseAnchor()
    {
        foreach (var a in _anchor ?? []) a.Dispose();
        _anchor = null;
    }

    /// <summary>How many bits of the model's signature equal the targets.</summary>
    public int Matched()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        long m = 0;
        foreach (var (gamma, e, s) in _sites) m += Projection(gamma, e).sign().eq(s).sum().item<long>();
        return (int)m;
    }

    public void Dispose()
    {
        ReleaseAnchor();
        foreach (var (_, e, s) in _sites)
        {
            e.Dispose();
            s.Dispose();
        }
        _sites.Clear();
    }
}

/// <summary>P(X ≥ k) for X ~ Binomial(n, ½): the chance that a model without the watermark matches k of n bits.</summary>
public static class BinomialTail
{
    public static double Log10P(int n, int k)
    {
        if (k <= 0) return 0;
        if (k > n) return double.NegativeInfinity;
        var logFact = new double[n + 1];
        for (int i = 1; i <= n; i++) logFact[i] = logFact[i - 1] + Math.Log(i);
        var terms = Enumerable.Range(k, n - k + 1).Select(i => logFact[n] - logFact[i] - logFact[n - i] - n * Math.Log(2)).ToArray();
        var max = terms.Max();
        return (max + Math.Log(terms.Sum(t => Math.Exp(t - max)))) / Math.Log(10);
    }

    public static double P(int n, int k) => Math.Pow(10, Log10P(n, k));
}
