using System.Text.Json;
using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

namespace FateLlm.Training.Data;

/// <summary>A data error with its location; the message starts with <c>file:line</c>.</summary>
public sealed class DataFormatException(string message) : FormatException(message);

/// <summary>How JSONL rows become prompt/response token sequences (AdvertiseGen layout by default).</summary>
public sealed record DataOptions
{
    public string PromptColumn { get; init; } = "content";
    public string ResponseColumn { get; init; } = "summary";
    /// <summary>Text around the prompt column; <c>{prompt}</c> is replaced by its value.</summary>
    public string Template { get; init; } = "{prompt}\n";
    public int MaxPromptTokens { get; init; } = 256;
    public int MaxResponseTokens { get; init; } = 256;
    /// <summary>Cap on the whole sequence (bos + prompt + response + eos); the response is cut first.</summary>
    public int MaxTotalTokens { get; init; } = 512;
}

public sealed record Example(string Prompt, string Response, string Location);

public sealed record TokenizedExample(int[] InputIds, int[] Labels)
{
    public int Length => InputIds.Length;
}

public sealed record Batch(Tensor InputIds, Tensor Labels, Tensor AttentionMask, int Tokens) : IDisposable
{
    public void Dispose()
    {
        InputIds.Dispose();
        Labels.Dispose();
        AttentionMask.Dispose();
    }
}

public static class InstructionData
{
    public const int IgnoreIndex = -100;

    public static List<Example> ReadJsonl(string path, DataOptions options)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: file not found");
        var result = new List<Example>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var where = $"{path}:{lineNo}";
            JsonElement root;
            try { root = JsonDocument.Parse(line).RootElement; }
            catch (JsonException e)
            {
                // One position: the file's line and the column in it; the parser's own line and byte position would contradict it.
                var reason = System.Text.RegularExpressions.Regex.Replace(e.Message, @"\s*(Path: .*?)?\s*\|?\s*LineNumber: \d+ \| BytePositionInLine: \d+\.?$", "").TrimEnd('.', ' ');
                throw new DataFormatException($"{where}:{(e.BytePositionInLine ?? 0) + 1}: not valid JSON ({reason})");
            }
            if (root.ValueKind != JsonValueKind.Object) throw new DataFormatException($"{where}: expected a JSON object, got {root.ValueKind}");
            result.Add(new Example(Field(root, options.PromptColumn, where), Field(root, options.ResponseColumn, where), where));
        }
        if (result.Count == 0) throw new DataFormatException($"{path}: no examples");
        return result;
    }

    static string Field(JsonElement root, string name, string where)
    {
        if (!root.TryGetProperty(name, out var v)) throw new DataFormatException($"{where}: missing field '{name}'");
        if (v.ValueKind != JsonValueKind.String) throw new DataFormatException($"{where}: field '{name}' must be a string, got {v.ValueKind}");
        return v.GetString()!;
    }

    public static string PromptText(Example e, DataOptions o) => o.Template.Replace("{prompt}", e.Prompt);

    /// <summary>prompt (as HF encodes it, BOS where the tokenizer adds one) response eos, labels -100 on the prompt so only the response is learned.</summary>
    public static TokenizedExample Tokenize(Example e, ITextTokenizer tok, DataOptions o)
    {
        var prompt = PromptIds(e, tok, o);
        var room = Math.Max(0, o.MaxTotalTokens - prompt.Count - (tok.EosId.HasValue ? 1 : 0));
        var response = tok.Encode(e.Response).Take(Math.Min(o.MaxResponseTokens, room)).ToList();
        if (tok.EosId is int eos && prompt.Count < o.MaxTotalTokens) response.Add(eos);
        var ids = prompt.Concat(response).ToArray();
        var labels = Enumerable.Repeat(IgnoreIndex, prompt.Count).Concat(response).ToArray();
        return new TokenizedExample(ids, labels);
    }

    /// <summary>The templated prompt encoded as HF's tokenizer encodes a text: BOS and EOS only where it adds them.</summary>
    public static List<int> PromptIds(Example e, ITextTokenizer tok, DataOptions o)
    {
        var ids = new List<int>();
        if (tok.AddBos && tok.BosId is int bos) ids.Add(bos);
        ids.AddRange(tok.Encode(PromptText(e, o)).Take(Math.Min(o.MaxPromptTokens, o.MaxTotalTokens - ids.Count - 1)));
        if (tok.AddEos && tok.EosId is int eos) ids.Add(eos);
        return ids;
    }

    /// <summary>A text exactly as HF's <c>tokenizer(text)</c> encodes it (what a plain <c>generate</c> continues).</summary>
    public static List<int> TextIds(string text, ITextTokenizer tok)
    {
        var ids = new List<int>();
        if (tok.AddBos && tok.BosId is int bos) ids.Add(bos);
        ids.AddRange(tok.Encode(text));
        if (tok.AddEos && tok.EosId is int eos) ids.Add(eos);
        return ids;
    }

    /// <summary>Right-pads to the longest sequence; padding is masked out of attention and labels.</summary>
    public static Batch Collate(IReadOnlyList<TokenizedExample> items, int padId, Device? device = null)
    {
        var len = items.Max(i => i.Length);
        var ids = new long[items.Count * len];
        var labels = new long[items.Count * len];
        var mask = new long[items.Count * len];
        Array.Fill(ids, padId);
        Array.Fill(labels, IgnoreIndex);
        for (int b = 0; b < items.Count; b++)
            for (int t = 0; t < items[b].Length; t++)
            {
                ids[b * len + t] = items[b].InputIds[t];
                labels[b * len + t] = items[b].Labels[t];
                mask[b * len + t] = 1;
            }
        var shape = new long[] { items.Count, len };
        return new Batch(tensor(ids, shape, device: device), tensor(labels, shape, device: device), tensor(mask, shape, device: device),
            items.Sum(i => i.Length));
    }
}
