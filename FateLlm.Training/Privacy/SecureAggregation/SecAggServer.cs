using System.Security.Cryptography;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>The unmasked sum of one session, with who contributed and what recovery was needed.</summary>
public sealed record SecAggResult(uint[] Sum, IReadOnlyList<string> Contributors, IReadOnlyList<string> RecoveredDropouts, IReadOnlyList<string> WrongShares)
{
    /// <summary>The real-valued sums of the model coordinates and of the extras.</summary>
    public (float[] Values, double[] Extras) Decode(SecAggSession session)
    {
        var (enc, mask) = (session.ValueEncoding, session.WordMask);
        var values = new float[session.VectorLength];
        for (int i = 0; i < values.Length; i++) values[i] = (float)enc.DecodeSum(Sum[i] & mask, session.ClipRange, Contributors.Count);
        var extras = new double[session.Extras];
        for (int i = 0; i < extras.Length; i++) extras[i] = session.Encoding.DecodeSum(Sum[session.VectorLength + i], session.ExtraRange, Contributors.Count);
        return (values, extras);
    }
}

/// <summary>
/// The arbiter's side of SecAgg+: pure functions that route step-2 ciphertexts and, in step 4, rebuild the
/// survivors' self-mask seeds and the dropouts' mask keys from revealed shares and strip every mask from the sum.
/// The arbiter never sees an individual input: it sees masked words and only rebuilds what the protocol allows.
/// </summary>
public static class SecAggServer
{
    /// <summary>The ciphertexts each party in U2 must receive: shares sent to it by other members of U2.</summary>
    public static Dictionary<string, List<EncryptedShare>> Route(IReadOnlyCollection<ShareBundle> bundles)
    {
        var u2 = bundles.Select(b => b.Party).ToHashSet();
        var inbox = u2.ToDictionary(p => p, _ => new List<EncryptedShare>());
        foreach (var b in bundles)
            foreach (var s in b.Shares)
            {
                if (s.From != b.Party) throw new SecAggException($"party '{b.Party}' sent a share claiming to come from '{s.From}'");
                if (inbox.TryGetValue(s.To, out var box)) box.Add(s);
            }
        return inbox;
    }

    /// <summary>
    /// Σ_{u∈U3} x_u from the masked inputs of U3 and the shares revealed by U5 ⊆ U3. Fails, naming the party, if any
    /// secret has fewer than t shares or a rebuilt secret does not match its commitment (a wrong share).
    /// </summary>
    public static SecAggResult Unmask(SecAggSession session, IReadOnlyDictionary<string, SecAggKeys> advertised,
        IReadOnlyDictionary<string, ShareBundle> bundles, IReadOnlyDictionary<string, uint[]> masked, IReadOnlyCollection<UnmaskShares> revealed)
    {
        var u2 = bundles.Keys.ToHashSet();
        var u3 = masked.Keys.ToHashSet();
        if (!u3.IsSubsetOf(u2)) throw new SecAggException($"masked input from {string.Join(", ", u3.Except(u2))}, which shared no keys");
        if (u3.Count < session.Threshold)
            throw new SecAggException($"only {u3.Count} masked inputs arrived, threshold {session.Threshold}: the round cannot be unmasked");
        var sum = new uint[session.Words];
        foreach (var (party, y) in masked)
        {
            if (y.Length != session.Words) throw new SecAggException($"party '{party}' sent {y.Length} masked words, expected {session.Words}");
            for (int i = 0; i < sum.Length; i++) sum[i] += y[i];
        }
        var seedShares = new Dictionary<string, List<(string From, SecretShare Share)>>();
        var keyShares = new Dictionary<string, List<(string From, SecretShare Share)>>();
        foreach (var response in revealed.Where(r => u3.Contains(r.Party)))
            foreach (var s in response.Shares)
            {
                if (s.X != session.Point(response.Party))
                    throw new SecAggException($"party '{response.Party}' revealed a share with point {s.X}, its point is {session.Point(response.Party)}");
                if (s.OfSeed != u3.Contains(s.Owner))
                    throw new SecAggException($"party '{response.Party}' revealed the wrong kind of share for '{s.Owner}'");
                (s.OfSeed ? seedShares : keyShares).TryAdd(s.Owner, []);
                (s.OfSeed ? seedShares : keyShares)[s.Owner].Add((response.Party, new SecretShare(s.X, s.Y)));
            }

        var wrong = new List<string>();
        foreach (var u in u3.Order(StringComparer.Ordinal))
        {
            var seed = Rebuild(session, wrong, u, "self-mask seed", seedShares.GetValueOrDefault(u) ?? [], 32,
                candidate => CryptographicOperations.FixedTimeEquals(SHA256.HashData(candidate), bundles[u].SeedCommitment));
            MaskPrg.Apply(seed, sum, subtract: true);
        }
        var recovered = new List<string>();
        foreach (var d in u2.Except(u3).Order(StringComparer.Ordinal))
        {
            var maskPublic = advertised[d].MaskKey;
            var scalar = Rebuild(session, wrong, d, "mask key", keyShares.GetValueOrDefault(d) ?? [], 32, candidate => PublicKeyOf(candidate).AsSpan().SequenceEqual(maskPublic));
            using var key = ECDiffieHellman.Create(new ECParameters { Curve = ECCurve.NamedCurves.nistP256, D = scalar });
            // Survivor v masked with d (d's shares reached v, so d ∈ U2 ∩ N(v)); it added PRG(s_vd) if v < d, subtracted it otherwise.
            foreach (var v in session.Neighbours(d).Where(u3.Contains))
                MaskPrg.Apply(SecAggClient.PairwiseSeed(key, advertised[v].MaskKey, d, v, session.SessionId), sum,
                    subtract: string.CompareOrdinal(v, d) < 0);
            recovered.Add(d);
        }
        return new SecAggResult(sum, u3.Order(StringComparer.Ordinal).ToList(), recovered, wrong);
    }

    /// <summary>
    /// Rebuilds a secret from its revealed shares and checks it against its commitment. With one wrong share among
    /// more than t, the culprit is named in <paramref name="wrong"/> and the secret rebuilt without it.
    /// </summary>
    static byte[] Rebuild(SecAggSession session, List<string> wrong, string owner, string what, List<(string From, SecretShare Share)> shares, int length, Func<byte[], bool> verify)
    {
        if (shares.Count < session.Threshold)
            throw new SecAggException($"cannot rebuild the {what} of party '{owner}': {shares.Count} shares revealed ({string.Join(", ", shares.Select(s => s.From))}), threshold {session.Threshold}");
        var all = Shamir.Combine(shares.Select(s => s.Share).ToList(), length);
        if (all.Length == length && verify(all)) return all;
        if (shares.Count > session.Threshold)
            foreach (var suspect in shares)
            {
                var rest = Shamir.Combine(shares.Where(s => s != suspect).Select(s => s.Share).ToList(), length);
                if (rest.Length == length && verify(rest))
                {
                    wrong.Add($"party '{suspect.From}' revealed a wrong share of the {what} of '{owner}'");
                    return rest;
                }
            }
        throw new SecAggException($"wrong share detected: the revealed shares of the {what} of party '{owner}' do not match its commitment (from {string.Join(", ", shares.Select(s => s.From))})");
    }

    static byte[] PublicKeyOf(byte[] scalar)
    {
        try
        {
            using var key = ECDiffieHellman.Create(new ECParameters { Curve = ECCurve.NamedCurves.nistP256, D = scalar });
            return key.PublicKey.ExportSubjectPublicKeyInfo();
        }
        catch (CryptographicException) { return []; }
    }
}
