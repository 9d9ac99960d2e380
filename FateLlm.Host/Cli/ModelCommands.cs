using System.CommandLine;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

internal static class ModelCommands
{
    public static Command Build(Terminal t)
    {
        var arch = Opt("--arch", "gpt2 | llama", "llama");
        var preset = Opt("--preset", $"{string.Join(" | ", ModelPresets.Names)}", "tiny");
        var seed = Opt("--seed", "Initialisation seed", 42L);
        var outDir = Required<string>("--out", "Folder to write the HF-format model into");
        var init = new Command("init", "Create a randomly initialised, seeded model in HF format").With(p =>
        {
            var model = InitModel(p.GetValue(arch)!, p.GetValue(preset)!, p.GetValue(seed), p.GetValue(outDir)!);
            t.Out.WriteLine($"wrote {model.Config.ModelType} '{p.GetValue(preset)}' ({model.Config.ParameterCount():N0} parameters) to {p.GetValue(outDir)}");
        }, arch, preset, seed, outDir);
        var cmd = new Command("model", "Model folders");
        cmd.Subcommands.Add(init);
        return cmd;
    }

    public static CausalLm InitModel(string arch, string preset, long seed, string outDir)
    {
        if (arch is not ("gpt2" or "llama")) throw new UsageException($"--arch '{arch}' is not one of gpt2, llama");
        if (!ModelPresets.Names.Contains(preset)) throw new UsageException($"--preset '{preset}' is not one of {string.Join(", ", ModelPresets.Names)}");
        var config = ModelPresets.Create(arch, preset);
        var model = CausalLm.Create(config);
        model.InitializeWeights(seed);
        HfCheckpoint.Save(model, outDir);
        if (config.VocabSize == ByteTokenizer.VocabularySize) ByteTokenizer.Save(outDir);
        else TiktokenGpt2Tokenizer.Save(outDir);
        return model;
    }
}
