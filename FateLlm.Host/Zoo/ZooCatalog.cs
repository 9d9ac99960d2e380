using Akka.Configuration;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Models;
using FateLlm.Training.Zoo;

namespace FateLlm.Host.Zoo;

/// <summary>The zoo's recipes as <c>fate-llm.zoo</c> of reference.conf defines them (a config file may override them).</summary>
/// <param name="DevExamples">Public examples held out from pretraining for every model's dev perplexity.</param>
public sealed record ZooCatalog(string Root, string DemoBase, int DevExamples, IReadOnlyList<ZooRecipe> Recipes)
{
    public const string Path = "fate-llm.zoo";

    /// <summary>The zoo in a folder, with this catalog's settings.</summary>
    public ModelZoo Open(string root, string wordNetDictionary, Action<string> log) => new(System.IO.Path.GetFullPath(root), wordNetDictionary, log, DevExamples);

    public ZooRecipe this[string name] => Recipes.FirstOrDefault(r => r.Name == name)
        ?? throw new ArgumentException($"'{name}' is not a zoo model (known: {string.Join(", ", Recipes.Select(r => r.Name))})");

    /// <param name="overrides">A config whose <c>fate-llm.zoo</c> settings take precedence, or null.</param>
    public static ZooCatalog Load(Config? overrides = null, string origin = "reference.conf")
    {
        var config = (overrides is null ? FederationNode.Reference() : overrides.WithFallback(FederationNode.Reference())).GetConfig(Path);
        string Key(string key) => $"{origin}: {Path}.{key}";
        string Str(Config c, string prefix, string key) =>
            c.HasPath(key) && c.GetValue(key) is { } v && !v.IsObject() && !v.IsArray() ? v.GetString() : throw new FormatException($"{Key(prefix + key)} is required");
        int Int(Config c, string prefix, string key) =>
            int.TryParse(Str(c, prefix, key), System.Globalization.CultureInfo.InvariantCulture, out var v) && v > 0 ? v : throw new FormatException($"{Key(prefix + key)} = '{Str(c, prefix, key)}' is not a positive integer");
        double Num(Config c, string prefix, string key) =>
            double.TryParse(Str(c, prefix, key), System.Globalization.CultureInfo.InvariantCulture, out var v) && v >= 0 ? v : throw new FormatException($"{Key(prefix + key)} = '{Str(c, prefix, key)}' is not a number ≥ 0");
        var models = config.GetConfig("models") ?? throw new FormatException($"{Key("models")} is required");
        var recipes = models.Root.GetObject().Items.Keys.Order(StringComparer.Ordinal).Select(name =>
        {
            var m = models.GetConfig(name);
            var p = $"models.{name}.";
            var arch = Str(m, p, "arch");
            if (arch is not ("llama" or "gpt2")) throw new FormatException($"{Key(p + "arch")} = '{arch}' is not llama or gpt2");
            var kind = Str(m, p, "tokenizer.kind");
            if (kind is not ("byte" or "gpt2-bpe" or "sentencepiece-bpe")) throw new FormatException($"{Key(p + "tokenizer.kind")} = '{kind}' is not byte, gpt2-bpe or sentencepiece-bpe");
            var shape = new ModelShape(Int(m, p, "shape.hidden"), Int(m, p, "shape.layers"), Int(m, p, "shape.heads"), Int(m, p, "shape.kv-heads"),
                Int(m, p, "shape.intermediate"), Int(m, p, "shape.positions"));
            if (shape.Hidden % shape.Heads != 0 || shape.Heads % shape.KvHeads != 0)
                throw new FormatException($"{Key(p + "shape")}: hidden {shape.Hidden} must divide by heads {shape.Heads}, and heads by kv-heads {shape.KvHeads}");
            return new ZooRecipe(name, Str(m, p, "description"), arch, shape, new ZooTokenizer(kind, kind == "byte" ? 259 : Int(m, p, "tokenizer.vocab")),
                Int(m, p, "pretrain.steps"), Int(m, p, "pretrain.batch-size"), Num(m, p, "pretrain.learning-rate"), Num(m, p, "pretrain.warmup-ratio"),
                long.TryParse(Str(m, p, "pretrain.seed"), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var seed) ? seed : throw new FormatException($"{Key(p + "pretrain.seed")} is not an integer"));
        }).ToList();
        var catalog = new ZooCatalog(Str(config, "", "root"), Str(config, "", "demo-base"), Int(config, "", "dev-examples"), recipes);
        if (recipes.All(r => r.Name != catalog.DemoBase))
            throw new FormatException($"{Key("demo-base")} = '{catalog.DemoBase}' is not one of the models ({string.Join(", ", recipes.Select(r => r.Name))})");
        return catalog;
    }
}
