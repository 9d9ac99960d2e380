using System.Text;
using FateLlm.Training.Models;

namespace FateLlm.Training.Tokenization;

/// <summary>One piece of a SentencePiece model: its text, score and type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).</summary>
public readonly record struct SentencePiece(string Piece, float Score, int Type)
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;
}

/// <summary>
/// A SentencePiece BPE model (LLaMA's <c>tokenizer.model</c>), encoded as Google's sentencepiece does (bpe_model.cc):
/// the normalizer adds the dummy prefix and escapes spaces as ▁; user-defined pieces are kept whole; then the adjacent
/// pair whose joined piece has the highest score is merged, the leftmost first on a tie; what is left outside the
/// vocabulary becomes its UTF-8 bytes (byte fallback) or unk.
/// </summary>
public sealed class SentencePieceBpe
{
    public const string Space = "▁";
    readonly Dictionary<string, int> _ids = new(StringComparer.Ordinal);
    readonly string _path;

    public IReadOnlyList<SentencePiece> Pieces { get; }
    public int UnkId { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PadId { get; }
    public bool ByteFallback { get; }
    public bool AddDummyPrefix { get; }
    public bool RemoveExtraWhitespaces { get; }
    readonly int[] _byteIds = new int[256];
    readonly List<string> _userDefined;

    SentencePieceBpe(string path, List<SentencePiece> pieces, Dictionary<int, long> trainer, Dictionary<int, long> normalizer, string normalizerName)
    {
        _path = path;
        Pieces = pieces;
        if (trainer.GetValueOrDefault(3, 1) != 2)
            throw new ModelFormatException($"{path}: a SentencePiece model of type {trainer.GetValueOrDefault(3, 1)} (1 unigram, 2 BPE, 3 word, 4 char); FateLlm reads BPE models");
        if (normalizerName is not ("identity" or ""))
            throw new ModelFormatException($"{path}: normalizer '{normalizerName}' is not supported (LLaMA's tokenizer.model uses 'identity')");
        for (int i = 0; i < pieces.Count; i++)
            if (!_ids.TryAdd(pieces[i].Piece, i)) throw new ModelFormatException($"{path}: piece '{pieces[i].Piece}' appears twice (ids {_ids[pieces[i].Piece]} and {i})");
        Array.Fill(_byteIds, -1);
        for (int i = 0; i < pieces.Count; i++)
            if (pieces[i].Type == SentencePiece.Byte) _byteIds[Convert.ToInt32(pieces[i].Piece[3..5], 16)] = i;
        int? Id(int field, long fallback)
        {
            var v = trainer.GetValueOrDefault(field, fallback);
            return v >= 0 && v < pieces.Count ? (int)v : null;
        }
        UnkId = Id(40, 0) ?? throw new ModelFormatException($"{path}: no unknown piece");
        (BosId, EosId, PadId) = (Id(41, 1), Id(42, 2), Id(43, -1));
        ByteFallback = trainer.GetValueOrDefault(35, 0) != 0;
        if (ByteFallback && _byteIds.Any(id => id < 0)) throw new ModelFormatException($"{path}: byte_fallback is on but not all 256 byte pieces <0x00>..<0xFF> are in the model");
        AddDummyPrefix = normalizer.GetValueOrDefault(3, 1) != 0;
        RemoveExtraWhitespaces = normalizer.GetValueOrDefault(4, 1) != 0;
        if (normalizer.GetValueOrDefault(5, 1) == 0) throw new ModelFormatException($"{path}: escape_whitespaces off is not supported");
        _userDefined = pieces.Where(p => p.Type == SentencePiece.UserDefined).Select(p => p.Piece).OrderByDescending(p => p.Length).ToList();
    }

    public static SentencePieceBpe Load(string path)
    {
        try
        {
            var (pieces, trainer, normalizer, name) = SentencePieceModel.Read(File.ReadAllBytes(path));
            if (pieces.Count == 0) throw new ModelFormatException($"{path}: no pieces");
            return new SentencePieceBpe(path, pieces, trainer, normalizer, name);
        }
        catch (Exception e) when (e is not ModelFormatException and (FormatException or IndexOutOfRangeException or ArgumentException or OverflowException))
        {
            throw new ModelFormatException($"{path}: not a SentencePiece model ({e.Message})");
        }
    }

    /// <summary>The text as the normalizer hands it to the model: extra spaces removed if configured, ▁ prefix, spaces escaped.</summary>
    public string Normalize(string text)
    {
        if (RemoveExtraWhitespaces) text = string.Join(' ', text.Split(' ', StringSplitOptions.RemoveEmptyEntries));
        if (text.Length == 0) return "";
        return (AddDummyPrefix ? Space : "") + text.Replace(" ", Space);
    }

    public List<int> Encode(string text)
    {
        var normalized = Normalize(text);
        // Initial symbols: user-defined pieces whole (longest match), else one code point each.
        var symbols = new List<string>();
        for (int i = 0; i < normalized.Length;)
        {
            var user = _userDefined.FirstOrDefault(u => string.CompareOrdinal(normalized, i, u, 0, u.Length) == 0);
            var len = user?.Length ?? (char.IsSurrogatePair(normalized, i) ? 2 : 1);
            symbols.Add(normalized.Substring(i, len));
            i += len;
        }
        var fixedSymbol = symbols.Select(s => _userDefined.Contains(s)).ToList();
        // Linked list of symbols and an agenda of mergeable pairs: highest score first, then leftmost.
        var n = symbols.Count;
        var prev = Enumerable.Range(-1, n).ToArray();
        var next = Enumerable.Range(1, n).Select(x => x < n ? x : -1).ToArray();
        var text2 = symbols.ToArray();
        var agenda = new PriorityQueue<(int Left, int Right, string Joined), (float, int)>(Comparer<(float Score, int Left)>.Create((a, b) =>
            a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left)));
        void Offer(int left, int right)
        {
            if (left < 0 || right < 0 || fixedSymbol[left] || fixedSymbol[right]) return;
            var joined = text2[left] + text2[right];
            if (_ids.TryGetValue(joined, out var id) && Pieces[id].Type is SentencePiece.Normal or SentencePiece.UserDefined)
                agenda.Enqueue((left, right, joined), (Pieces[id].Score, left));
        }
        for (int i = 0; i + 1 < n; i++) Offer(i, i + 1);
        while (agenda.TryDequeue(out var pair, out _))
        {
            // Stale: one side was merged away or changed since the pair was offered.
            if (text2[pair.Left].Length == 0 || text2[pair.Right].Length == 0 || next[pair.Left] != pair.Right || text2[pair.Left] + text2[pair.Right] != pair.Joined) continue;
            text2[pair.Left] = pair.Joined;
            text2[pair.Right] = "";
            next[pair.Left] = next[pair.Right];
            if (next[pair.Right] >= 0) prev[next[pair.Right]] = pair.Left;
            Offer(prev[pair.Left], pair.Left);
            Offer(pair.Left, next[pair.Left]);
        }
        var ids = new List<int>();
        for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i])
        {
            if (_ids.TryGetValue(text2[i], out var id) && Pieces[id].Type is not (SentencePiece.Unused or SentencePiece.Control or SentencePiece.Byte)) ids.Add(id);
            else if (ByteFallback) ids.AddRange(Encoding.UTF8.GetBytes(text2[i]).Select(b => _byteIds[b]));
            else if (ids.Count == 0 || ids[^1] != UnkId) ids.Add(UnkId); // consecutive unknowns collapse into one, as in spm
        }
        return ids;
    }

    /// <summary>Pieces joined, ▁ as space, byte pieces as their bytes, the dummy prefix's space dropped; control pieces skipped.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if (id < 0 || id >= Pieces.Count) continue;
            var p = Pieces[id];
            switch (p.Type)
            {
                case SentencePiece.Control: continue;
                case SentencePiece.Byte: bytes.Add(Convert.ToByte(p.Piece[3..5], 16)); break;
                case SentencePiece.Unknown: bytes.AddRange(" ⁇ "u8.ToArray()); break;
                default: bytes.AddRange(Encoding.UTF8.GetBytes(p.Piece.Replace(Space, " "))); break;
            }
        }
        var text = Encoding.UTF8.GetString(bytes.ToArray());
        return AddDummyPrefix && text.StartsWith(' ') ? text[1..] : text;
    }
}

