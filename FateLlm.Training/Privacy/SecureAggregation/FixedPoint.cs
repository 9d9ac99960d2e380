using System.Security.Cryptography;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>
/// Maps reals in [−r, r] to integers in [0, 2^b − 1] with stochastic rounding (unbiased), so that the sum of up to
/// n parties' words stays below 2^B (B: the word's bits, 32 unless the job compresses) and modular addition equals
/// integer addition. b = B − ⌈log2(n + 1)⌉.
/// </summary>
public sealed record FixedPoint(int Bits)
{
    public static FixedPoint ForParties(int parties, int wordBits = 32)
    {
        var bits = wordBits - HeadroomBits(parties);
        if (bits < 8) throw new ArgumentException($"secure aggregation over {parties} parties in {wordBits}-bit words leaves only {bits} bits per value");
        return new FixedPoint(bits);
    }

    /// <summary>The bits a sum of <paramref name="parties"/> words needs above each word's own.</summary>
    public static int HeadroomBits(int parties) => (int)Math.Ceiling(Math.Log2(parties + 1));

    double Levels => Math.Pow(2, Bits) - 1;

    /// <summary>The largest error of one party's value: one quantization step of a range of half-width r.</summary>
    public double Step(double range) => 2 * range / Levels;

    public void Encode(ReadOnlySpan<float> values, double range, Span<uint> into, Random rng)
    {
        for (int i = 0; i < values.Length; i++) into[i] = EncodeOne(values[i], range, rng);
    }

    public uint EncodeOne(double value, double range, Random rng)
    {
        var clipped = Math.Clamp(double.IsNaN(value) ? 0 : value, -range, range);
        var scaled = (clipped + range) / (2 * range) * Levels;
        var floor = Math.Floor(scaled);
        var word = floor + (rng.NextDouble() < scaled - floor ? 1 : 0);
        return (uint)Math.Min(word, Levels);
    }

    /// <summary>The sum of <paramref name="contributors"/> parties' values from the sum of their words.</summary>
    public double DecodeSum(uint sum, double range, int contributors) => sum * (2 * range / Levels) - contributors * range;

    /// <summary>A generator for stochastic rounding seeded with fresh entropy (rounding must not be predictable).</summary>
    public static Random FreshRandom() => new(BitConverter.ToInt32(RandomNumberGenerator.GetBytes(4)));
}
