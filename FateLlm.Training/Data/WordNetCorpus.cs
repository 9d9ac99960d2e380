using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FateLlm.Training.Data;

/// <summary>One WordNet synset: its words, part of speech, lexicographer file (semantic domain), definition and examples.</summary>
/// <param name="HypernymOffsets">The synsets this one is a kind or an instance of (WordNet's <c>@</c> and <c>@i</c> pointers), same part of speech.</param>
public sealed record Synset(string Offset, string Pos, string Domain, string[] Words, string Definition, string[] Examples, string[] HypernymOffsets)
{
    /// <summary>The first word of the first hypernym, once <see cref="WordNetCorpus.Read"/> has resolved it.</summary>
    public string? Kind { get; init; }

    /// <summary>noun.animal → "animal"</summary>
    public string ShortDomain => Domain[(Domain.IndexOf('.') + 1)..];

    /// <summary>
    /// The attributes, AdvertiseGen-style (key and value pairs). The hypernym is an attribute as a product's type is in
    /// AdvertiseGen: WordNet's definitions are mostly genus + differentia ("musk kangaroo" → "small kangaroo of …"), so
    /// the text reuses it. Each value follows a space, so a word tokenizes alike in the attributes and in the text
    /// (glued to a '#' as in AdvertiseGen's Chinese, a word-start BPE token could not be copied).
    /// </summary>
    public string Content => $"word: {Words[0]} | pos: {Pos} | domain: {ShortDomain}" + (Kind is null ? "" : $" | kind: {Kind}");
}

public sealed record WordNetSplitOptions
{
    public long Seed { get; init; } = 42;
    /// <summary>Party → lexicographer files; the default is non-IID by domain.</summary>
    public IReadOnlyDictionary<string, string[]> Parties { get; init; } = new Dictionary<string, string[]>
    {
        ["nature"] = ["noun.animal", "noun.plant"],
        ["things"] = ["noun.artifact", "noun.food"],
        ["actions"] = ["verb.motion", "verb.contact"],
    };
    public int TrainPerParty { get; init; } = 1500;
    public int DevPerParty { get; init; } = 100;
    public int TestPerParty { get; init; } = 100;
    /// <summary>Synsets of other domains for base pretraining (0 = all).</summary>
    public int PublicLimit { get; init; } = 20000;
    /// <summary>When set, pool the party domains and split them with Dirichlet(α) label skew instead of by domain.</summary>
    public double? DirichletAlpha { get; init; }
}

/// <summary>The synsets of a split: each party's (train, dev), the test set, the public corpus.</summary>
public sealed record WordNetPartition(IReadOnlyDictionary<string, (IReadOnlyList<Synset> Train, IReadOnlyList<Synset> Dev)> Parties,
    IReadOnlyList<Synset> Test, IReadOnlyList<Synset> Public);

public sealed record WordNetSplit(Dictionary<string, (string Train, string Dev)> Parties, string Test, string Public, IReadOnlyDictionary<string, int> Counts);

/// <summary>
/// Reads WordNet 3.0's <c>data.noun|verb|adj|adv</c> (Debian package wordnet-base) into AdvertiseGen-style examples:
/// content = <c>word: ox | pos: noun | domain: animal | kind: bovine</c>, summary = the definition.
/// </summary>
public static class WordNetCorpus
{
    public const string DefaultDictionary = "/usr/share/wordnet";

    // lexnames(5WN): lexicographer file numbers in data files → names.
    static readonly string[] LexNames =
    [
        "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
        "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
        "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
        "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
        "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception",
        "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
    ];

    static readonly Regex Quoted = new("\"([^\"]+)\"", RegexOptions.Compiled);
    static readonly Regex AdjMarker = new(@"\((a|p|ip)\)$", RegexOptions.Compiled);

