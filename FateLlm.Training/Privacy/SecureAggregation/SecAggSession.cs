namespace FateLlm.Training.Privacy.SecureAggregation;

/// <summary>Raised when secure aggregation cannot proceed; the message names the party and the step.</summary>
public sealed class SecAggException(string message) : Exception(message);

/// <summary>
/// What all participants of one secure-aggregation session agree on: its id (bound into every ciphertext so shares
/// cannot be replayed into another round), the roster, the threshold, the neighbour graph and the vector layout.
/// </summary>
public sealed record SecAggSession
{
    public required string SessionId { get; init; }
    /// <summary>Parties in ordinal order; a party's share point is its position + 1.</summary>
    public required IReadOnlyList<string> Parties { get; init; }
    /// <summary>Shares needed to rebuild a secret.</summary>
    public required int Threshold { get; init; }
    /// <summary>Neighbours per party (k); k ≥ n − 1 is the complete graph of the original SecAgg.</summary>
    public required int Degree { get; init; }
    public required long GraphSeed { get; init; }
    /// <summary>Model coordinates, clipped to [−ClipRange, ClipRange] before quantization.</summary>
    public required int VectorLength { get; init; }
    public required double ClipRange { get; init; }
    /// <summary>Extra scalars after the model coordinates (sample weight, clip indicator), each in [−ExtraRange, ExtraRange].</summary>
    public int Extras { get; init; } = 1;
    public double ExtraRange { get; init; } = 4;

    /// <summary>
    /// Bits a model coordinate's masked word takes on the wire (≤ 32; the extras always take 32). Masks are drawn and
    /// added mod 2³² as always; a party sends each coordinate's word mod 2^B, which is uniform because its mask is, and
    /// the arbiter reduces the unmasked sum mod 2^B — exact, since 2^B divides 2³² and n values of B − ⌈log2(n + 1)⌉ bits
    /// sum below 2^B. So fewer bits per coordinate is the compression under secure aggregation.
    /// </summary>
    public int WordBits { get; init; } = 32;

    public int Words => VectorLength + Extras;
    /// <summary>The extras' encoding: full 32-bit words.</summary>
    public FixedPoint Encoding => FixedPoint.ForParties(Parties.Count);
    /// <summary>The model coordinates' encoding: <see cref="WordBits"/>-bit words.</summary>
    public FixedPoint ValueEncoding => FixedPoint.ForParties(Parties.Count, WordBits);
    public uint WordMask => WordBits == 32 ? uint.MaxValue : (1u << WordBits) - 1;
    /// <summary>The bytes of one masked input on the wire: the coordinates packed at <see cref="WordBits"/> bits, then the extras.</summary>
    public long MaskedBytes => ((long)VectorLength * WordBits + 7) / 8 + 4L * Extras;

    /// <summary>A party's masked words as they leave: coordinates mod 2^B packed little-endian bit after bit, extras as 32-bit words.</summary>
    public byte[] Pack(ReadOnlySpan<uint> words)
    {
        if (words.Length != Words) throw new SecAggException($"{words.Length} masked words to pack, the session has {Words}");
        var bytes = new byte[MaskedBytes];
        ulong acc = 0;
        int bits = 0, at = 0;
        var mask = WordMask;
        for (int i = 0; i < VectorLength; i++)
        {
            acc |= (ulong)(words[i] & mask) << bits;
            bits += WordBits;
            while (bits >= 8)
            {
                bytes[at++] = (byte)acc;
                acc >>= 8;
                bits -= 8;
            }
        }
        if (bits > 0) bytes[at++] = (byte)acc;
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(words[VectorLength..]).CopyTo(bytes.AsSpan(at));
        return bytes;
    }

    /// <summary>The masked words a party sent (coordinates with their upper bits zero); the length must be the session's.</summary>
    public uint[] Unpack(ReadOnlySpan<byte> bytes, string party)
    {
        if (bytes.Length != MaskedBytes) throw new SecAggException($"party '{party}' uploaded {bytes.Length} masked bytes, expected {MaskedBytes}");
        var words = new uint[Words];
        ulong acc = 0;
        int bits = 0, at = 0;
        var mask = WordMask;
        for (int i = 0; i < VectorLength; i++)
        {
            while (bits < WordBits)
            {
                acc |= (ulong)bytes[at++] << bits;
                bits += 8;
            }
            words[i] = (uint)acc & mask;
            acc >>= WordBits;
            bits -= WordBits;
        }
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(bytes[at..]).CopyTo(words.AsSpan(VectorLength));
        return words;
    }

