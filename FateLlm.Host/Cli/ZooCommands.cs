using System.CommandLine;
using FateLlm.Host.Zoo;
using FateLlm.Training.Data;
using FateLlm.Training.Zoo;
using Spectre.Console;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary><c>zoo build|list</c>: the base models pretrained here on the public WordNet corpus, cached.</summary>
internal static class ZooCommands
{
    public static Command Build(Terminal t)
    {
        var catalog = ZooCatalog.Load();
        var outDir = Opt("--out", "Zoo folder (models, their tokenizers and the public corpus)", catalog.Root);
        var only = Opt("--only", $"Comma-separated models to build (default: all of {string.Join(", ", catalog.Recipes.Select(r => r.Name))})", "");
        var dict = Opt("--dict", "WordNet 3.0 dictionary folder", WordNetCorpus.DefaultDictionary);
        var config = Opt("--config", "A HOCON file whose fate-llm.zoo settings override the recipes of reference.conf", "");
        var runtime = new RuntimeOptionSet();
        var build = new Command("build", "Pretrain the zoo's models (fixed steps and seeds; a built model is reused)").With(p =>
        {
            runtime.Apply(p);
            var catalog = Catalog(p.GetValue(config)!);
            var zoo = catalog.Open(p.GetValue(outDir)!, p.GetValue(dict)!, line => t.Out.WriteLine(line));
            var names = p.GetValue(only)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var recipes = names.Length == 0 ? catalog.Recipes : names.Select(n => Known(catalog, n)).ToList();
            var cards = new List<ZooCard>();
            foreach (var r in recipes)
            {
                using var progress = TrainingProgress.Create(t, "pretrain " + r.Name);
                cards.Add(zoo.Ensure(r, progress));
            }
            Print(t, cards, zoo);
        }, [outDir, only, dict, config, .. runtime.All]);

        var listDir = Opt("--out", "Zoo folder", catalog.Root);
        var list = new Command("list", "The zoo's models: built ones with their cards, the others with their recipes").With(p =>
        {
            var root = Path.GetFullPath(p.GetValue(listDir)!);
            var table = new Table().AddColumns("model", "arch", "blocks", "tokenizer", "parameters", "steps", "built", "dev ppl/token", "dev ppl/byte", "minutes");
            foreach (var r in catalog.Recipes)
            {
                var card = ModelZoo.ReadCard(Path.Combine(root, r.Name));
                table.AddRow(r.Name, r.Arch, $"{r.Shape.Layers}", r.Tokenizer.Folder, card is null ? "-" : $"{card.Parameters:N0}", $"{r.Steps}",
                    card is null ? "no" : card.Fingerprint == r.Fingerprint ? "yes" : "stale", card is null ? "-" : $"{card.DevPerplexityPerToken:F2}",
                    card is null ? "-" : $"{card.DevPerplexityPerByte:F3}", card is null ? "-" : $"{card.WallSeconds / 60:F1}");
            }
            t.Ansi.Write(table);
        }, listDir);

        var cmd = new Command("zoo", "Base models pretrained here on the public WordNet corpus (server LLM, small GPT-2 and LLaMA clients, the demo base)");
        cmd.Subcommands.Add(build);
        cmd.Subcommands.Add(list);
        return cmd;
    }

    /// <summary>The recipes, with a config file's overrides (its errors name the file and key).</summary>
    internal static ZooCatalog Catalog(string configFile)
    {
        if (configFile.Length == 0) return ZooCatalog.Load();
        if (!File.Exists(configFile)) throw new UsageException($"--config {configFile}: file not found");
        var text = File.ReadAllText(configFile);
        try
        {
            FateLlm.Actors.Configuration.HoconSyntax.Check(text, configFile);
            return ZooCatalog.Load(Akka.Configuration.ConfigurationFactory.ParseString(text), configFile);
        }
        catch (Exception e) when (e is FateLlm.Actors.Configuration.HoconSyntaxException or FormatException) { throw new UsageException(e.Message); }
    }

    static ZooRecipe Known(ZooCatalog catalog, string name)
    {
        try { return catalog[name]; }
        catch (ArgumentException e) { throw new UsageException($"--only: {e.Message}"); }
    }

    static void Print(Terminal t, List<ZooCard> cards, ModelZoo zoo)
    {
        var table = new Table().Title($"model zoo in {zoo.Root}").AddColumns("model", "arch", "blocks", "tokenizer", "vocab", "parameters", "steps", "dev ppl/token", "dev ppl/byte", "pretrain min");
        foreach (var c in cards)
            table.AddRow(c.Name, c.Arch, $"{c.Layers}", c.Tokenizer, $"{c.Vocab:N0}", $"{c.Parameters:N0}", $"{c.Steps}", $"{c.DevPerplexityPerToken:F2}", $"{c.DevPerplexityPerByte:F3}", $"{c.WallSeconds / 60:F1}");
        t.Ansi.Write(table);
    }
}
