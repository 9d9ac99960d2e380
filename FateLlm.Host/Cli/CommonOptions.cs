using System.CommandLine;
using TorchSharp;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>Option groups shared by several commands, and how their values become library settings.</summary>
internal sealed class DataOptionSet
{
    // The job defaults of reference.conf: local commands read data exactly as a federated job would.
    static readonly Akka.Configuration.Config D = FateLlm.Actors.Jobs.JobFile.Defaults;
    public readonly Option<string> PromptColumn = Opt("--prompt-column", "JSONL field holding the prompt", D.GetString("data.prompt-column"));
    public readonly Option<string> ResponseColumn = Opt("--response-column", "JSONL field holding the response", D.GetString("data.response-column"));
    public readonly Option<string> Template = Opt("--template", "Prompt template; {prompt} is replaced by the prompt field", FateLlm.Actors.Jobs.JobFile.ExactString(D, "data.template"));
    public readonly Option<int> MaxPromptLen = Opt("--max-prompt-len", "Max prompt tokens", D.GetInt("data.max-prompt-tokens"));
    public readonly Option<int> MaxResponseLen = Opt("--max-response-len", "Max response tokens", D.GetInt("data.max-response-tokens"));
    public readonly Option<int> MaxLen = Opt("--max-len", "Max tokens per example (bos + prompt + response + eos)", D.GetInt("data.max-tokens"));

    public Option[] All => [PromptColumn, ResponseColumn, Template, MaxPromptLen, MaxResponseLen, MaxLen];

    public DataOptions Read(ParseResult p)
    {
        var o = new DataOptions
        {
            PromptColumn = p.GetValue(PromptColumn)!, ResponseColumn = p.GetValue(ResponseColumn)!,
            Template = p.GetValue(Template)!, MaxPromptTokens = p.GetValue(MaxPromptLen),
            MaxResponseTokens = p.GetValue(MaxResponseLen), MaxTotalTokens = p.GetValue(MaxLen),
        };
        if (!o.Template.Contains("{prompt}")) throw new UsageException("--template must contain {prompt}");
        if (o.MaxPromptTokens < 1 || o.MaxResponseTokens < 1 || o.MaxTotalTokens < 3)
            throw new UsageException("--max-prompt-len and --max-response-len must be ≥ 1, --max-len ≥ 3");
        return o;
    }
}

internal sealed class SamplingOptionSet
{
    public readonly Option<int> MaxNewTokens = Opt("--max-new-tokens", "Tokens to generate at most", 64);
    public readonly Option<double> Temperature = Opt("--temperature", "Sampling temperature; 0 = greedy", 0.0);
    public readonly Option<int> TopK = Opt("--top-k", "Keep the k most likely tokens (0 = off)", 0);
    public readonly Option<double> TopP = Opt("--top-p", "Nucleus sampling mass (1 = off)", 1.0);
    public readonly Option<long> Seed = Opt("--sample-seed", "Sampling seed", 0L);

    public Option[] All => [MaxNewTokens, Temperature, TopK, TopP, Seed];

    public SamplingOptions Read(ParseResult p)
    {
        var o = new SamplingOptions
        {
            MaxNewTokens = p.GetValue(MaxNewTokens), Temperature = p.GetValue(Temperature), TopK = p.GetValue(TopK),
            TopP = p.GetValue(TopP), Seed = p.GetValue(Seed),
        };
        if (o.MaxNewTokens < 0) throw new UsageException("--max-new-tokens must be ≥ 0");
        if (o.Temperature < 0) throw new UsageException("--temperature must be ≥ 0");
        if (o.TopP is <= 0 or > 1) throw new UsageException("--top-p must be in (0, 1]");
        if (o.TopK < 0) throw new UsageException("--top-k must be ≥ 0");
        return o;
    }
}

internal sealed class RuntimeOptionSet
{
    public readonly Option<int> Threads = Opt("--threads", "Torch intra-op threads (0 = all cores)", 0);
    public readonly Option<string> Device = Opt("--device", "cpu | cuda | auto", "cpu");

    public Option[] All => [Threads, Device];

    public TorchSharp.torch.Device Apply(ParseResult p)
    {
        var t = p.GetValue(Threads);
        if (t < 0) throw new UsageException("--threads must be ≥ 0");
        TorchRuntime.SetThreads(t);
        return TorchRuntime.ResolveDevice(p.GetValue(Device)!);
    }
}

/// <summary>A model ready for use: base weights, optional adapter, and the tokenizer of the base folder.</summary>
/// <param name="Data">The data layout an adapter recorded (its prompt template), if any.</param>
internal sealed record LoadedModel(CausalLm Model, ITextTokenizer Tokenizer, PeftConfig? Peft, string BaseFolder, DataOptions? Data) : IDisposable
{
    public void Dispose() => Model.Dispose();

    public static LoadedModel Open(string? modelDir, string? adapterDir, TorchSharp.torch.Device device)
    {
        if (modelDir is null && adapterDir is null) throw new UsageException("give --model DIR, --adapter DIR, or both");
        CausalLm model;
        PeftConfig? peft = null;
        string baseDir;
        if (adapterDir != null)
        {
            if (!Directory.Exists(adapterDir)) throw new ModelFormatException($"{adapterDir}: adapter folder not found");
            (model, peft, baseDir) = AdapterFolder.Load(adapterDir, modelDir);
        }
        else
        {
            baseDir = modelDir!;
            model = HfCheckpoint.Load(baseDir);
        }
        model.to(device);
        model.eval();
        var tok = TokenizerLoader.Load(baseDir, model.Config);
        return new LoadedModel(model, tok, peft, baseDir, adapterDir is null ? null : AdapterFolder.ReadDataOptions(adapterDir));
    }
}
