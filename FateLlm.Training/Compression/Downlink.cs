using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using FateLlm.Training.Privacy.SecureAggregation;
using static TorchSharp.torch;

namespace FateLlm.Training.Compression;

/// <summary>
/// The global on its way down, for every summable plug-in alike. The arbiter remembers what parties were last sent for
/// an exchange's vector layout (<see cref="AlgorithmState.Downlink"/>); the next time it offers the global <i>G</i> it
/// offers instead <i>Ĝ</i> = held + decode(encode(<i>G</i> − held)) — by digest, so a party that holds the old one fetches
/// only the compressed delta and rebuilds <i>Ĝ</i> bit for bit (checked against the digest), and a party that does not
/// fetches <i>Ĝ</i> in full. What the encoding lost stays in <i>G</i> − <i>Ĝ</i> and travels with the next delta: the
/// downlink's error feedback. Parties train from <i>Ĝ</i>; the plug-in's own state keeps the exact <i>G</i>.
/// </summary>
public static class Downlink
{
    const string DeltaSuffix = "~delta", BasePrefix = "downlink.";

    /// <summary>The download that carries the compressed delta towards <paramref name="download"/>.</summary>
    public static string DeltaOf(string download) => download + DeltaSuffix;

    public static bool IsDelta(string download) => download.EndsWith(DeltaSuffix, StringComparison.Ordinal);

    /// <summary>The digest a party must hold to rebuild <paramref name="download"/> from its delta, if it is offered as one.</summary>
    public static string? BaseOf(IReadOnlyDictionary<string, string> parameters, string download) => parameters.GetValueOrDefault(BasePrefix + download);

    /// <summary>The exchange as offered: unchanged, or with its vector layout's download compressed against what parties hold.</summary>
    public static Exchange Offer(BlobStore store, JobSpec spec, AlgorithmState state, Exchange exchange)
    {
        var options = spec.Compression;
        if (options.Down == CompressionScheme.None || exchange.VectorLayout is not { } name || RoundStep.LayoutDigest(exchange) is not { } target
            || state.Find(AlgorithmState.Downlink) is not { } held || held == target || !store.Has(held))
            return exchange;
        using var scope = NewDisposeScope();
        var baseBytes = store.Read(held);
        var (from, to) = (SafeTensors.FromBytes(baseBytes, "downlink base"), SafeTensors.FromBytes(store.Read(target), "downlink target"));
        if (!SameLayout(from, to)) return exchange; // the layout changed shape: everyone downloads it in full
        var (b, t) = (AdapterVector.Flatten(to, from, "held"), AdapterVector.Flatten(to, to, "global"));
        for (int i = 0; i < t.Length; i++) t[i] -= b[i];
        var payload = UpdateCompression.Encode(options.Down, to, t, options.BlockSize, options.TopKFraction);
        var shadow = store.Put(Apply(baseBytes, payload));
        var delta = store.Put(payload);
        return exchange with
        {
            Instructions = exchange.Instructions.ToDictionary(kv => kv.Key, kv => kv.Value with
            {
                Downloads = new Dictionary<string, string>(kv.Value.Downloads) { [name] = shadow, [DeltaOf(name)] = delta },
                Parameters = new Dictionary<string, string>(kv.Value.Parameters) { [BasePrefix + name] = held },
            }, StringComparer.Ordinal),
        };
    }

    /// <summary>
    /// The global a delta stands for: the held one plus the decoded delta, in the held tensors' dtypes. The arbiter and
    /// every party compute it with this same function, so its bytes (and digest) agree.
    /// </summary>
    public static byte[] Apply(byte[] baseBytes, byte[] payload)
    {
        using var scope = NewDisposeScope();
        var from = SafeTensors.FromBytes(baseBytes, "downlink base");
        var values = UpdateCompression.DecodeAsLabelled(payload, from);
        var held = AdapterVector.Flatten(from, from, "held");
        for (int i = 0; i < values.Length; i++) values[i] += held[i];
        return SafeTensors.ToBytes(AdapterVector.Unflatten(from, values).ToDictionary(kv => kv.Key, kv => kv.Value.to(from[kv.Key].dtype)));
    }

    /// <summary>Party side: the global rebuilt from the held one and the delta, refused unless it has the digest the arbiter offered.</summary>
    public static byte[] Rebuild(byte[] baseBytes, byte[] payload, string digest)
    {
        var rebuilt = Apply(baseBytes, payload);
        var got = BlobStore.Digest(rebuilt);
        return got == digest ? rebuilt
            : throw new CompressedUpdateException($"the global rebuilt from its delta has digest {got[..12]}…, the arbiter offered {digest[..12]}…");
    }

    static bool SameLayout(IReadOnlyDictionary<string, Tensor> a, IReadOnlyDictionary<string, Tensor> b) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var t) && t.shape.SequenceEqual(kv.Value.shape));
}
