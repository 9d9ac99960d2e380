using System.CommandLine;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

internal static class AdapterCommands
{
    public static Command Build(Terminal t)
    {
        var adapter = Required<string>("--adapter", "Adapter folder");
        var model = new Option<string?>("--model") { Description = "Base model folder (default: the one the adapter records)" };
        var format = Opt("--format", "peft (adapter_config.json + adapter_model.safetensors) | merged (full HF checkpoint)", "peft");
        var outDir = Required<string>("--out", "Output folder");
        var export = new Command("export", "Write an adapter as a HF PEFT adapter or merged into a full HF checkpoint").With(p =>
        {
            var fmt = p.GetValue(format)!;
            if (fmt is not ("peft" or "merged")) throw new UsageException($"--format '{fmt}' is not one of peft, merged");
            var (m, cfg, basePath) = AdapterFolder.Load(p.GetValue(adapter)!, p.GetValue(model));
            using var _ = m;
            var outPath = p.GetValue(outDir)!;
            if (fmt == "peft")
            {
                AdapterFolder.Save(m, cfg, outPath, basePath);
                t.Out.WriteLine($"wrote PEFT adapter ({PeftConfig.MethodName(cfg.Method)}) to {outPath}");
                return;
            }
            if (cfg.Method == PeftMethod.PtuningV2)
                throw new UsageException("a P-Tuning v2 prefix cannot be merged into the weights; use --format peft");
            PeftModel.SaveMerged(m, outPath, basePath);
            t.Out.WriteLine($"wrote merged HF checkpoint to {outPath}");
        }, adapter, model, format, outDir);
        var cmd = new Command("adapter", "Adapters");
        cmd.Subcommands.Add(export);
        return cmd;
    }
}
