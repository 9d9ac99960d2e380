using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Evaluation.Harness;

/// <summary>A task's documents of one split, each with where it was read (file:line) for errors.</summary>
public sealed record TaskDocument(JsonObject Fields, string Location);

/// <summary>
/// A task's documents and lm-eval's document functions over them: <c>doc_to_text</c>, <c>doc_to_target</c> and
/// <c>doc_to_choice</c> read a column when the value names one, otherwise render it as Jinja (lm-eval's environment);
/// a rendered target of digits is a choice index and a rendered choice list is a Python list literal, as lm-eval's
/// <c>ast.literal_eval</c> reads them.
/// </summary>
public sealed class TaskDocuments
{
    readonly TaskConfig _task;
    readonly Dictionary<string, List<TaskDocument>> _splits = new();
    readonly Dictionary<string, ChatTemplate> _templates = new();

    public TaskDocuments(TaskConfig task) => _task = task;

    public IReadOnlyList<TaskDocument> Split(string name)
    {
        if (_splits.TryGetValue(name, out var docs)) return docs;
        if (!_task.DataFiles.TryGetValue(name, out var files))
            throw new TaskConfigException($"{_task.Source}: task '{_task.Task}' reads split '{name}', which data_files does not name (it names {string.Join(", ", _task.DataFiles.Keys)})");
        docs = files.SelectMany(Read).ToList();
        _splits[name] = docs;
        return docs;
    }

