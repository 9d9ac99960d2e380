using System.Text;
using Akka.Serialization;
using FateLlm.Actors.Serialization;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// Mutates a valid payload of one message kind the ways a broken or hostile peer would (bit flips, truncation,
/// extension, huge numbers where sizes and counts go, another kind's manifest, deep nesting, values of the wrong type)
/// and runs each through the wire decoder: every one must end decoded or in a <see cref="WireRefusal"/>; anything else
/// is a crash, and no decode may allocate more than the frame limit.
/// </summary>
public static class WireFuzz
{
    public sealed record Tally(string Manifest, int Payloads, int Refused, int Decoded, long MaxAllocated, IReadOnlyList<string> Crashes)
    {
        public int Crashed => Crashes.Count;
    }

    public static readonly string[] Mutations = ["bit-flip", "truncate", "extend", "huge-number", "wrong-manifest", "deep-nesting", "wrong-type"];

    public static Tally Run(SerializerWithStringManifest serializer, string manifest, byte[] valid, int count, int seed)
    {
        var manifests = WireSchema.All.Values.Order(StringComparer.Ordinal).ToArray();
        // From the kind's place in the schema, not a string hash: .NET randomizes those per process, and a seed must replay.
        var random = new Random(seed * 1_000 + Array.IndexOf(manifests, manifest));
        int refused = 0, decoded = 0;
        long maxAllocated = 0;
        var crashes = new List<string>();
        for (var i = 0; i < count; i++)
        {
            var kind = Mutations[i % Mutations.Length];
            var (payload, decodeAs) = Mutate(kind, valid, manifest, manifests, random);
            var before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                serializer.FromBinary(payload, decodeAs);
                decoded++;
            }
            catch (WireRefusal) { refused++; }
            catch (Exception e)
            {
                if (crashes.Count < 5) crashes.Add($"{kind}: {e.GetType().Name}: {e.Message}");
                else crashes.Add(kind);
            }
            maxAllocated = Math.Max(maxAllocated, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        return new Tally(manifest, count, refused, decoded, maxAllocated, crashes);
    }

    static (byte[] Payload, string Manifest) Mutate(string kind, byte[] valid, string manifest, string[] manifests, Random random)
    {
        var bytes = (byte[])valid.Clone();
        switch (kind)
        {
            case "bit-flip":
                for (var n = random.Next(1, 9); n > 0; n--) bytes[random.Next(bytes.Length)] ^= (byte)(1 << random.Next(8));
                return (bytes, manifest);
            case "truncate":
                return (bytes[..random.Next(bytes.Length)], manifest);
            case "extend":
                var tail = new byte[random.Next(1, 256)];
                random.NextBytes(tail);
                var at = random.Next(bytes.Length + 1);
                return ([.. bytes[..at], .. tail, .. bytes[at..]], manifest);
            case "huge-number":
                return (Encoding.UTF8.GetBytes(ReplaceValue(Encoding.UTF8.GetString(valid), random,
                    ["99999999999999999999999999", "-1", "-2147483649", "1e308", "-1e308", "9223372036854775807", "NaN", "\"Infinity\""])), manifest);
            case "wrong-manifest":
                return (bytes, manifests[random.Next(manifests.Length)]);
            case "deep-nesting":
                var depth = random.Next(17, 20_000);
                var nested = new string('[', depth) + new string(']', depth);
                return (Encoding.UTF8.GetBytes(ReplaceValue(Encoding.UTF8.GetString(valid), random, [nested, "{\"a\":" + nested + "}"])), manifest);
            default:
                return (Encoding.UTF8.GetBytes(ReplaceValue(Encoding.UTF8.GetString(valid), random,
                    ["null", "true", "{}", "[]", "\"\"", "0", "[null]", "{\"\":null}", "\"akka.tcp://x@y:1/z\"", "\"not a path\""])), manifest);
        }
    }

    /// <summary>Replaces the value after a random <c>":</c> (a field's value, up to the next delimiter) with one of <paramref name="values"/>.</summary>
    static string ReplaceValue(string json, Random random, string[] values)
    {
        var starts = new List<int>();
        for (var i = json.IndexOf("\":", StringComparison.Ordinal); i >= 0; i = json.IndexOf("\":", i + 2, StringComparison.Ordinal)) starts.Add(i + 2);
        if (starts.Count == 0) return values[random.Next(values.Length)];
        var start = starts[random.Next(starts.Count)];
        var end = start;
        if (end < json.Length && json[end] == '"')
        {
            for (end++; end < json.Length && json[end] != '"'; end++) if (json[end] == '\\') end++;
            end++;
        }
        else while (end < json.Length && json[end] is not (',' or '}' or ']')) end++;
        return json[..start] + values[random.Next(values.Length)] + json[Math.Min(end, json.Length)..];
    }
}
