using System.Text.Json;
using FateLlm.Training.Data;

namespace FateLlm.Training.Evaluation.Harness;

/// <summary>
/// FateLlm's built-in likelihood tasks, made from WordNet as lm-eval task YAMLs with local JSONL data. The documents
/// are the experiments' own test synsets (few-shot examples from the parties' dev synsets), so a fine-tuned adapter is
/// scored on what it was never trained on:
/// <list type="bullet">
/// <item><c>wordnet_gloss</c>: the synset's attributes as the experiments prompt them; choose its definition among 4
/// (the others are definitions from the same domain and part of speech).</item>
/// <item><c>wordnet_word</c>: a definition; choose its word among 4 of the same domain.</item>
/// <item><c>wordnet_kind</c>: a word; choose its hypernym among 4 hypernyms found in the same domain.</item>
/// <item><c>wordnet_gloss_ppl</c>: word and byte perplexity and bits per byte of the held-out definitions.</item>
/// </list>
/// Each task also exists per domain (<c>wordnet_gloss_animal</c>, …; tag <c>wordnet_by_domain</c>) through an
/// <c>include</c> of the whole-set task; the whole-set tasks carry tag <c>wordnet</c>.
/// </summary>
public static class WordNetTasks
{
    public const string Tag = "wordnet", DomainTag = "wordnet_by_domain";

    static readonly (string Name, string Yaml)[] Tasks =
    [
        ("wordnet_gloss", """
            output_type: multiple_choice
            doc_to_text: "{{content}}"
            target_delimiter: "\n"
            doc_to_choice: gloss_choices
            doc_to_target: gloss_label
            """),
        ("wordnet_word", """
            output_type: multiple_choice
            doc_to_text: "definition: {{gloss}}\nword:"
            doc_to_choice: word_choices
            doc_to_target: word_label
            """),
        ("wordnet_kind", """
            output_type: multiple_choice
            doc_to_text: "word: {{word}} | pos: {{pos}} | domain: {{domain}} | kind:"
            doc_to_choice: kind_choices
            doc_to_target: kind_label
            """),
        ("wordnet_gloss_ppl", """
            output_type: loglikelihood_rolling
            doc_to_text: ""
            doc_to_target: "{{gloss}}"
            """),
    ];

    /// <summary>Writes the task YAMLs and their data under <paramref name="folder"/>; returns the task names.</summary>
    public static IReadOnlyList<string> Write(IReadOnlyList<Synset> synsets, string folder, WordNetSplitOptions o)
    {
        var partition = WordNetCorpus.Partition(synsets, o);
        var rng = new Random((int)o.Seed + 1);
        var byDomain = synsets.Where(WordNetCorpus.Usable).GroupBy(s => (s.Domain, s.Pos)).ToDictionary(g => g.Key, g => g.ToList());
        Dictionary<string, object?> Doc(Synset s)
        {
            var peers = byDomain[(s.Domain, s.Pos)];
            var (glosses, glossLabel) = Choices(s.Definition, peers.Select(p => p.Definition), rng);
            var (words, wordLabel) = Choices(s.Words[0], peers.Where(p => !p.Words.Contains(s.Words[0])).Select(p => p.Words[0]), rng);
            var (kinds, kindLabel) = s.Kind is null ? ([], -1) : Choices(s.Kind, peers.Select(p => p.Kind).OfType<string>(), rng);
            return new Dictionary<string, object?>
            {
                ["word"] = s.Words[0], ["pos"] = s.Pos, ["domain"] = s.ShortDomain, ["kind"] = s.Kind, ["content"] = s.Content, ["gloss"] = s.Definition,
                ["gloss_choices"] = glosses, ["gloss_label"] = glossLabel, ["word_choices"] = words, ["word_label"] = wordLabel,
                ["kind_choices"] = kinds, ["kind_label"] = kindLabel,
            };
        }
        var test = partition.Test.Select(s => (s, Doc(s))).ToList();
        var dev = partition.Parties.Values.SelectMany(p => p.Dev).Select(s => (s, Doc(s))).ToList();
        var data = Path.Combine(folder, "data");
        Directory.CreateDirectory(data);
        void Jsonl(string name, IEnumerable<(Synset S, Dictionary<string, object?> Doc)> docs, bool withKind) =>
            File.WriteAllLines(Path.Combine(data, name), docs.Where(d => !withKind || d.S.Kind is not null).Select(d => JsonSerializer.Serialize(d.Doc)));
        var names = new List<string>();
        var domains = test.Select(t => t.s.ShortDomain).Distinct().Order().ToList();
        // Two sets of data files: every synset, and those with a hypernym (the kind task's); the tasks share them.
        foreach (var (prefix, withKind) in new[] { ("", false), ("kind-", true) })
        {
            Jsonl($"{prefix}test.jsonl", test, withKind);
            Jsonl($"{prefix}dev.jsonl", dev, withKind);
            foreach (var domain in domains) Jsonl($"{prefix}test-{domain}.jsonl", test.Where(t => t.s.ShortDomain == domain), withKind);
        }
        foreach (var (task, body) in Tasks)
        {
            var prefix = task == "wordnet_kind" ? "kind-" : "";
            File.WriteAllText(Path.Combine(folder, task + ".yaml"), $"""
                # FateLlm's built-in WordNet task (made by `fate-llm data wordnet`); lm-eval's task format.
                task: {task}
                tag: [{Tag}]
                dataset_path: json
                dataset_kwargs:
                  data_files:
                    test: data/{prefix}test.jsonl
                    validation: data/{prefix}dev.jsonl
                test_split: test
                validation_split: validation
                fewshot_split: validation
                {body}
                metadata:
                  version: 1.0

                """);
            names.Add(task);
            foreach (var domain in domains)
            {
                File.WriteAllText(Path.Combine(folder, $"{task}_{domain}.yaml"), $"""
                    include: {task}.yaml
                    task: {task}_{domain}
                    tag: [{DomainTag}]
                    dataset_kwargs:
                      data_files:
                        test: data/{prefix}test-{domain}.jsonl
                        validation: data/{prefix}dev.jsonl

                    """);
                names.Add($"{task}_{domain}");
            }
        }
        return names;
    }

    /// <summary>
    /// The built-in tasks in <paramref name="folder"/>, written from <paramref name="dictionary"/> with the experiments'
    /// default split unless already there. Written beside it and moved in, so concurrent first uses never see half a folder.
    /// </summary>
    public static void Ensure(string folder, string dictionary)
    {
        if (File.Exists(Path.Combine(folder, "wordnet_gloss.yaml"))) return;
        var staging = $"{folder.TrimEnd(Path.DirectorySeparatorChar)}.{Guid.NewGuid():N}.tmp";
        Write(WordNetCorpus.Read(dictionary), staging, new WordNetSplitOptions());
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(folder))!);
        try { Directory.Move(staging, folder); }
        catch (IOException) when (File.Exists(Path.Combine(folder, "wordnet_gloss.yaml"))) { Directory.Delete(staging, recursive: true); }
    }

    /// <summary>The answer among three distinct distractors, at a random place.</summary>
    static (List<string> Choices, int Label) Choices(string answer, IEnumerable<string> candidates, Random rng)
    {
        var pool = candidates.Where(c => c != answer).Distinct().Order(StringComparer.Ordinal).ToArray();
        rng.Shuffle(pool);
        var choices = pool.Take(3).ToList();
        var label = rng.Next(choices.Count + 1);
        choices.Insert(label, answer);
        return (choices, label);
    }
}