    /// <summary>SecAgg+ default: k = 2⌈log2 n⌉ (even, at least t − 1), so cost grows n log n.</summary>
    public static int DefaultDegree(int parties, int threshold)
    {
        var k = 2 * (int)Math.Ceiling(Math.Log2(Math.Max(2, parties)));
        k = Math.Max(k, threshold - 1);
        return Math.Min(k + (k % 2), parties - 1);
    }

    public int Point(string party)
    {
        var i = IndexOf(party);
        return i + 1;
    }

    int IndexOf(string party)
    {
        for (int i = 0; i < Parties.Count; i++) if (Parties[i] == party) return i;
        throw new SecAggException($"party '{party}' is not in secure-aggregation session {SessionId}");
    }

    IReadOnlyList<string>[]? _neighbours;

    /// <summary>
    /// N(u): a random k-regular graph from the shared seed — the parties, shuffled, sit on a ring and each links to
    /// k/2 on either side (a Harary graph under a random permutation, as in Bell et al. 2020).
    /// </summary>
    public IReadOnlyList<string> Neighbours(string party)
    {
        if (_neighbours is null)
        {
            var n = Parties.Count;
            var sets = Enumerable.Range(0, n).Select(_ => new SortedSet<string>(StringComparer.Ordinal)).ToArray();
            if (Degree >= n - 1)
            {
                for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) if (i != j) sets[i].Add(Parties[j]);
            }
            else
            {
                var order = Enumerable.Range(0, n).ToArray();
                new Random((int)(GraphSeed ^ (GraphSeed >> 32))).Shuffle(order);
                for (int pos = 0; pos < n; pos++)
                    for (int d = 1; d <= Degree / 2; d++)
                    {
                        int a = order[pos], b = order[(pos + d) % n];
                        sets[a].Add(Parties[b]);
                        sets[b].Add(Parties[a]);
                    }
            }
            _neighbours = sets.Select(s => (IReadOnlyList<string>)s.ToList()).ToArray();
        }
        return _neighbours[IndexOf(party)];
    }

    /// <summary>The holders of u's shares: its neighbours and u itself.</summary>
    public IEnumerable<string> ShareHolders(string party) => Neighbours(party).Append(party);

    public void Validate()
    {
        if (Parties.Count < 2) throw new SecAggException("secure aggregation needs at least 2 parties");
        if (Parties.Distinct().Count() != Parties.Count) throw new SecAggException("duplicate party in the secure-aggregation roster");
        if (Degree < 1) throw new SecAggException($"neighbour degree {Degree} must be ≥ 1");
        if (Threshold < 2 || Threshold > Math.Min(Degree, Parties.Count - 1) + 1)
            throw new SecAggException($"threshold {Threshold} must be between 2 and {Math.Min(Degree, Parties.Count - 1) + 1} (neighbours + self)");
        if (!(ClipRange > 0)) throw new SecAggException($"clip range {ClipRange} must be > 0");
        if (VectorLength < 1) throw new SecAggException("empty vector");
        if (WordBits > 32 || WordBits - FixedPoint.HeadroomBits(Parties.Count) < 8)
            throw new SecAggException($"{WordBits}-bit words cannot carry 8 bits per value for {Parties.Count} parties (at most 32 bits, at least {8 + FixedPoint.HeadroomBits(Parties.Count)})");
    }
}

/// <summary>Step 1: a party's two ECDH public keys (SubjectPublicKeyInfo): one encrypts its shares, one derives pairwise masks.</summary>
public sealed record SecAggKeys(string Party, byte[] CipherKey, byte[] MaskKey);

/// <summary>Step 2: one share pair (self-mask seed, mask private key) from one party to another, AES-GCM sealed; the arbiter only relays it.</summary>
public sealed record EncryptedShare(string From, string To, byte[] Nonce, byte[] Ciphertext, byte[] Tag);

/// <summary>Step 2 output: shares for each neighbour and a commitment SHA-256(b_u) that lets the arbiter verify the rebuilt seed.</summary>
public sealed record ShareBundle(string Party, IReadOnlyList<EncryptedShare> Shares, byte[] SeedCommitment);

/// <summary>Step 4 output item: the revealer's share of <see cref="Owner"/>'s self-mask seed (owner survived) or mask key (owner dropped).</summary>
public sealed record RevealedShare(string Owner, bool OfSeed, int X, byte[] Y);

public sealed record UnmaskShares(string Party, IReadOnlyList<RevealedShare> Shares);