/// <summary>
/// SentencePiece's ModelProto (sentencepiece_model.proto) read and written by hand: the pieces, the trainer spec's
/// scalar fields and the normalizer spec (name and flags). Unknown fields are skipped on read.
/// </summary>
public static class SentencePieceModel
{
    public static (List<SentencePiece> Pieces, Dictionary<int, long> Trainer, Dictionary<int, long> Normalizer, string NormalizerName) Read(byte[] bytes)
    {
        var pieces = new List<SentencePiece>();
        Dictionary<int, long> trainer = new(), normalizer = new();
        var name = "";
        foreach (var (field, value, sub) in Fields(bytes))
            switch (field)
            {
                case 1:
                    string piece = "";
                    float score = 0;
                    int type = SentencePiece.Normal;
                    foreach (var (f, v, s) in Fields(sub!))
                        if (f == 1) piece = Encoding.UTF8.GetString(s!);
                        else if (f == 2) score = BitConverter.Int32BitsToSingle((int)v);
                        else if (f == 3) type = (int)v;
                    pieces.Add(new SentencePiece(piece, score, type));
                    break;
                case 2:
                    foreach (var (f, v, s) in Fields(sub!)) if (s is null) trainer[f] = v;
                    break;
                case 3:
                    foreach (var (f, v, s) in Fields(sub!))
                        if (f == 1) name = Encoding.UTF8.GetString(s!);
                        else if (s is null) normalizer[f] = v;
                    break;
            }
        return (pieces, trainer, normalizer, name);
    }