    public static List<Synset> Read(string dictionary = DefaultDictionary)
    {
        var files = new[] { "noun", "verb", "adj", "adv" }.Select(p => Path.Combine(dictionary, "data." + p)).ToList();
        var missing = files.FirstOrDefault(f => !File.Exists(f));
        if (missing != null)
            throw new DataFormatException($"{missing}: WordNet dictionary not found (install it with `apt-get install wordnet-base`, or run build/setup.sh, or pass --dict DIR)");
        var synsets = files.SelectMany(ReadFile).ToList();
        // Offsets are byte positions within one part of speech's file: hypernyms resolve within it.
        var byOffset = synsets.GroupBy(s => (s.Pos, s.Offset)).ToDictionary(g => g.Key, g => g.First());
        return synsets.Select(s => s.HypernymOffsets.Length > 0 && byOffset.TryGetValue((s.Pos, s.HypernymOffsets[0]), out var h) ? s with { Kind = h.Words[0] } : s).ToList();
    }

    public static IEnumerable<Synset> ReadFile(string path)
    {
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (line.StartsWith("  ")) continue; // licence header
            if (string.IsNullOrWhiteSpace(line)) continue;
            yield return Parse(line, $"{path}:{lineNo}");
        }
    }

    public static Synset Parse(string line, string where)
    {
        var bar = line.IndexOf(" | ", StringComparison.Ordinal);
        if (bar < 0) throw new DataFormatException($"{where}: no gloss separator ' | '");
        var f = line[..bar].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (f.Length < 6 || f[0].Length != 8 || !f[0].All(char.IsAsciiDigit))
            throw new DataFormatException($"{where}: does not start with an 8-digit synset offset");
        if (!int.TryParse(f[1], out var lex) || lex < 0 || lex >= LexNames.Length)
            throw new DataFormatException($"{where}: lexicographer file number '{f[1]}' is not one of 00–{LexNames.Length - 1}");
        var pos = f[2] switch
        {
            "n" => "noun",
            "v" => "verb",
            "a" or "s" => "adj",
            "r" => "adv",
            _ => throw new DataFormatException($"{where}: synset type '{f[2]}' is not n, v, a, s or r"),
        };
        if (!int.TryParse(f[3], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var wordCount) || wordCount < 1 || f.Length < 4 + 2 * wordCount)
            throw new DataFormatException($"{where}: word count '{f[3]}' does not match the line");
        var words = Enumerable.Range(0, wordCount).Select(i => AdjMarker.Replace(f[4 + 2 * i], "").Replace('_', ' ')).ToArray();
        // p_cnt, then per pointer: symbol, target offset, target part of speech, source/target word numbers.
        var at = 4 + 2 * wordCount;
        var hypernyms = new List<string>();
        if (at < f.Length && int.TryParse(f[at], out var pointers) && at + 1 + 4 * pointers <= f.Length)
            for (int i = 0; i < pointers; i++)
                if (f[at + 1 + 4 * i] is "@" or "@i" && f[at + 3 + 4 * i] == f[2]) hypernyms.Add(f[at + 2 + 4 * i]);
        var gloss = line[(bar + 3)..].Trim();
        var examples = Quoted.Matches(gloss).Select(m => m.Groups[1].Value.Trim()).ToArray();
        var cut = gloss.IndexOf("; \"", StringComparison.Ordinal);
        var definition = (cut >= 0 ? gloss[..cut] : gloss).Trim().TrimEnd(';').Trim();
        if (definition.Length == 0) throw new DataFormatException($"{where}: empty definition");
        return new Synset(f[0], pos, LexNames[lex], words, definition, examples, [.. hypernyms]);
    }

    /// <summary>Writes party train/dev shards, one all-domain test set and the public corpus as JSONL.</summary>
    public static WordNetSplit Write(IReadOnlyList<Synset> synsets, string outDir, WordNetSplitOptions o)
    {
        Directory.CreateDirectory(outDir);
        var partition = Partition(synsets, o);
        var parties = new Dictionary<string, (string, string)>();
        var counts = new Dictionary<string, int>();
        foreach (var (party, (train, dev)) in partition.Parties)
        {
            var trainPath = Path.Combine(outDir, $"{party}-train.jsonl");
            var devPath = Path.Combine(outDir, $"{party}-dev.jsonl");
            WriteJsonl(trainPath, train);
            WriteJsonl(devPath, dev);
            parties[party] = (trainPath, devPath);
            counts[$"{party}-train"] = train.Count;
            counts[$"{party}-dev"] = dev.Count;
        }
        var testPath = Path.Combine(outDir, "test.jsonl");
        WriteJsonl(testPath, partition.Test);
        counts["test"] = partition.Test.Count;
        var publicPath = Path.Combine(outDir, "public.jsonl");
        WriteJsonl(publicPath, partition.Public);
        counts["public"] = partition.Public.Count;
        return new WordNetSplit(parties, testPath, publicPath, counts);
    }

    /// <summary>Which synsets go where: each party's train and dev, the all-domain test set, the public corpus.</summary>
    public static WordNetPartition Partition(IReadOnlyList<Synset> synsets, WordNetSplitOptions o)
    {
        var rng = new Random((int)o.Seed);
        var partyDomains = o.Parties.SelectMany(p => p.Value).ToHashSet();
        var pools = o.Parties.ToDictionary(p => p.Key, p => Shuffle(synsets.Where(s => p.Value.Contains(s.Domain) && Usable(s)).OrderBy(s => s.Pos).ThenBy(s => s.Offset).ToList(), rng));
        if (o.DirichletAlpha is double alpha) pools = DirichletSplit(pools.Values.SelectMany(x => x).ToList(), o.Parties.Keys.ToList(), alpha, rng);
        var parties = new Dictionary<string, (IReadOnlyList<Synset>, IReadOnlyList<Synset>)>();
        var test = new List<Synset>();
        foreach (var (party, pool) in pools)
        {
            var need = o.TestPerParty + o.DevPerParty;
            if (pool.Count <= need) throw new DataFormatException($"party '{party}': only {pool.Count} synsets in its domains, need more than {need}");
            test.AddRange(pool.Take(o.TestPerParty));
            parties[party] = (pool.Skip(need).Take(o.TrainPerParty).ToList(), pool.Skip(o.TestPerParty).Take(o.DevPerParty).ToList());
        }
        // Public corpus: other domains only, so the base model knows the task format but not the parties' domains.
        var pub = Shuffle(synsets.Where(s => !partyDomains.Contains(s.Domain) && Usable(s)).OrderBy(s => s.Pos).ThenBy(s => s.Offset).ToList(), rng);
        if (o.PublicLimit > 0) pub = pub.Take(o.PublicLimit).ToList();
        return new WordNetPartition(parties, test, pub);
    }

    /// <summary>Short glosses make a cleaner generation task; ordering before the shuffle makes the split reproducible.</summary>
    public static bool Usable(Synset s) => s.Definition.Length <= 120;

    static void WriteJsonl(string path, IEnumerable<Synset> items) =>
        File.WriteAllLines(path, items.Select(s => JsonSerializer.Serialize(new { content = s.Content, summary = s.Definition, domain = s.Domain })));

    static List<Synset> Shuffle(List<Synset> items, Random rng)
    {
        var a = items.ToArray();
        rng.Shuffle(a);
        return a.ToList();
    }

    /// <summary>Label-skewed split: for each domain, party shares drawn from Dirichlet(α) (small α = more skew).</summary>
    static Dictionary<string, List<Synset>> DirichletSplit(List<Synset> pool, List<string> parties, double alpha, Random rng)
    {
        var result = parties.ToDictionary(p => p, _ => new List<Synset>());
        foreach (var group in pool.GroupBy(s => s.Domain))
        {
            var g = parties.Select(_ => Gamma(alpha, rng)).ToArray();
            var total = g.Sum();
            var items = group.ToList();
            int start = 0;
            for (int i = 0; i < parties.Count; i++)
            {
                var take = i == parties.Count - 1 ? items.Count - start : (int)Math.Round(items.Count * g[i] / total);
                result[parties[i]].AddRange(items.Skip(start).Take(Math.Max(0, take)));
                start += take;
            }
        }
        foreach (var list in result.Values)
        {
            var a = list.ToArray();
            rng.Shuffle(a);
            list.Clear();
            list.AddRange(a);
        }
        return result;
    }

    /// <summary>Gamma(α, 1) by Marsaglia–Tsang (with the α &lt; 1 boost).</summary>
    static double Gamma(double alpha, Random rng)
    {
        if (alpha < 1) return Gamma(alpha + 1, rng) * Math.Pow(rng.NextDouble(), 1 / alpha);
        double d = alpha - 1.0 / 3, c = 1 / Math.Sqrt(9 * d);
        while (true)
        {
            double x, v;
            do
            {
                x = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
                v = 1 + c * x;
            } while (v <= 0);
            v = v * v * v;
            var u = rng.NextDouble();
            if (u < 1 - 0.0331 * x * x * x * x || Math.Log(u) < 0.5 * x * x + d * (1 - v + Math.Log(v))) return d * v;
        }
    }
}