    /// <summary>JSON Lines, or one JSON array of objects.</summary>
    public static IEnumerable<TaskDocument> Read(string file)
    {
        if (!File.Exists(file)) throw new TaskConfigException($"{file}: no such data file");
        var text = File.ReadAllText(file);
        if (text.TrimStart().StartsWith('['))
        {
            JsonArray array;
            try { array = JsonNode.Parse(text)!.AsArray(); }
            catch (JsonException e) { throw new TaskConfigException($"{file}:{e.LineNumber + 1}: not valid JSON: {e.Message}"); }
            return array.Select((n, i) => new TaskDocument(n as JsonObject ?? throw new TaskConfigException($"{file}: item {i}: a document must be a JSON object"), $"{file}#{i}")).ToList();
        }
        var docs = new List<TaskDocument>();
        var lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Trim().Length == 0) continue;
            try
            {
                docs.Add(new TaskDocument(JsonNode.Parse(lines[i]) as JsonObject ?? throw new TaskConfigException($"{file}:{i + 1}: a document must be a JSON object"), $"{file}:{i + 1}"));
            }
            catch (JsonException e) { throw new TaskConfigException($"{file}:{i + 1}: not valid JSON: {e.Message}"); }
        }
        return docs;
    }

    public string Text(TaskDocument doc) => _task.DocToText is null ? "" : Apply(_task.DocToText, doc, "doc_to_text") switch
    {
        string s => s,
        long when _task.DocToChoice is not null => throw Bad(doc, "doc_to_text", "gives a choice index (lm-eval's multiple-input tasks such as winogrande), which FateLlm does not run"),
        var other => Python(other),
    };

    /// <summary>A choice index, a string, or a list of either.</summary>
    public object Target(TaskDocument doc) => _task.DocToTarget is null
        ? throw Bad(doc, "doc_to_target", "missing") : Apply(_task.DocToTarget, doc, "doc_to_target") ?? throw Bad(doc, "doc_to_target", "is null");

    public IReadOnlyList<string> Choices(TaskDocument doc)
    {
        var value = _task.DocToChoice switch
        {
            null => throw Bad(doc, "doc_to_choice", "missing"),
            DocField.Template t when doc.Fields.ContainsKey(t.Source) => Column(doc, t.Source),
            DocField.Template t => ParseLiteral(Render(t.Source, doc, "doc_to_choice"), doc),
            DocField.Items items => items.Templates.Select(x => (object?)Render(x, doc, "doc_to_choice")).ToList(),
            _ => throw Bad(doc, "doc_to_choice", "must give a list of choices"),
        };
        return value is List<object?> list && list.Count > 0
            ? list.Select(Python).ToList() : throw Bad(doc, "doc_to_choice", $"gives {Python(value)}, not a non-empty list");
    }

    /// <summary>The indices of the correct choices.</summary>
    public IReadOnlyList<int> Gold(TaskDocument doc, IReadOnlyList<string> choices)
    {
        int Index(object? t) => t switch
        {
            long i when i >= 0 && i < choices.Count => (int)i,
            long i => throw Bad(doc, "doc_to_target", $"index {i} is outside the {choices.Count} choices"),
            string s when choices.Contains(s) => choices.ToList().IndexOf(s),
            _ => throw Bad(doc, "doc_to_target", $"{(t is string s ? $"'{s}'" : Python(t))} is not one of the choices {Python(choices.Select(c => (object?)c).ToList())}"),
        };
        return Target(doc) is List<object?> many ? many.Select(Index).ToList() : [Index(Target(doc))];
    }

    /// <summary>The target as text: for a few-shot example's answer, a rolling document, or a generation reference.</summary>
    public IReadOnlyList<string> TargetTexts(TaskDocument doc) => Target(doc) switch
    {
        List<object?> many => many.Select(Python).ToList(),
        long i when _task.DocToChoice is not null => [Choices(doc)[Gold(doc, Choices(doc))[0]]],
        var one => [Python(one)],
    };

    object? Apply(DocField field, TaskDocument doc, string key) => field switch
    {
        DocField.Number n => n.Value,
        DocField.Template t when doc.Fields.ContainsKey(t.Source) => Column(doc, t.Source),
        DocField.Template t => Rendered(Render(t.Source, doc, key), doc),
        DocField.Items items => items.Templates.Select(x => (object?)Render(x, doc, key)).ToList(),
        _ => throw Bad(doc, key, "unsupported"),
    };

    object? Rendered(string text, TaskDocument doc)
    {
        if (_task.DocToChoice is not null && text.Length > 0 && text.All(char.IsAsciiDigit)) return long.Parse(text, CultureInfo.InvariantCulture);
        if (text.Length >= 2 && text[0] == '[' && text[^1] == ']') return ParseLiteral(text, doc);
        return text;
    }

    /// <summary>A column's value as the Jinja templates see it (Python's types), so a column and <c>{{column}}</c> render alike.</summary>
    static object? Column(TaskDocument doc, string name) => Value.FromJson(doc.Fields[name]);

    string Render(string source, TaskDocument doc, string key)
    {
        try
        {
            if (!_templates.TryGetValue(source, out var template)) _templates[source] = template = new ChatTemplate(source, JinjaEnvironment.LmEval);
            return template.RenderDocument(doc.Fields);
        }
        catch (ChatTemplateException e) { throw Bad(doc, key, $"template {JsonSerializer.Serialize(source)}: {e.Message}"); }
    }

    TaskConfigException Bad(TaskDocument doc, string key, string message) => new($"{doc.Location}: task '{_task.Task}': {key} {message}");

    /// <summary>Python's str() of a value, as lm-eval would build text from it (the Jinja engine's own rendering).</summary>
    static string Python(object? v) => Value.Str(v);

    /// <summary>A Python list literal of strings and numbers (what a rendered <c>{{choices}}</c> gives).</summary>
    object ParseLiteral(string text, TaskDocument doc)
    {
        int pos = 0;
        void Skip() { while (pos < text.Length && char.IsWhiteSpace(text[pos])) pos++; }
        TaskConfigException Fail(string why) => Bad(doc, "doc_to_choice", $"{JsonSerializer.Serialize(text)} is not a Python list of strings or numbers ({why} at {pos})");
        object? Item()
        {
            Skip();
            if (pos >= text.Length) throw Fail("end");
            var c = text[pos];
            if (c is '\'' or '"')
            {
                var sb = new StringBuilder();
                for (pos++; pos < text.Length && text[pos] != c; pos++)
                {
                    if (text[pos] == '\\' && pos + 1 < text.Length)
                    {
                        pos++;
                        sb.Append(text[pos] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', var e => e });
                    }
                    else sb.Append(text[pos]);
                }
                if (pos >= text.Length) throw Fail("unclosed quote");
                pos++;
                return sb.ToString();
            }
            if (c == '[')
            {
                pos++;
                var list = new List<object?>();
                Skip();
                if (pos < text.Length && text[pos] == ']') { pos++; return list; }
                while (true)
                {
                    list.Add(Item());
                    Skip();
                    if (pos < text.Length && text[pos] == ',') { pos++; Skip(); if (pos < text.Length && text[pos] == ']') { pos++; return list; } continue; }
                    if (pos < text.Length && text[pos] == ']') { pos++; return list; }
                    throw Fail("expected , or ]");
                }
            }
            var start = pos;
            while (pos < text.Length && (char.IsAsciiLetterOrDigit(text[pos]) || text[pos] is '-' or '+' or '.')) pos++;
            var word = text[start..pos];
            if (long.TryParse(word, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l)) return l;
            if (double.TryParse(word, NumberStyles.Float, CultureInfo.InvariantCulture, out var d)) return d;
            return word switch { "True" => true, "False" => false, "None" => null, _ => throw Fail($"unexpected '{word}'") };
        }
        var value = Item();
        Skip();
        return pos == text.Length ? value! : throw Fail("trailing text");
    }
}