    /// <summary>Top-level fields of a protobuf message: varints and fixed32 as values, length-delimited as bytes.</summary>
    static List<(int Field, long Value, byte[]? Bytes)> Fields(byte[] b)
    {
        var result = new List<(int, long, byte[]?)>();
        int i = 0;
        ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                var x = b[i++];
                v |= (ulong)(x & 0x7F) << shift;
                if ((x & 0x80) == 0) return v;
            }
            throw new FormatException($"varint longer than 10 bytes at byte {i}");
        }
        while (i < b.Length)
        {
            var key = Varint();
            var (field, wire) = ((int)(key >> 3), (int)(key & 7));
            switch (wire)
            {
                case 0: result.Add((field, (long)Varint(), null)); break;
                case 1: i += 8; break;
                case 5: result.Add((field, BitConverter.ToInt32(b, i), null)); i += 4; break;
                case 2:
                    var len = checked((int)Varint());
                    if (len < 0 || i + len > b.Length) throw new FormatException($"field {field} runs past the end of the file");
                    result.Add((field, 0, b[i..(i + len)]));
                    i += len;
                    break;
                default: throw new FormatException($"unsupported protobuf wire type {wire} at byte {i}");
            }
        }
        return result;
    }

    public static byte[] Write(IReadOnlyList<SentencePiece> pieces, int vocabSize)
    {
        using var model = new MemoryStream();
        foreach (var (piece, score, type) in pieces)
        {
            using var p = new MemoryStream();
            String(p, 1, piece);
            Float(p, 2, score);
            Varint(p, 3, type);
            Message(model, 1, p);
        }
        using (var trainer = new MemoryStream())
        {
            Varint(trainer, 3, 2); // model_type = BPE
            Varint(trainer, 4, vocabSize);
            Float(trainer, 10, 1.0f); // character_coverage
            Varint(trainer, 35, 1); // byte_fallback
            Varint(trainer, 40, 0); // unk_id
            Varint(trainer, 41, 1); // bos_id
            Varint(trainer, 42, 2); // eos_id
            Varint(trainer, 43, -1); // pad_id: none
            Message(model, 2, trainer);
        }
        using (var normalizer = new MemoryStream())
        {
            String(normalizer, 1, "identity");
            Varint(normalizer, 3, 1); // add_dummy_prefix
            Varint(normalizer, 4, 0); // remove_extra_whitespaces: keep the text as it is
            Varint(normalizer, 5, 1); // escape_whitespaces
            Message(model, 3, normalizer);
        }
        return model.ToArray();
    }

    static void Key(Stream s, int field, int wire) => Raw(s, (ulong)((field << 3) | wire));

    static void Raw(Stream s, ulong v)
    {
        do
        {
            var b = (byte)(v & 0x7F);
            v >>= 7;
            s.WriteByte(v != 0 ? (byte)(b | 0x80) : b);
        } while (v != 0);
    }

    static void Varint(Stream s, int field, long v)
    {
        Key(s, field, 0);
        Raw(s, unchecked((ulong)v));
    }

    static void Float(Stream s, int field, float v)
    {
        Key(s, field, 5);
        s.Write(BitConverter.GetBytes(v));
    }

    static void String(Stream s, int field, string v)
    {
        Key(s, field, 2);
        var bytes = Encoding.UTF8.GetBytes(v);
        Raw(s, (ulong)bytes.Length);
        s.Write(bytes);
    }

    static void Message(Stream s, int field, MemoryStream inner)
    {
        Key(s, field, 2);
        Raw(s, (ulong)inner.Length);
        inner.WriteTo(s);
    }
}
