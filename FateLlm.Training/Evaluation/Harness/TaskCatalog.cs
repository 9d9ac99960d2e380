namespace FateLlm.Training.Evaluation.Harness;

/// <summary>
/// Finds tasks as lm-eval's <c>--tasks</c> and <c>--include_path</c> do: a name is a YAML file's path, a task's name,
/// or a tag naming several tasks; task folders are searched for <c>*.yaml</c> recursively.
/// </summary>
public sealed class TaskCatalog
{
    readonly Dictionary<string, string> _byName = new();
    readonly Dictionary<string, List<string>> _byTag = new();
    readonly List<string> _unreadable = new();

    public TaskCatalog(IEnumerable<string> folders)
    {
        foreach (var folder in folders.Where(Directory.Exists))
            foreach (var file in Directory.EnumerateFiles(folder, "*.yaml", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            {
                (string? Task, IReadOnlyList<string> Tags) peeked;
                try { peeked = TaskYaml.Peek(file); }
                catch (TaskConfigException e) { _unreadable.Add(e.Message); continue; }
                if (peeked.Task is not { } task) continue;
                if (_byName.TryGetValue(task, out var other) && other != file)
                    throw new TaskConfigException($"task '{task}' is defined twice: {other} and {file}");
                _byName[task] = file;
                foreach (var tag in peeked.Tags) (_byTag.TryGetValue(tag, out var l) ? l : _byTag[tag] = []).Add(file);
            }
    }

    public bool Knows(string name) => _byName.ContainsKey(name) || _byTag.ContainsKey(name) || IsFile(name);

    static bool IsFile(string name) => (name.EndsWith(".yaml") || name.EndsWith(".yml")) && File.Exists(name);

    public IReadOnlyList<TaskConfig> Resolve(IEnumerable<string> names, int defaultMaxGenToks)
    {
        var files = new List<string>();
        foreach (var name in names)
        {
            if (IsFile(name)) files.Add(Path.GetFullPath(name));
            else if (_byName.TryGetValue(name, out var file)) files.Add(file);
            else if (_byTag.TryGetValue(name, out var tagged)) files.AddRange(tagged);
            else
                throw new TaskConfigException($"task '{name}' is not a YAML file, a task or a tag in the task folders" +
                    (_byName.Count > 0 ? $" (tasks: {string.Join(", ", _byName.Keys.Order().Take(40))}{(_byName.Count > 40 ? ", …" : "")})" : " (no tasks found; pass --include-path DIR)") +
                    (_unreadable.Count > 0 ? $"; unreadable task files: {string.Join("; ", _unreadable)}" : ""));
        }
        return files.Distinct().Select(f => TaskYaml.Load(f, defaultMaxGenToks)).ToList();
    }
}

/// <summary>
/// Where a party's node finds the tasks a job names: task files it maps by name as it maps its datasets
/// (<c>--data wordnet_gloss=tasks/gloss.yaml</c>), folders of task YAMLs (<c>--task-path</c>), and the built-in
/// WordNet tasks, written into <see cref="BuiltInFolder"/> from the node's WordNet dictionary on first use.
/// </summary>
public sealed record TaskSources(IReadOnlyDictionary<string, string> Files, IReadOnlyList<string> Folders, string? BuiltInFolder, string WordNetDictionary)
{
    public IReadOnlyList<TaskConfig> Resolve(IReadOnlyList<string> names, int defaultMaxGenToks)
    {
        var fromFiles = names.Where(n => Files.TryGetValue(n, out var f) && (f.EndsWith(".yaml") || f.EndsWith(".yml"))).ToHashSet();
        IReadOnlyList<string> folders = BuiltInFolder is null ? Folders : [.. Folders, BuiltInFolder];
        var catalog = new TaskCatalog(folders);
        var rest = names.Where(n => !fromFiles.Contains(n)).ToList();
        if (BuiltInFolder is not null && rest.Any(n => !catalog.Knows(n) && n.StartsWith(WordNetTasks.Tag, StringComparison.Ordinal)))
        {
            WordNetTasks.Ensure(BuiltInFolder, WordNetDictionary);
            catalog = new TaskCatalog(folders);
        }
        var resolved = catalog.Resolve(rest, defaultMaxGenToks);
        // A mapped file is scored under the job's name for it, so each party's own file adds to one aggregate.
        return [.. names.Where(fromFiles.Contains).Select(n => TaskYaml.Load(Files[n], defaultMaxGenToks) with { Task = n }), .. resolved];
    }
}
