namespace FateLlm.Training.Inference;

/// <summary>What InferDPT does with a token outside the kit.</summary>
public enum OutOfKit
{
    /// <summary>Replaced by the mask text (its content never leaves; no ε spent).</summary>
    Mask,
    /// <summary>Replaced by a covered token drawn by the exponential mechanism over all covered tokens from its own embedding (ε spent).</summary>
    Perturb,
}

public enum TokenFate { Perturbed, Masked, PerturbedOutOfKit }

/// <summary>One prompt token: what it became, and the ε it spent.</summary>
public sealed record TokenOutcome(int Original, int? Replacement, TokenFate Fate, double Epsilon);

public sealed record PerturbationOptions(double Epsilon, OutOfKit OutOfKit = OutOfKit.Mask, long Seed = 0)
{
    public void Check()
    {
        if (!(Epsilon > 0)) throw new ArgumentException($"epsilon = {Epsilon} must be positive (∞ sends the prompt unchanged)");
    }
}

/// <summary>
/// InferDPT's per-token mechanism (RANTEXT, Tong et al. 2023), as FATE-LLM implements it and with its gaps closed.
/// For a covered token x: e' = e_x + Laplace(0, 2Δf_d/ε) per dimension; τ = cos(e_x, e'); candidates C = covered
/// tokens y with cos(e_x, e_y) ≥ τ (x itself always qualifies, so C is never empty); y is drawn with probability
/// ∝ exp(ε·cos(e_x, e_y)/2) over C (utility sensitivity Δu = 1). ε = ∞ returns x. Tokens outside the kit are
/// masked or perturbed (<see cref="OutOfKit"/>), never passed through or dropped; ε is per token and a prompt's total
/// is their sum (sequential composition). Sampling is seeded.
/// </summary>
public sealed class TokenPerturbation
{
    readonly PerturbationKit _kit;
    readonly int[] _covered;
    /// <summary>Unit-norm rows of every token (row-major), so a cosine is a dot product.</summary>
    readonly float[] _unit;

    public PerturbationKit Kit => _kit;

    public TokenPerturbation(PerturbationKit kit)
    {
        _kit = kit;
        _covered = Enumerable.Range(0, kit.Vocabulary).Where(i => kit.Covered[i]).ToArray();
        var d = kit.Dim;
        _unit = new float[kit.Embeddings.Length];
        for (int i = 0; i < kit.Vocabulary; i++)
        {
            double norm = 0;
            for (int k = 0; k < d; k++) norm += (double)kit.Embeddings[i * d + k] * kit.Embeddings[i * d + k];
            var inv = norm > 0 ? (float)(1 / Math.Sqrt(norm)) : 0f;
            for (int k = 0; k < d; k++) _unit[i * d + k] = kit.Embeddings[i * d + k] * inv;
        }
    }

    public bool InKit(int id) => id >= 0 && id < _kit.Vocabulary && _kit.Covered[id];

    /// <summary>cos(e_x, e_y) for every covered y, in the order of <see cref="CoveredTokens"/>.</summary>
    public double[] Similarities(int x)
    {
        var d = _kit.Dim;
        var r = new double[_covered.Length];
        for (int j = 0; j < _covered.Length; j++)
        {
            double dot = 0;
            var (a, b) = (x * d, _covered[j] * d);
            for (int k = 0; k < d; k++) dot += _unit[a + k] * _unit[b + k];
            r[j] = dot;
        }
        return r;
    }

    public IReadOnlyList<int> CoveredTokens => _covered;

    /// <summary>The k tokens of the whole vocabulary nearest to <paramref name="y"/> by cosine, nearest first (ties to the lower id).</summary>
    public int[] Nearest(int y, int k)
    {
        var d = _kit.Dim;
        var sims = new double[_kit.Vocabulary];
        for (int v = 0; v < sims.Length; v++)
        {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += _unit[y * d + i] * _unit[v * d + i];
            sims[v] = dot;
        }
        return Enumerable.Range(0, sims.Length).OrderByDescending(v => sims[v]).ThenBy(v => v).Take(k).ToArray();
    }