/// <summary>
/// Preference pairs from WordNet for DPO (<c>fate-llm data wordnet --preferences</c>): the prompt is the synset's
/// attributes as the experiments prompt them, the chosen answer its gloss, the rejected one a hard negative — the gloss
/// of a sibling synset under the same hypernym, else of a homograph (another sense of the same word), else of a
/// synset of the same domain and part of speech. Per party a train and a dev file over its own synsets, and one test
/// file over the experiments' test synsets; seeded, so the same options give the same files.
/// </summary>
public static class WordNetPreferences
{
    public sealed record Written(IReadOnlyDictionary<string, (string Train, string Dev)> Parties, string Test, IReadOnlyDictionary<string, int> Negatives);

    public static Written Write(IReadOnlyList<Synset> synsets, string outDir, WordNetSplitOptions o)
    {
        Directory.CreateDirectory(outDir);
        var partition = WordNetCorpus.Partition(synsets, o);
        var usable = synsets.Where(WordNetCorpus.Usable).ToList();
        var siblings = usable.Where(s => s.HypernymOffsets.Length > 0).GroupBy(s => (s.Pos, s.HypernymOffsets[0])).ToDictionary(g => g.Key, g => g.ToList());
        var senses = usable.GroupBy(s => s.Words[0].ToLowerInvariant()).ToDictionary(g => g.Key, g => g.ToList());
        var domain = usable.GroupBy(s => (s.Domain, s.Pos)).ToDictionary(g => g.Key, g => g.ToList());
        var rng = new Random((int)o.Seed + 2);
        var negatives = new Dictionary<string, int> { ["sibling"] = 0, ["homograph"] = 0, ["domain"] = 0 };
        string Line(Synset s)
        {
            Synset? Pick(IEnumerable<Synset>? pool)
            {
                var others = pool?.Where(x => x.Definition != s.Definition).OrderBy(x => x.Pos).ThenBy(x => x.Offset).ToList();
                return others is { Count: > 0 } ? others[rng.Next(others.Count)] : null;
            }
            var (negative, kind) = Pick(s.HypernymOffsets.Length > 0 ? siblings.GetValueOrDefault((s.Pos, s.HypernymOffsets[0])) : null) is { } sib ? (sib, "sibling")
                : Pick(senses.GetValueOrDefault(s.Words[0].ToLowerInvariant())) is { } hom ? (hom, "homograph")
                : (Pick(domain[(s.Domain, s.Pos)]) ?? throw new DataFormatException($"synset {s.Offset} ({s.Words[0]}): no other gloss in {s.Domain} to reject"), "domain");
            negatives[kind]++;
            return JsonSerializer.Serialize(new { prompt = s.Content, chosen = s.Definition, rejected = negative.Definition, negative = kind, domain = s.Domain });
        }
        var parties = new Dictionary<string, (string, string)>();
        foreach (var (party, (train, dev)) in partition.Parties)
        {
            var trainPath = Path.Combine(outDir, $"{party}-prefs-train.jsonl");
            var devPath = Path.Combine(outDir, $"{party}-prefs-dev.jsonl");
            File.WriteAllLines(trainPath, train.Select(Line));
            File.WriteAllLines(devPath, dev.Select(Line));
            parties[party] = (trainPath, devPath);
        }
        var test = Path.Combine(outDir, "prefs-test.jsonl");
        File.WriteAllLines(test, partition.Test.Select(Line));
        return new Written(parties, test, negatives);
    }
}
