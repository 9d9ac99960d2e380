using System.Text.Json;

namespace FateLlm.Training.Federation;

/// <summary>
/// A small, non-IID, AdvertiseGen-style corpus (attributes → definition) for the demo and the federation specs:
/// each party gets one semantic domain, the test set covers all of them.
/// </summary>
public static class DemoCorpus
{
    public static readonly IReadOnlyDictionary<string, (string Word, string Gloss)[]> Domains = new Dictionary<string, (string, string)[]>
    {
        ["animal"] =
        [
            ("cat", "a small domesticated carnivorous mammal"), ("dog", "a domesticated carnivorous mammal kept as a pet"),
            ("horse", "a large hoofed mammal used for riding"), ("cow", "a mature female of domestic cattle"),
            ("owl", "a nocturnal bird of prey with large eyes"), ("fox", "a small wild carnivorous mammal with a bushy tail"),
            ("sheep", "a woolly mammal kept for its wool and meat"), ("duck", "a small wild or domesticated swimming bird"),
            ("wolf", "a wild carnivorous mammal that hunts in packs"), ("bee", "a social insect that makes honey"),
            ("goat", "a hardy mammal with horns kept for milk"), ("eagle", "a large bird of prey with a hooked beak"),
        ],
        ["artifact"] =
        [
            ("hammer", "a hand tool with a heavy head for driving nails"), ("saw", "a hand tool with a toothed blade for cutting wood"),
            ("knife", "a tool with a sharp blade for cutting"), ("chair", "a seat with a back for one person"),
            ("table", "a piece of furniture with a flat top on legs"), ("lamp", "a device that gives off light"),
            ("clock", "a device that measures and shows the time"), ("bottle", "a glass or plastic vessel with a narrow neck"),
            ("wheel", "a simple machine of a circular frame turning on an axle"), ("rope", "a strong line of twisted fibres"),
            ("ladder", "a structure of rungs for climbing up or down"), ("bucket", "a roughly cylindrical open vessel for carrying water"),
        ],
        ["food"] =
        [
            ("bread", "a food made from flour water and yeast and baked"), ("cheese", "a solid food made from the pressed curds of milk"),
            ("apple", "a round fruit with red or green skin"), ("rice", "the grains of a cereal grass used as food"),
            ("soup", "a liquid food made by boiling meat or vegetables"), ("honey", "a sweet yellow fluid made by bees"),
            ("butter", "a solid fat made by churning cream"), ("salt", "a white crystalline compound used to season food"),
            ("egg", "an oval reproductive body laid by a bird and eaten as food"), ("tea", "a drink made by steeping dried leaves in hot water"),
            ("pear", "a sweet juicy fruit narrow at the stalk"), ("cake", "a sweet baked food made of flour eggs and sugar"),
        ],
    };

    public static string Content(string word, string domain) => $"word#{word}*domain#{domain}";

    /// <summary>Writes train/dev JSONL per domain (for the parties) and one test set over all domains; returns their paths.</summary>
    public static (Dictionary<string, (string Train, string Dev)> Parties, string Test) Write(string folder, int repeats = 2)
    {
        Directory.CreateDirectory(folder);
        var parties = new Dictionary<string, (string, string)>();
        var test = new List<string>();
        foreach (var (domain, entries) in Domains)
        {
            string Line((string Word, string Gloss) e) => JsonSerializer.Serialize(new { content = Content(e.Word, domain), summary = e.Gloss });
            var train = Path.Combine(folder, $"{domain}-train.jsonl");
            var dev = Path.Combine(folder, $"{domain}-dev.jsonl");
            File.WriteAllLines(train, Enumerable.Repeat(entries, repeats).SelectMany(x => x).Select(Line));
            File.WriteAllLines(dev, entries.Take(4).Select(Line));
            test.AddRange(entries.Take(4).Select(Line));
            parties[domain] = (train, dev);
        }
        var testPath = Path.Combine(folder, "test.jsonl");
        File.WriteAllLines(testPath, test);
        return (parties, testPath);
    }
}
