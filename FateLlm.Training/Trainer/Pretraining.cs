using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Trainer;

public sealed record PretrainResult(long Parameters, int Steps, long Tokens, double Seconds, double DevLoss, double DevPerplexity, int TrainExamples, int DevExamples);

/// <summary>
/// Trains a base model from scratch as a plain causal LM (every token is a target) on a public JSONL corpus
/// rendered with the same template the fine-tuning data uses, then saves it as a HF model folder.
/// </summary>
public static class Pretraining
{
    public static PretrainResult Run(string arch, string preset, string dataPath, string outDir, TrainOptions train, DataOptions data,
        int devExamples = 300, IProgress<TrainProgress>? progress = null)
    {
        var examples = InstructionData.ReadJsonl(dataPath, data);
        if (examples.Count <= devExamples) throw new DataFormatException($"{dataPath}: {examples.Count} examples, need more than the {devExamples} held out for dev perplexity");
        var tok = new ByteTokenizer();
        var config = ModelPresets.Create(arch, preset);
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
        var result = new LocalTrainer(model, train, ByteTokenizer.Pad).Train(trainSet, progress);
        var (devLoss, _) = Evaluator.Loss(model, dev, ByteTokenizer.Pad, 32);
        HfCheckpoint.Save(model, outDir);
        ByteTokenizer.Save(outDir);
        return new PretrainResult(config.ParameterCount(), result.Steps, result.Tokens, result.Elapsed.TotalSeconds, devLoss, Math.Exp(devLoss), trainSet.Count, dev.Count);
    }
}
