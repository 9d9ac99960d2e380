using System.Globalization;
using System.Text.Json;
using FateLlm.Training.Federation;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// Typed reads of an algorithm's own block (<c>job.algorithm { ... }</c>, flattened to dotted keys). A missing key
/// takes the fallback given by the plug-in (whose defaults also sit in <c>fate-llm.algorithms.&lt;name&gt;</c> of
/// reference.conf); a value of the wrong type names the key and the expected type.
/// </summary>
public sealed class AlgorithmSettings(string algorithm, IReadOnlyDictionary<string, string> values)
{
    public IReadOnlyDictionary<string, string> Values => values;

    string Field(string key) => $"job.algorithm.{key}";

    T Read<T>(string key, T fallback, string type, Func<string, (bool Ok, T Value)> parse)
    {
        if (!values.TryGetValue(key, out var raw)) return fallback;
        var (ok, value) = parse(raw.Trim());
        return ok ? value : throw new JobSpecException($"{Field(key)} = '{raw}' is not {type} (algorithm '{algorithm}')");
    }

    public string GetString(string key, string fallback) => Read(key, fallback, "a string", s => (true, s));

    public int GetInt(string key, int fallback) =>
        Read(key, fallback, "an integer", s => (int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v), v));

    public long GetLong(string key, long fallback) =>
        Read(key, fallback, "an integer", s => (long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v), v));

    public double GetDouble(string key, double fallback) =>
        Read(key, fallback, "a number", s => (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v), v));

    public bool GetBool(string key, bool fallback) => Read(key, fallback, "a boolean (on/off, true/false, yes/no)", s => s.ToLowerInvariant() switch
    {
        "on" or "true" or "yes" => (true, true),
        "off" or "false" or "no" => (true, false),
        _ => (false, false),
    });

    public IReadOnlyList<string> GetStringList(string key, IReadOnlyList<string> fallback) => Read(key, fallback, "a list", s =>
    {
        try { return (true, (IReadOnlyList<string>)(JsonSerializer.Deserialize<string[]>(s) ?? [])); }
        catch (JsonException) { return (false, (IReadOnlyList<string>)[]); }
    });

    /// <summary>Refuses keys the plug-in does not know, naming the nearest known one.</summary>
    public void RefuseUnknown(IReadOnlyCollection<string> known)
    {
        foreach (var key in values.Keys)
        {
            if (known.Contains(key)) continue;
            var nearest = Spelling.Nearest(key, known);
            throw new JobSpecException($"{Field(key)} is not a setting of algorithm '{algorithm}'" +
                (nearest is null ? " (it takes none)" : $" (did you mean '{nearest}'?)"));
        }
    }
}
