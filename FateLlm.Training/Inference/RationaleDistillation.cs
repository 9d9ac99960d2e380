using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Inference;

/// <summary>A private training example with the rationale a remote model gave for its (perturbed) prompt.</summary>
public sealed record RationaleExample(string Prompt, string Answer, string Rationale);

/// <summary>PDSS's multi-task training: the rationale task's prompt is <see cref="RationaleTemplate"/> around the prompt.</summary>
public sealed record RationaleOptions
{
    public double Alpha { get; init; } = 0.5;
    public int Epochs { get; init; } = 1;
    public int BatchSize { get; init; } = 8;
    public double LearningRate { get; init; } = 5e-3;
    public long Seed { get; init; }
    public string RationaleTemplate { get; init; } = "{prompt}\nrationale:";

    public void Check()
    {
        if (!(Alpha is >= 0 and <= 1)) throw new ArgumentException($"alpha = {Alpha} must be in [0, 1] (α·CE(rationale) + (1−α)·CE(answer))");
        if (Epochs < 1 || BatchSize < 1 || !(LearningRate > 0)) throw new ArgumentException("epochs, batch size and learning rate must be positive");
        if (!RationaleTemplate.Contains("{prompt}")) throw new ArgumentException("the rationale template must contain {prompt}");
    }
}

public sealed record RationaleTrainResult(int Steps, double FirstLoss, double LastLoss, int Examples, double Seconds);

/// <summary>
/// PDSS / FedCoT (arXiv 2406.12403): the small model learns the task and the remote model's rationales at once,
/// L = α·CE(rationale | rationale prompt) + (1−α)·CE(answer | prompt), each mean over its response tokens, on the
/// same batch of examples. The answer task uses the job's own template, so evaluation and serving are unchanged; the
/// rationale task only shapes the model during training. Examples without a rationale contribute the answer term.
/// </summary>
public static class RationaleDistillation
{
    public static RationaleTrainResult Train(CausalLm model, ITextTokenizer tok, IReadOnlyList<RationaleExample> data, DataOptions d, RationaleOptions o, CancellationToken ct = default,
        AdapterStepsCheckpoints? checkpoints = null)
    {
        o.Check();
        var sw = Stopwatch.StartNew();
        var answer = data.Select(e => InstructionData.Tokenize(new Example(e.Prompt, e.Answer, "answer"), tok, d)).ToList();
        var rationaleData = d with { Template = o.RationaleTemplate };
        var rationale = data.Select(e => e.Rationale.Trim().Length == 0 ? null : InstructionData.Tokenize(new Example(e.Prompt, e.Rationale, "rationale"), tok, rationaleData)).ToList();
        if (!PeftModel.TrainableParameters(model).Any()) throw new InvalidOperationException("the model has no trainable parameters (attach LoRA first)");
        var pad = tok.PadId ?? tok.EosId ?? 0;
        var (steps, first, last) = AdapterSteps.Run(model, Enumerable.Range(0, data.Count).ToList(), o.Epochs, o.BatchSize, o.LearningRate, o.Seed, chunk =>
        {
            var loss = Ce(model, chunk.Select(i => answer[i]).ToList(), pad).mul(1 - o.Alpha);
            var withRationale = chunk.Where(i => rationale[i] is not null).Select(i => rationale[i]!).ToList();
            return withRationale.Count > 0 && o.Alpha > 0 ? loss.add(Ce(model, withRationale, pad).mul(o.Alpha)) : loss;
        }, ct, checkpoints);
        return new RationaleTrainResult(steps, first, last, data.Count, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Mean CE over the response tokens; the batch's tensors belong to the caller's dispose scope (backward still needs them).</summary>
    static Tensor Ce(CausalLm model, IReadOnlyList<TokenizedExample> items, int pad)
    {
        var batch = InstructionData.Collate(items, pad, model.parameters().First().device);
        return LanguageModelLoss.Shifted(model.Forward(batch.InputIds), batch.Labels, nn.Reduction.Mean);
    }
}

/// <summary>A party's training JSONL with a rationale column beside the prompt and response (what `fate-llm pdss rationales` writes).</summary>
public static class RationaleData
{
    public static List<RationaleExample> Read(string path, DataOptions d, string column)
    {
        var examples = InstructionData.ReadJsonl(path, d);
        var rationales = InstructionData.ReadJsonl(path, d with { ResponseColumn = column });
        return [.. examples.Zip(rationales, (e, r) => new RationaleExample(e.Prompt, e.Response, r.Response))];
    }

    /// <summary>Each non-empty line of <paramref name="input"/> with <paramref name="column"/> set to its rationale, in order.</summary>
    public static void Write(string input, string output, string column, IReadOnlyList<string> rationales)
    {
        var lines = File.ReadLines(input).Where(l => !string.IsNullOrWhiteSpace(l)).ToList();
        if (lines.Count != rationales.Count) throw new ArgumentException($"{input}: {lines.Count} examples but {rationales.Count} rationales");
        File.WriteAllLines(output, lines.Select((l, i) =>
        {
            var o = System.Text.Json.Nodes.JsonNode.Parse(l)!.AsObject();
            o[column] = rationales[i];
            return o.ToJsonString();
        }));
    }
}
