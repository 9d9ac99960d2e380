using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Inference;

/// <summary>A model answering prompts (the remote model of a model service, or a party's local model): the prompt
/// goes through the instruction template, the answer is decoded up to EOS.</summary>
public sealed class ServedModel : IDisposable
{
    public CausalLm Model { get; }
    public ITextTokenizer Tokenizer { get; }
    public string Directory { get; }
    public DataOptions Data { get; }

    ServedModel(CausalLm model, ITextTokenizer tok, string dir, DataOptions data) => (Model, Tokenizer, Directory, Data) = (model, tok, dir, data);

    public static ServedModel Open(string dir, DataOptions? data = null)
    {
        var model = HfCheckpoint.Load(dir);
        try { return new ServedModel(model, TokenizerLoader.Load(dir, model.Config), dir, data ?? new DataOptions()); }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public string[] Generate(IReadOnlyList<string> prompts, SamplingOptions o, int batchSize = 8)
    {
        var answers = new List<string>(prompts.Count);
        var pad = Tokenizer.PadId ?? Tokenizer.EosId ?? 0;
        foreach (var chunk in prompts.Chunk(Math.Max(1, batchSize)))
        {
            var ids = chunk.Select(p => (IReadOnlyList<int>)InstructionData.PromptIds(new Example(p, "", "prompt"), Tokenizer, Data)).ToList();
            answers.AddRange(TextGeneration.GenerateBatch(Model, ids, o, Tokenizer.EosId, pad).Select(x => Tokenizer.Decode(x).Trim()));
        }
        return [.. answers];
    }

    public void Dispose() => Model.Dispose();
}
