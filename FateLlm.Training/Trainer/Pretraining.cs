using System.Text;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Trainer;

/// <param name="DevPerplexity">Per token of the model's own tokenizer.</param>
/// <param name="DevPerplexityPerByte">Per UTF-8 byte of the same held-out text: comparable across tokenizers.</param>
public sealed record PretrainResult(long Parameters, int Steps, long Tokens, double Seconds, double DevLoss, double DevPerplexity, int TrainExamples, int DevExamples)
{
    public double DevPerplexityPerByte { get; init; }
}

/// <summary>
/// Trains a base model from scratch as a plain causal LM (every token is a target) on a public JSONL corpus
/// rendered with the same template the fine-tuning data uses, then saves it as a HF model folder with its tokenizer.
/// </summary>
public static class Pretraining
{
    /// <summary>A preset with FateLlm's byte tokenizer.</summary>
    public static PretrainResult Run(string arch, string preset, string dataPath, string outDir, TrainOptions train, DataOptions data,
        int devExamples = 300, IProgress<TrainProgress>? progress = null) =>
        Run(ModelPresets.Create(arch, preset), null, dataPath, outDir, train, data, devExamples, progress);

    /// <param name="tokenizerDir">A trained tokenizer's folder (copied into the model), or null for the byte tokenizer.</param>
    public static PretrainResult Run(ModelConfig config, string? tokenizerDir, string dataPath, string outDir, TrainOptions train, DataOptions data,
        int devExamples = 300, IProgress<TrainProgress>? progress = null)
    {
        var examples = InstructionData.ReadJsonl(dataPath, data);
        if (examples.Count <= devExamples) throw new DataFormatException($"{dataPath}: {examples.Count} examples, need more than the {devExamples} held out for dev perplexity");
        ITextTokenizer tok = tokenizerDir is null ? new ByteTokenizer() : TokenizerLoader.Load(tokenizerDir, config);
        if (tok.VocabSize > config.VocabSize)
            throw new ModelFormatException($"{tokenizerDir}: the tokenizer has {tok.VocabSize} ids, the model's vocab_size is {config.VocabSize}");
        var pad = tok.PadId ?? tok.EosId ?? 0; // padding is masked out of attention and labels: any id will do
        using var model = CausalLm.Create(config);
        model.InitializeWeights(train.Seed);
        PeftModel.Apply(model, new PeftConfig { Method = PeftMethod.Full });
        TokenizedExample AllLabelled(Example e)
        {
            var t = InstructionData.Tokenize(e, tok, data);
            return t with { Labels = t.InputIds.Select((id, i) => i == 0 ? InstructionData.IgnoreIndex : id).ToArray() };
        }
        var dev = examples.Take(devExamples).Select(AllLabelled).ToList();
        var trainSet = examples.Skip(devExamples).Select(AllLabelled).ToList();
        var result = new LocalTrainer(model, train, pad).Train(trainSet, progress);
        var (devLoss, devTokens) = Evaluator.Loss(model, dev, pad, 32);
        HfCheckpoint.Save(model, outDir);
        if (tokenizerDir is null) ByteTokenizer.Save(outDir);
        else TokenizerLoader.CopyFiles(tokenizerDir, outDir);
        var bytes = dev.Sum(d => TargetBytes(d, tok));
        return new PretrainResult(config.ParameterCount(), result.Steps, result.Tokens, result.Elapsed.TotalSeconds, devLoss, Math.Exp(devLoss), trainSet.Count, dev.Count)
        {
            DevPerplexityPerByte = Math.Exp(devLoss * devTokens / bytes),
        };
    }

    /// <summary>The UTF-8 bytes the labelled tokens of one example spell (a special token counts as one byte).</summary>
    static long TargetBytes(TokenizedExample e, ITextTokenizer tok)
    {
        var targets = e.Labels.Where(l => l != InstructionData.IgnoreIndex).ToList();
        var special = new[] { tok.BosId, tok.EosId, tok.PadId }.Where(i => i.HasValue).Select(i => i!.Value).ToHashSet();
        return Encoding.UTF8.GetByteCount(tok.Decode(targets.Where(t => !special.Contains(t)))) + targets.Count(special.Contains);
    }
}
