using System.Text.Json;
using System.Text.Json.Nodes;

namespace FateLlm.Training.Evaluation.Harness;

/// <summary>
/// Results in lm-eval's schema (<c>results[task]["acc,none"]</c>, <c>"acc_stderr,none"</c>, <c>configs</c>,
/// <c>versions</c>, <c>n-shot</c>, <c>higher_is_better</c>, <c>n-samples</c>, <c>config</c>), so tools that read
/// lm-eval's output files read these; the filter is always lm-eval's <c>none</c>.
/// </summary>
public static class HarnessResults
{
    public static JsonObject Build(IReadOnlyList<TaskResult> results, JsonObject config, double seconds)
    {
        JsonObject PerTask(Func<TaskResult, JsonNode?> f) => new(results.Select(r => KeyValuePair.Create(r.Task.Task, f(r))));
        return new JsonObject
        {
            ["results"] = PerTask(r =>
            {
                var o = new JsonObject { ["alias"] = r.Task.Alias ?? r.Task.Task };
                foreach (var (name, v) in r.Metrics)
                {
                    o[$"{name},none"] = Number(v.Value);
                    o[$"{name}_stderr,none"] = v.StdErr is double se ? Number(se) : "N/A";
                }
                return o;
            }),
            ["group_subtasks"] = PerTask(_ => new JsonArray()),
            ["configs"] = PerTask(r => r.Task.Config.DeepClone()),
            ["versions"] = PerTask(r => r.Task.Version),
            ["n-shot"] = PerTask(r => r.NumFewshot),
            ["higher_is_better"] = PerTask(r => new JsonObject(r.Task.Metrics.Select(m => KeyValuePair.Create(m.Name, (JsonNode?)m.HigherIsBetter)))),
            ["n-samples"] = PerTask(r => new JsonObject { ["original"] = r.Original, ["effective"] = r.Effective }),
            ["config"] = config,
            ["date"] = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0,
            ["total_evaluation_time_seconds"] = seconds.ToString("F2", System.Globalization.CultureInfo.InvariantCulture),
        };
    }

    /// <summary>lm-eval writes NaN as the string "NaN"; JSON has no NaN.</summary>
    static JsonNode Number(double v) => double.IsFinite(v) ? JsonValue.Create(v) : JsonValue.Create(v.ToString(System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>lm-eval's samples_&lt;task&gt;.jsonl beside the results file.</summary>
    public static string WriteSamples(string folder, TaskResult r)
    {
        Directory.CreateDirectory(folder);
        var path = Path.Combine(folder, $"samples_{r.Task.Task}.jsonl");
        File.WriteAllLines(path, r.Samples.Select(s => s.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })));
        return path;
    }
}
