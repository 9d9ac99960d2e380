using System.Security.Cryptography;
using System.Text;

namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>
/// One party's side of a SecAgg+ session (Bell et al. 2020). Steps must come in order: <see cref="Advertise"/>,
/// <see cref="ShareKeys"/>, <see cref="MaskInput"/>, <see cref="Unmask"/>. The secrets (b_u, s_u, c_u) never leave
/// this object except as Shamir shares sealed to neighbours.
/// </summary>
public sealed class SecAggClient : IDisposable
{
    readonly SecAggSession _session;
    public SecAggSession Session => _session;
    readonly string _party;
    readonly ECDiffieHellman _cipherKey = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
    readonly ECDiffieHellman _maskKey = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
    readonly byte[] _seed = RandomNumberGenerator.GetBytes(32);
    Dictionary<string, SecAggKeys>? _neighbourKeys;
    (SecretShare Seed, SecretShare Key)? _ownShares;
    Dictionary<string, (SecretShare Seed, SecretShare Key)>? _received;
    UnmaskShares? _revealed;
    IReadOnlyList<string>? _revealedFor;

    public SecAggClient(SecAggSession session, string party)
    {
        session.Validate();
        _session = session;
        _party = party;
        session.Point(party); // must be on the roster
    }

    public SecAggKeys Advertise() =>
        new(_party, _cipherKey.PublicKey.ExportSubjectPublicKeyInfo(), _maskKey.PublicKey.ExportSubjectPublicKeyInfo());

    /// <summary>Step 2: Shamir-splits b_u and s_u among the neighbours that advertised keys (and u itself), sealing each share.</summary>
    public ShareBundle ShareKeys(IReadOnlyList<SecAggKeys> advertised)
    {
        var neighbours = _session.Neighbours(_party).ToHashSet();
        _neighbourKeys = advertised.Where(k => neighbours.Contains(k.Party)).ToDictionary(k => k.Party);
        var holders = _neighbourKeys.Keys.Append(_party).OrderBy(p => p, StringComparer.Ordinal).ToList();
        if (holders.Count < _session.Threshold)
            throw new SecAggException($"party '{_party}': only {holders.Count - 1} neighbours advertised keys, threshold is {_session.Threshold}");
        var points = holders.Select(_session.Point).ToList();
        var seedShares = Shamir.Split(_seed, _session.Threshold, points);
        var keyShares = Shamir.Split(_maskKey.ExportParameters(true).D!, _session.Threshold, points);
        var sealedShares = new List<EncryptedShare>();
        for (int i = 0; i < holders.Count; i++)
        {
            if (holders[i] == _party) { _ownShares = (seedShares[i], keyShares[i]); continue; }
            sealedShares.Add(Seal(holders[i], seedShares[i], keyShares[i]));
        }
        return new ShareBundle(_party, sealedShares, SHA256.HashData(_seed));
    }

    /// <summary>
    /// Step 3: y_u = Q(x_u) + PRG(b_u) + Σ_{v∈N(u)∩U2, u&lt;v} PRG(s_uv) − Σ_{v∈N(u)∩U2, v&lt;u} PRG(s_uv) (mod 2³²; the arbiter reduces coordinates mod 2^B, see SecAggSession.WordBits).
    /// U2 are the neighbours whose shares reached us; each share's AES-GCM tag proves its sender and session.
    /// </summary>
    public uint[] MaskInput(ReadOnlySpan<float> values, ReadOnlySpan<double> extras, IReadOnlyList<EncryptedShare> received, Random? rounding = null)
    {
        if (_neighbourKeys is null || _ownShares is null) throw new SecAggException($"party '{_party}': masked input before sharing keys");
        if (values.Length != _session.VectorLength || extras.Length != _session.Extras)
            throw new SecAggException($"party '{_party}': input has {values.Length}+{extras.Length} values, session expects {_session.VectorLength}+{_session.Extras}");
        _received = new Dictionary<string, (SecretShare, SecretShare)>();
        foreach (var share in received)
        {
            if (share.To != _party) throw new SecAggException($"party '{_party}': received a share addressed to '{share.To}'");
            _received[share.From] = Open(share);
        }
        rounding ??= FixedPoint.FreshRandom();
        var y = new uint[_session.Words];
        _session.ValueEncoding.Encode(values, _session.ClipRange, y, rounding);
        for (int i = 0; i < extras.Length; i++) y[_session.VectorLength + i] = _session.Encoding.EncodeOne(extras[i], _session.ExtraRange, rounding);
        MaskPrg.Apply(_seed, y);
        foreach (var v in _received.Keys)
            MaskPrg.Apply(PairwiseSeed(_maskKey, _neighbourKeys[v].MaskKey, _party, v, _session.SessionId), y, subtract: string.CompareOrdinal(v, _party) < 0);
        return y;
    }

