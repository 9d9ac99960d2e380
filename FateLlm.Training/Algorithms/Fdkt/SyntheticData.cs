using System.Text;
using System.Text.Json;
using FateLlm.Training.Data;

namespace FateLlm.Training.Algorithms.Fdkt;

/// <summary>One example of FDKT's exchanges (a party's synthetic one, or one the arbiter's LLM wrote): its category and text.</summary>
public sealed record SyntheticExample(string Category, string Prompt, string Response)
{
    public Example AsExample(string location) => new(Prompt, Response, location);
}

/// <summary>What an upload may hold: examples in all, distinct categories, and characters per field.</summary>
public sealed record SyntheticBounds(int MaxExamples, int MaxCategories, int MaxChars)
{
    /// <summary>The most bytes a well-formed upload within the bounds can take (UTF-8 is at most 3 bytes per UTF-16 unit; JSON escapes at most 6).</summary>
    public long MaxBytes => (long)MaxExamples * (3L * MaxChars * 6 + 64);
}

/// <summary>
/// FDKT's text payloads: JSON lines <c>{"category", "prompt", "response"}</c>, strict UTF-8, within
/// <see cref="SyntheticBounds"/>. The arbiter parses a party's upload with <see cref="Parse"/> before anything reads it, so
/// an oversize, non-UTF-8 or malformed upload is refused naming the party and the line.
/// </summary>
public static class SyntheticData
{
    static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static byte[] ToBytes(IEnumerable<SyntheticExample> examples) =>
        Strict.GetBytes(string.Concat(examples.Select(e => JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["category"] = e.Category, ["prompt"] = e.Prompt, ["response"] = e.Response,
        }) + "\n")));

    /// <summary>The examples of <paramref name="bytes"/>; a <see cref="FormatException"/> names what is wrong and where (<paramref name="origin"/>, line).</summary>
    public static List<SyntheticExample> Parse(byte[] bytes, SyntheticBounds bounds, string origin)
    {
        if (bytes.Length > bounds.MaxBytes)
            throw new FormatException($"{origin}: {bytes.Length:N0} bytes, more than {bounds.MaxExamples} examples of at most {bounds.MaxChars} characters per field can take ({bounds.MaxBytes:N0})");
        string text;
        try { text = Strict.GetString(bytes); }
        catch (DecoderFallbackException e)
        {
            throw new FormatException($"{origin}: not UTF-8 text (invalid byte 0x{e.BytesUnknown?.FirstOrDefault():X2} at offset {e.Index})");
        }
        var result = new List<SyntheticExample>();
        var categories = new HashSet<string>(StringComparer.Ordinal);
        var lineNo = 0;
        foreach (var line in text.Split('\n'))
        {
            lineNo++;
            if (line.Length == 0) continue;
            var where = $"{origin}:{lineNo}";
            if (result.Count == bounds.MaxExamples) throw new FormatException($"{where}: more than {bounds.MaxExamples} examples");
            JsonElement root;
            try { root = JsonDocument.Parse(line).RootElement; }
            catch (JsonException) { throw new FormatException($"{where}: not a JSON object"); }
            if (root.ValueKind != JsonValueKind.Object) throw new FormatException($"{where}: not a JSON object");
            string Field(string name)
            {
                if (!root.TryGetProperty(name, out var v) || v.ValueKind != JsonValueKind.String) throw new FormatException($"{where}: field '{name}' must be a string");
                return v.GetString()!;
            }
            var example = new SyntheticExample(Field("category"), Field("prompt"), Field("response"));
            if (Problem(example, bounds.MaxChars) is { } problem) throw new FormatException($"{where}: {problem}");
            if (categories.Add(example.Category) && categories.Count > bounds.MaxCategories)
                throw new FormatException($"{where}: more than {bounds.MaxCategories} categories");
            result.Add(example);
        }
        return result;
    }

    /// <summary>Why an example may not travel (a field empty, too long, or holding control characters), or null.</summary>
    public static string? Problem(SyntheticExample e, int maxChars)
    {
        foreach (var (name, value) in new[] { ("category", e.Category), ("prompt", e.Prompt), ("response", e.Response) })
        {
            if (value.Trim().Length == 0) return $"field '{name}' is empty";
            if (value.Length > maxChars) return $"field '{name}' has {value.Length} characters, more than {maxChars}";
            if (value.Any(c => char.IsControl(c) && c != '\n' && c != '\t')) return $"field '{name}' holds control characters";
        }
        return null;
    }

    /// <summary>A party's private examples with their category (the <paramref name="column"/> of each JSON line).</summary>
    public static List<SyntheticExample> ReadCategorized(string path, DataOptions data, string column)
    {
        var examples = InstructionData.ReadJsonl(path, data);
        var categories = InstructionData.ReadJsonl(path, data with { ResponseColumn = column });
        return [.. examples.Zip(categories, (e, c) => new SyntheticExample(c.Response, e.Prompt, e.Response))];
    }
}