    /// <summary>τ = cos(e_x, e_x + Laplace(0, 2Δf/ε)).</summary>
    public double Threshold(int x, double epsilon, Random rng)
    {
        var d = _kit.Dim;
        double dot = 0, nx = 0, nn = 0;
        for (int k = 0; k < d; k++)
        {
            var e = (double)_kit.Embeddings[x * d + k];
            var noisy = e + Laplace(rng, 2 * _kit.Sensitivity[k] / epsilon);
            dot += e * noisy;
            nx += e * e;
            nn += noisy * noisy;
        }
        return nx == 0 || nn == 0 ? -1 : dot / Math.Sqrt(nx * nn);
    }

    static double Laplace(Random rng, double scale)
    {
        if (scale == 0) return 0;
        var u = rng.NextDouble() - 0.5; // [−0.5, 0.5)
        return -scale * Math.Sign(u) * Math.Log(1 - 2 * Math.Abs(u));
    }

    /// <summary>The exponential mechanism over covered tokens with cos ≥ <paramref name="threshold"/>: the candidates and their probabilities.</summary>
    public (int[] Tokens, double[] Probabilities) Candidates(int x, double threshold, double epsilon)
    {
        var sims = Similarities(x);
        var chosen = Enumerable.Range(0, sims.Length).Where(j => sims[j] >= threshold).ToArray();
        if (chosen.Length == 0) chosen = [Array.IndexOf(sims, sims.Max())]; // only for an out-of-kit x (a covered x always meets its own τ)
        var top = chosen.Max(j => sims[j]);
        // exp(ε·(s − max)/2): the same weights as exp(ε·s/2), without overflow at large ε.
        var w = chosen.Select(j => double.IsPositiveInfinity(epsilon) ? (sims[j] == top ? 1 : 0) : Math.Exp(epsilon * (sims[j] - top) / 2)).ToArray();
        var total = w.Sum();
        return (chosen.Select(j => _covered[j]).ToArray(), w.Select(x => x / total).ToArray());
    }

    static int Draw(int[] tokens, double[] p, Random rng)
    {
        var u = rng.NextDouble();
        for (int i = 0; i < tokens.Length; i++)
        {
            u -= p[i];
            if (u < 0) return tokens[i];
        }
        return tokens[^1];
    }

    /// <summary>One draw of the exponential mechanism at a given threshold.</summary>
    public int SampleAt(int x, double threshold, double epsilon, Random rng)
    {
        var (tokens, p) = Candidates(x, threshold, epsilon);
        return Draw(tokens, p, rng);
    }

    /// <summary>One token through the mechanism (ε = ∞: unchanged).</summary>
    public int PerturbCovered(int x, double epsilon, Random rng) =>
        double.IsPositiveInfinity(epsilon) ? x : SampleAt(x, Threshold(x, epsilon, rng), epsilon, rng);

    /// <summary>Every token of a prompt, accounted for: perturbed, masked, or perturbed from outside the kit.</summary>
    public IReadOnlyList<TokenOutcome> Perturb(IReadOnlyList<int> ids, PerturbationOptions o)
    {
        o.Check();
        var rng = new Random(unchecked((int)(o.Seed ^ (o.Seed >> 32))));
        var result = new List<TokenOutcome>(ids.Count);
        foreach (var x in ids)
        {
            if (InKit(x)) result.Add(new TokenOutcome(x, PerturbCovered(x, o.Epsilon, rng), TokenFate.Perturbed, o.Epsilon));
            else if (o.OutOfKit == OutOfKit.Mask || x < 0 || x >= _kit.Vocabulary) result.Add(new TokenOutcome(x, null, TokenFate.Masked, 0));
            else
            {
                // No threshold: the exponential mechanism over every covered token, from x's own embedding.
                result.Add(new TokenOutcome(x, SampleAt(x, double.NegativeInfinity, o.Epsilon, rng), TokenFate.PerturbedOutOfKit, o.Epsilon));
            }
        }
        return result;
    }
}