    /// <summary>
    /// Step 4: for each neighbour that shared with us, its seed share if it survived (is in U3), its key share if it
    /// dropped — never both for one party. Repeats with the same survivor list return the same answer; a different list aborts.
    /// </summary>
    public UnmaskShares Unmask(IReadOnlyList<string> survivors)
    {
        if (_received is null || _ownShares is null) throw new SecAggException($"party '{_party}': unmask before masked input");
        var set = survivors.ToHashSet();
        if (_revealedFor is not null)
        {
            if (!_revealedFor.ToHashSet().SetEquals(set))
                throw new SecAggException($"party '{_party}': asked to unmask twice with different survivor sets; refusing (it would reveal both shares of a party)");
            return _revealed!;
        }
        var survivingNeighbours = _session.Neighbours(_party).Count(set.Contains) + (set.Contains(_party) ? 1 : 0);
        if (survivingNeighbours < _session.Threshold)
            throw new SecAggException($"party '{_party}': only {survivingNeighbours} of its share holders survived, threshold {_session.Threshold}; refusing to unmask");
        var shares = new List<RevealedShare>();
        foreach (var (owner, pair) in _received.Append(new(_party, _ownShares.Value)))
            shares.Add(set.Contains(owner) ? new RevealedShare(owner, true, pair.Seed.X, pair.Seed.Y) : new RevealedShare(owner, false, pair.Key.X, pair.Key.Y));
        _revealedFor = survivors.ToList();
        return _revealed = new UnmaskShares(_party, shares);
    }

    EncryptedShare Seal(string to, SecretShare seed, SecretShare key)
    {
        var plain = Encode(seed, key);
        var nonce = RandomNumberGenerator.GetBytes(12);
        var cipher = new byte[plain.Length];
        var tag = new byte[16];
        using var gcm = new AesGcm(ShareKey(_cipherKey, _neighbourKeys![to].CipherKey), 16);
        gcm.Encrypt(nonce, plain, cipher, tag, Associated(_party, to));
        return new EncryptedShare(_party, to, nonce, cipher, tag);
    }

    (SecretShare Seed, SecretShare Key) Open(EncryptedShare share)
    {
        if (!_neighbourKeys!.TryGetValue(share.From, out var keys))
            throw new SecAggException($"party '{_party}': share from '{share.From}', which is not a neighbour that advertised keys");
        var plain = new byte[share.Ciphertext.Length];
        try
        {
            using var gcm = new AesGcm(ShareKey(_cipherKey, keys.CipherKey), 16);
            gcm.Decrypt(share.Nonce, share.Ciphertext, share.Tag, plain, Associated(share.From, _party));
        }
        catch (CryptographicException)
        {
            throw new SecAggException($"party '{_party}': the share from '{share.From}' fails authentication (tampered, or from another session)");
        }
        return Decode(plain, share.From);
    }

    byte[] Associated(string from, string to) => Encoding.UTF8.GetBytes($"fate-llm secagg|{_session.SessionId}|{from}|{to}");

    static byte[] ShareKey(ECDiffieHellman mine, byte[] theirs, string? info = null)
    {
        using var other = ECDiffieHellman.Create();
        other.ImportSubjectPublicKeyInfo(theirs, out _);
        var secret = mine.DeriveRawSecretAgreement(other.PublicKey);
        return HKDF.DeriveKey(HashAlgorithmName.SHA256, secret, 32, info: Encoding.UTF8.GetBytes(info ?? "fate-llm secagg share encryption"));
    }

    /// <summary>s_uv = HKDF(ECDH(s_u, s_v)) bound to the session; symmetric in u and v.</summary>
    public static byte[] PairwiseSeed(ECDiffieHellman mine, byte[] theirPublic, string a, string b, string sessionId)
    {
        var (lo, hi) = string.CompareOrdinal(a, b) < 0 ? (a, b) : (b, a);
        return ShareKey(mine, theirPublic, $"fate-llm secagg mask|{sessionId}|{lo}|{hi}");
    }

    static byte[] Encode(SecretShare seed, SecretShare key)
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        foreach (var s in new[] { seed, key }) { w.Write(s.X); w.Write(s.Y.Length); w.Write(s.Y); }
        return ms.ToArray();
    }

    static (SecretShare, SecretShare) Decode(byte[] plain, string from)
    {
        try
        {
            using var r = new BinaryReader(new MemoryStream(plain));
            SecretShare Read() { var x = r.ReadInt32(); var n = r.ReadInt32(); if (n is < 0 or > 128) throw new InvalidDataException(); return new SecretShare(x, r.ReadBytes(n)); }
            return (Read(), Read());
        }
        catch (Exception e) when (e is EndOfStreamException or InvalidDataException)
        {
            throw new SecAggException($"the share from '{from}' is malformed");
        }
    }

    public void Dispose()
    {
        _cipherKey.Dispose();
        _maskKey.Dispose();
        CryptographicOperations.ZeroMemory(_seed);
    }
}
