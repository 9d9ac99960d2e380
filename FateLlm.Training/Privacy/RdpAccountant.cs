namespace FateLlm.Training.Privacy;

/// <summary>
/// Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism (Mironov 2017; Mironov, Talwar, Zhang 2019),
/// the mechanism of client-level DP-FedAvg: each round samples parties with rate q and adds noise σ·C to the sum.
/// RDP composes additively over rounds; (ε, δ) uses the conversion of Balle et al. 2020 (as Google's dp_accounting).
/// Everything is computed in log space so large orders and tiny q neither overflow nor underflow.
/// </summary>
public sealed class RdpAccountant
{
    public static readonly double[] DefaultOrders =
        Enumerable.Range(1, 99).Select(x => 1 + x / 10.0).Concat(Enumerable.Range(11, 53).Select(x => (double)x)).Concat([128.0, 256, 512, 1024]).ToArray();

    readonly double[] _orders;
    readonly double[] _rdp;

    public RdpAccountant(IEnumerable<double>? orders = null)
    {
        _orders = (orders ?? DefaultOrders).ToArray();
        if (_orders.Any(a => !(a > 1))) throw new ArgumentException("RDP orders must be > 1");
        _rdp = new double[_orders.Length];
    }

    public IReadOnlyList<double> Orders => _orders;
    public IReadOnlyList<double> Rdp => _rdp;
    public int Steps { get; private set; }

    /// <summary>Composes <paramref name="steps"/> applications of the sampled Gaussian mechanism.</summary>
    public void Compose(double samplingRate, double noiseMultiplier, int steps = 1)
    {
        if (steps < 0) throw new ArgumentException("steps must be non-negative");
        var step = SampledGaussianRdp(samplingRate, noiseMultiplier, _orders);
        for (int i = 0; i < _rdp.Length; i++) _rdp[i] += steps * step[i];
        Steps += steps;
    }

    public (double Epsilon, double Order) Epsilon(double delta) => EpsilonFromRdp(_orders, _rdp, delta);

    /// <summary>RDP of one step of the Poisson-subsampled Gaussian mechanism at each order.</summary>
    public static double[] SampledGaussianRdp(double q, double sigma, IReadOnlyList<double> orders)
    {
        if (q is < 0 or > 1 || double.IsNaN(q)) throw new ArgumentException($"sampling rate {q} is outside [0, 1]");
        if (sigma < 0 || double.IsNaN(sigma)) throw new ArgumentException($"noise multiplier {sigma} is negative");
        return orders.Select(a =>
        {
            if (q == 0) return 0.0;
            if (sigma == 0 || double.IsPositiveInfinity(a)) return double.PositiveInfinity;
            if (q == 1) return a / (2 * sigma * sigma);
            var logA = a == Math.Floor(a) ? LogAInteger(q, sigma, (int)a) : LogAFractional(q, sigma, a);
            return logA / (a - 1);
        }).ToArray();
    }

    /// <summary>ε = min_α RDP(α) + log((α−1)/α) − (log δ + log α)/(α−1) (Balle et al. 2020, Theorem 21).</summary>
    public static (double Epsilon, double Order) EpsilonFromRdp(IReadOnlyList<double> orders, IReadOnlyList<double> rdp, double delta)
    {
        if (delta is <= 0 or >= 1) throw new ArgumentException($"delta {delta} must be in (0, 1)");
        double best = double.PositiveInfinity, bestOrder = orders[0];
        for (int i = 0; i < orders.Count; i++)
        {
            double a = orders[i], r = rdp[i];
            double eps;
            if (delta * delta + Math.Exp(-r) - 1 >= 0) eps = 0; // KL bound: δ ≤ sqrt(1 − exp(−r)) already
            else if (a > 1.01) eps = r + Math.Log(1 - 1 / a) - (Math.Log(delta) + Math.Log(a)) / (a - 1);
            else eps = double.PositiveInfinity;
            if (eps < best) (best, bestOrder) = (eps, a);
        }
        return (Math.Max(0, best), bestOrder);
    }

    // log A_α for integer α: log Σ_k C(α,k) (1−q)^(α−k) q^k exp((k² − k)/(2σ²)).
    static double LogAInteger(double q, double sigma, int alpha)
    {
        double logA = double.NegativeInfinity;
        for (int k = 0; k <= alpha; k++)
        {
            var term = LogBinomial(alpha, k) + k * Math.Log(q) + (alpha - k) * Math.Log(1 - q) + (k * (double)k - k) / (2 * sigma * sigma);
            logA = LogAdd(logA, term);
        }
        return logA;
    }

