using FateLlm.Training.Data;
using FateLlm.Training.Metrics;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Evaluation;

public sealed record EvalOptions
{
    public int BatchSize { get; init; } = 16;
    public bool Generate { get; init; } = true;
    public SamplingOptions Sampling { get; init; } = new();
    /// <summary>Evaluate at most this many examples (0 = all).</summary>
    public int Limit { get; init; }
}

public sealed record EvalSample(string Location, string Prompt, string Reference, string Prediction);

public sealed record EvalReport(double Loss, double Perplexity, long Tokens, GenerationScores? Scores, IReadOnlyList<EvalSample> Samples);

public static class Evaluator
{
    public static EvalReport Run(CausalLm model, ITextTokenizer tok, IReadOnlyList<Example> examples, DataOptions data, EvalOptions o)
    {
        var items = o.Limit > 0 ? examples.Take(o.Limit).ToList() : examples.ToList();
        var pad = tok.PadId ?? tok.EosId ?? 0;
        var (loss, tokens) = Loss(model, items.Select(e => InstructionData.Tokenize(e, tok, data)).ToList(), pad, o.BatchSize);
        GenerationScores? scores = null;
        var samples = new List<EvalSample>();
        if (o.Generate)
        {
            foreach (var chunk in items.Chunk(o.BatchSize))
            {
                var prompts = chunk.Select(e => (IReadOnlyList<int>)InstructionData.PromptIds(e, tok, data)).ToList();
                var outs = TextGeneration.GenerateBatch(model, prompts, o.Sampling, tok.EosId, pad);
                for (int i = 0; i < chunk.Length; i++)
                    samples.Add(new EvalSample(chunk[i].Location, chunk[i].Prompt, chunk[i].Response, tok.Decode(outs[i]).Trim()));
            }
            scores = GenerationScores.Average(samples.Select(s => (s.Reference, s.Prediction)).ToList());
        }
        return new EvalReport(loss, Math.Exp(loss), tokens, scores, samples);
    }

    /// <summary>Token-weighted mean cross-entropy over the labelled (response) tokens.</summary>
    public static (double Loss, long Tokens) Loss(CausalLm model, IReadOnlyList<TokenizedExample> data, int padId, int batchSize)
    {
        var wasTraining = model.training;
        model.eval();
        double total = 0;
        long count = 0;
        using (no_grad())
        {
            foreach (var chunk in data.Chunk(batchSize))
            {
                using var scope = NewDisposeScope();
                using var batch = InstructionData.Collate(chunk, padId, model.parameters().First().device);
                var logits = Runtime.TorchErrors.Guard(() => $"loss of a batch of token ids {Runtime.TorchErrors.Shape(batch.InputIds)} (largest id {batch.InputIds.max().item<long>()}, vocabulary {model.Config.VocabSize})",
                    () => model.Forward(batch.InputIds));
                total += LanguageModelLoss.Shifted(logits, batch.Labels, nn.Reduction.Sum).item<float>();
                count += batch.Labels.narrow(1, 1, batch.Labels.shape[1] - 1).ne(InstructionData.IgnoreIndex).sum().item<long>();
            }
        }
        if (wasTraining) model.train();
        return (count > 0 ? total / count : double.NaN, count);
    }
}
