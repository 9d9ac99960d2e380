using System.Globalization;
using System.Text.Json;
using FateLlm.Training.Federation;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// Typed reads of an algorithm's own block (<c>job.algorithm { ... }</c>, flattened to dotted keys). Its defaults have
/// one home, <c>fate-llm.algorithms.&lt;name&gt;</c> in the actors' reference.conf, merged under the job's block when the
/// spec is made (<c>JobFile</c>); so a plug-in names no default here and a key that is missing is an error. A value of
/// the wrong type names the key and the expected type.
/// </summary>
public sealed class AlgorithmSettings(string algorithm, IReadOnlyDictionary<string, string> values)
{
    public IReadOnlyDictionary<string, string> Values => values;

    string Field(string key) => $"job.algorithm.{key}";

    T Read<T>(string key, string type, Func<string, (bool Ok, T Value)> parse, bool trim = true)
    {
        if (!values.TryGetValue(key, out var raw))
            throw new JobSpecException($"{Field(key)} is not set, and reference.conf's fate-llm.algorithms.{algorithm} gives it no default");
        // A setting made in code with no value (null) reads as empty text, as an empty list.
        raw ??= "";
        var (ok, value) = parse(trim ? raw.Trim() : raw);
        return ok ? value : throw new JobSpecException($"{Field(key)} = '{raw}' is not {type} (algorithm '{algorithm}')");
    }

    /// <summary>The text exactly as the job file wrote it (a separator such as <c>" => "</c> keeps its spaces).</summary>
    public string GetString(string key) => Read(key, "a string", s => (true, s), trim: false);

    /// <summary>A key that has no default (per-party entries): its value, or null when the job does not set it.</summary>
    public string? Find(string key) => values.TryGetValue(key, out var v) ? v : null;

    public int GetInt(string key) =>
        Read(key, "an integer", s => (int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v), v));

    public long GetLong(string key) =>
        Read(key, "an integer", s => (long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v), v));

    public double GetDouble(string key) =>
        Read(key, "a number", s => (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v), v));

    public bool GetBool(string key) => Read(key, $"a boolean ({Switch.Accepted})", s => Switch.TryParse(s, out var v) ? (true, v) : (false, false));

    public IReadOnlyList<string> GetStringList(string key) => Read(key, "a list", s =>
    {
        if (s.Length == 0) return (true, (IReadOnlyList<string>)[]);
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