    // log A_α for fractional α (Mironov, Talwar, Zhang 2019, Section 3.3): two converging series with erfc tails.
    static double LogAFractional(double q, double sigma, double alpha)
    {
        double logA0 = double.NegativeInfinity, logA1 = double.NegativeInfinity;
        var z0 = sigma * sigma * Math.Log(1 / q - 1) + 0.5;
        for (int i = 0; ; i++)
        {
            var (logCoef, positive) = LogAbsBinomial(alpha, i);
            var j = alpha - i;
            var logT0 = logCoef + i * Math.Log(q) + j * Math.Log(1 - q);
            var logT1 = logCoef + j * Math.Log(q) + i * Math.Log(1 - q);
            var logE0 = Math.Log(0.5) + LogErfc((i - z0) / (Math.Sqrt(2) * sigma));
            var logE1 = Math.Log(0.5) + LogErfc((z0 - j) / (Math.Sqrt(2) * sigma));
            var logS0 = logT0 + (i * (double)i - i) / (2 * sigma * sigma) + logE0;
            var logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1;
            if (positive) { logA0 = LogAdd(logA0, logS0); logA1 = LogAdd(logA1, logS1); }
            else { logA0 = LogSub(logA0, logS0); logA1 = LogSub(logA1, logS1); }
            if (Math.Max(logS0, logS1) < -30 || i > 100_000) break;
        }
        return LogAdd(logA0, logA1);
    }

    static double LogBinomial(int n, int k) => LogGamma(n + 1) - LogGamma(k + 1) - LogGamma(n - k + 1);

    /// <summary>log |C(α, i)| and its sign for real α.</summary>
    static (double Log, bool Positive) LogAbsBinomial(double alpha, int i)
    {
        double log = 0;
        bool positive = true;
        for (int m = 0; m < i; m++)
        {
            var f = (alpha - m) / (m + 1);
            if (f < 0) positive = !positive;
            log += Math.Log(Math.Abs(f));
        }
        return (log, positive);
    }

    static double LogAdd(double a, double b)
    {
        if (double.IsNegativeInfinity(a)) return b;
        if (double.IsNegativeInfinity(b)) return a;
        var m = Math.Max(a, b);
        return m + Math.Log(Math.Exp(a - m) + Math.Exp(b - m));
    }

    static double LogSub(double a, double b)
    {
        if (double.IsNegativeInfinity(b)) return a;
        if (a <= b) return double.NegativeInfinity; // the true value is ≥ 0; a tiny negative is rounding
        return a + Math.Log(-double.ExpM1(b - a));
    }

    /// <summary>log erfc(x), accurate in relative terms for large x where erfc underflows.</summary>
    public static double LogErfc(double x)
    {
        if (x < 2) return Math.Log(1 - Erf(x));
        // Continued fraction (Lentz) for erfc(x)·√π·exp(x²) = 1/(x + 1/2/(x + 1/(x + 3/2/(x + …)))).
        const double tiny = 1e-300;
        double f = x, c = x, d = 0;
        for (int n = 1; n < 500; n++)
        {
            var an = n / 2.0;
            d = x + an * d;
            d = Math.Abs(d) < tiny ? tiny : d;
            c = x + an / c;
            c = Math.Abs(c) < tiny ? tiny : c;
            d = 1 / d;
            var delta = c * d;
            f *= delta;
            if (Math.Abs(delta - 1) < 1e-16) break;
        }
        return -x * x - 0.5 * Math.Log(Math.PI) - Math.Log(f);
    }

    /// <summary>erf(x) for |x| &lt; 2 from the positive series 2x/√π·e^(−x²)·Σ (2x²)^n / (1·3·…·(2n+1)); beyond, from erfc.</summary>
    static double Erf(double x)
    {
        if (x < 0) return -Erf(-x);
        if (x >= 2) return 1 - Math.Exp(LogErfc(x));
        double sum = 0, term = 1;
        for (int n = 0; n < 200 && term > 1e-18 * sum; n++)
        {
            sum += term;
            term *= 2 * x * x / (2 * n + 3);
        }
        return 2 * x / Math.Sqrt(Math.PI) * Math.Exp(-x * x) * sum;
    }

    /// <summary>Lanczos approximation (g = 7, n = 9), about 15 significant digits.</summary>
    static double LogGamma(double x)
    {
        if (x < 0.5) return Math.Log(Math.PI / Math.Abs(Math.Sin(Math.PI * x))) - LogGamma(1 - x);
        ReadOnlySpan<double> g = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
            12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
        x -= 1;
        var a = g[0];
        var t = x + 7.5;
        for (int i = 1; i < 9; i++) a += g[i] / (x + i);
        return 0.5 * Math.Log(2 * Math.PI) + (x + 0.5) * Math.Log(t) - t + Math.Log(a);
    }
}
