using System.Buffers.Binary;
using System.Text;

namespace FateLlm.Training.Algorithms.Mkt;

/// <summary>One public example's top-k logits at the positions that predict its response tokens.</summary>
/// <param name="Metric">The model's mean cross-entropy on the response tokens (FedMKT's Min-CE selection), fp32.</param>
/// <param name="Text">The response as the sender's tokenizer decodes it.</param>
/// <param name="Starts">Character offset in <paramref name="Text"/> where each response token starts.</param>
/// <param name="Ids">[m × k] token ids in the sender's vocabulary, row per response token.</param>
/// <param name="Values">[m × k] logits (fp16 on the wire).</param>
public sealed record ExampleLogits(float Metric, string Text, int[] Starts, int[] Ids, Half[] Values)
{
    public int Tokens => Starts.Length;
}

/// <summary>
/// A model's top-k logits over the public set, as FedMKT exchanges them, in a compact binary block (FATE-LLM ships
/// pickled Python lists): fp16 values and int32 ids per response position, each example's response text and token
/// start offsets (for alignment by characters), and a table of the surfaces of every id used (for the vocabulary map).
/// Wire: "MKL1", vocab, k, n; table count, (id, byte length, UTF-8)…; per example: m, metric, text length, UTF-8 text,
/// m starts, m·k ids, m·k fp16 values; all little-endian.
/// </summary>
public sealed record PublicLogits(int Vocab, int K, IReadOnlyDictionary<int, string> Surfaces, IReadOnlyList<ExampleLogits> Examples)
{
    const uint Magic = 0x314C4B4D; // "MKL1"
    const int MaxSurface = 64;

    /// <summary>What a receiver checks a block against before parsing it: the public set's size and the largest block it could be.</summary>
    public sealed record Limits(int Examples, int MaxTokens, int MaxK, int MaxVocab)
    {
        // Header, the surface table (at most one entry per id used, each ≤ 8 + MaxSurface bytes), and per example its
        // counts, text (≤ 16 bytes a token), offsets and k ids + k values per token.
        public long MaxBytes => 20 + Math.Min(MaxVocab, (long)Examples * MaxTokens * MaxK) * (8 + MaxSurface)
            + Examples * (12 + 16L * MaxTokens + 4L * MaxTokens + (long)MaxTokens * MaxK * 6);
    }

    public byte[] ToBytes()
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms, Encoding.UTF8);
        w.Write(Magic);
        w.Write(Vocab);
        w.Write(K);
        w.Write(Examples.Count);
        w.Write(Surfaces.Count);
        foreach (var (id, s) in Surfaces.OrderBy(kv => kv.Key))
        {
            var b = Encoding.UTF8.GetBytes(s);
            w.Write(id);
            w.Write(b.Length);
            w.Write(b);
        }
        foreach (var e in Examples)
        {
            var text = Encoding.UTF8.GetBytes(e.Text);
            w.Write(e.Tokens);
            w.Write(e.Metric);
            w.Write(text.Length);
            w.Write(text);
            foreach (var x in e.Starts) w.Write(x);
            foreach (var x in e.Ids) w.Write(x);
            foreach (var x in e.Values) w.Write(BitConverter.HalfToUInt16Bits(x));
        }
        return ms.ToArray();
    }

    /// <summary>Parses and checks a block: framing, counts within <paramref name="limits"/>, ids within the vocabulary and in the table, finite values, ordered offsets.</summary>
    public static PublicLogits Parse(byte[] bytes, Limits limits)
    {
        var r = new Reader(bytes);
        if (bytes.Length < 16 || r.U32() != Magic) throw new FormatException("not a FedMKT logit block (no MKL1 header)");
        int vocab = r.I32(), k = r.I32(), n = r.I32();
        if (vocab < 1 || vocab > limits.MaxVocab) throw new FormatException($"vocabulary of {vocab} tokens (at most {limits.MaxVocab})");
        if (k < 1 || k > limits.MaxK || k > vocab) throw new FormatException($"top-k of {k} (at most {Math.Min(limits.MaxK, vocab)})");
        if (n != limits.Examples) throw new FormatException($"{n} examples for a public set of {limits.Examples}");
        var count = r.I32();
        if (count < 0 || count > vocab) throw new FormatException($"a surface table of {count} entries for a vocabulary of {vocab}");
        var surfaces = new Dictionary<int, string>(count);
        for (int i = 0; i < count; i++)
        {
            var id = r.I32();
            var length = r.I32();
            if (id < 0 || id >= vocab || length < 0 || length > MaxSurface || !surfaces.TryAdd(id, r.Utf8(length)))
                throw new FormatException($"surface table entry {i}: id {id} (vocabulary {vocab}), {length} bytes, or a repeated id");
        }
        var examples = new ExampleLogits[n];
        for (int x = 0; x < n; x++)
        {
            var m = r.I32();
            var metric = r.F32();
            if (m < 0 || m > limits.MaxTokens) throw new FormatException($"example {x}: {m} response tokens (at most {limits.MaxTokens})");
            if (!float.IsFinite(metric) || metric < 0) throw new FormatException($"example {x}: metric {metric} is not a finite cross-entropy");
            var textLength = r.I32();
            if (textLength < 0 || textLength > 16 * limits.MaxTokens) throw new FormatException($"example {x}: a response text of {textLength} bytes");
            var text = r.Utf8(textLength);
            var starts = r.I32s(m);
            for (int t = 0; t < m; t++)
                if (starts[t] < 0 || starts[t] > text.Length || (t > 0 && starts[t] < starts[t - 1]))
                    throw new FormatException($"example {x}: token {t} starts at {starts[t]} (text of {text.Length} characters, offsets ascending)");
            var ids = r.I32s(m * k);
            foreach (var id in ids)
                if (id < 0 || id >= vocab || !surfaces.ContainsKey(id)) throw new FormatException($"example {x}: token id {id} outside the vocabulary of {vocab} or the surface table");
            var values = new Half[m * k];
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = BitConverter.UInt16BitsToHalf(r.U16());
                if (!Half.IsFinite(values[i])) throw new FormatException($"example {x}: logit {i} is {values[i]}");
            }
            examples[x] = new ExampleLogits(metric, text, starts, ids, values);
        }
        if (r.Remaining != 0) throw new FormatException($"{r.Remaining} bytes after the last example");
        return new PublicLogits(vocab, k, surfaces, examples);
    }

    /// <summary>Bounds-checked little-endian reads: a truncated block is a <see cref="FormatException"/>, never an index error.</summary>
    sealed class Reader(byte[] b)
    {
        int _at;
        public int Remaining => b.Length - _at;

        ReadOnlySpan<byte> Take(int n)
        {
            if (n < 0 || n > Remaining) throw new FormatException($"the block ends {n - Remaining} bytes early");
            var s = b.AsSpan(_at, n);
            _at += n;
            return s;
        }

        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
        public int I32() => BinaryPrimitives.ReadInt32LittleEndian(Take(4));
        public float F32() => BinaryPrimitives.ReadSingleLittleEndian(Take(4));
        public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
        public string Utf8(int n) => Encoding.UTF8.GetString(Take(n));

        public int[] I32s(int n)
        {
            if (n < 0 || 4L * n > Remaining) throw new FormatException("the block ends early");
            var a = new int[n];
            for (int i = 0; i < n; i++) a[i] = I32();
            return a;
        }
    }
}
