using System.Numerics;
using System.Security.Cryptography;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>One Shamir share: the evaluation point (a party's 1-based index in the roster) and the polynomial's value there.</summary>
public sealed record SecretShare(int X, byte[] Y);

/// <summary>
/// Shamir t-of-n secret sharing over the prime field GF(2^521 − 1), large enough for a 32-byte seed or an ECDH
/// private scalar in one share. Any t shares rebuild the secret; fewer reveal nothing about it.
/// </summary>
public static class Shamir
{
    static readonly BigInteger Prime = BigInteger.Pow(2, 521) - 1;
    public const int MaxSecretBytes = 64;

    public static SecretShare[] Split(ReadOnlySpan<byte> secret, int threshold, IReadOnlyList<int> points)
    {
        if (secret.Length > MaxSecretBytes) throw new ArgumentException($"secret of {secret.Length} bytes exceeds {MaxSecretBytes}");
        if (threshold < 1 || threshold > points.Count) throw new ArgumentException($"threshold {threshold} must be in 1..{points.Count}");
        if (points.Any(p => p <= 0) || points.Distinct().Count() != points.Count) throw new ArgumentException("share points must be distinct and positive");
        var coefficients = new BigInteger[threshold];
        coefficients[0] = new BigInteger(secret, isUnsigned: true, isBigEndian: true);
        for (int i = 1; i < threshold; i++) coefficients[i] = RandomElement();
        return points.Select(x =>
        {
            BigInteger y = BigInteger.Zero, bx = x;
            for (int i = threshold - 1; i >= 0; i--) y = (y * bx + coefficients[i]) % Prime;
            return new SecretShare(x, y.ToByteArray(isUnsigned: true, isBigEndian: true));
        }).ToArray();
    }

    /// <summary>Lagrange interpolation at 0 over all given shares; the secret comes back as <paramref name="length"/> bytes.</summary>
    public static byte[] Combine(IReadOnlyList<SecretShare> shares, int length)
    {
        if (shares.Count == 0) throw new ArgumentException("no shares");
        if (shares.Select(s => s.X).Distinct().Count() != shares.Count) throw new ArgumentException("duplicate share points");
        var secret = BigInteger.Zero;
        for (int i = 0; i < shares.Count; i++)
        {
            BigInteger num = BigInteger.One, den = BigInteger.One;
            for (int j = 0; j < shares.Count; j++)
            {
                if (i == j) continue;
                num = num * (Prime - shares[j].X) % Prime;
                den = den * (((BigInteger)shares[i].X - shares[j].X + Prime) % Prime) % Prime;
            }
            var yi = new BigInteger(shares[i].Y, isUnsigned: true, isBigEndian: true);
            secret = (secret + yi * num % Prime * Inverse(den)) % Prime;
        }
        var bytes = secret.ToByteArray(isUnsigned: true, isBigEndian: true);
        if (bytes.Length > length) return bytes; // inconsistent shares: the caller's check against the commitment fails
        var padded = new byte[length];
        bytes.CopyTo(padded, length - bytes.Length);
        return padded;
    }

    /// <summary>Modular inverse by the extended Euclidean algorithm: the denominators are small, so this is far cheaper than Fermat's p − 2 power.</summary>
    static BigInteger Inverse(BigInteger a)
    {
        BigInteger r0 = Prime, r1 = a % Prime, t0 = 0, t1 = 1;
        while (!r1.IsZero)
        {
            var q = BigInteger.DivRem(r0, r1, out var r2);
            (r0, r1) = (r1, r2);
            (t0, t1) = (t1, t0 - q * t1);
        }
        if (!r0.IsOne) throw new ArgumentException("share points are not distinct modulo the field prime");
        return t0.Sign < 0 ? t0 + Prime : t0;
    }

    static BigInteger RandomElement()
    {
        Span<byte> buf = stackalloc byte[72];
        RandomNumberGenerator.Fill(buf);
        return new BigInteger(buf, isUnsigned: true) % Prime;
    }
}
