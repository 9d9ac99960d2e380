using TorchSharp;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.Dpo;

/// <summary>One preference: a prompt, the answer judged better and the one judged worse, and where it was read.</summary>
public sealed record PreferencePair(string Prompt, string Chosen, string Rejected, string Location);

public enum PreferenceLoss { Sigmoid, Ipo }

/// <param name="Beta">DPO's β: how far from the reference the policy may move for a given preference.</param>
/// <param name="LabelSmoothing">cDPO's ε: the share of preferences taken to be flipped (0: plain DPO; sigmoid loss only).</param>
public sealed record DpoOptions(double Beta, double LabelSmoothing, PreferenceLoss Loss, int Epochs, int BatchSize, double LearningRate, long Seed)
{
    public void Check()
    {
        if (!(Beta > 0) || !double.IsFinite(Beta)) throw new ArgumentException($"beta must be a positive number, got {Beta}");
        if (LabelSmoothing is < 0 or >= 0.5) throw new ArgumentException($"label-smoothing must be in [0, 0.5), got {LabelSmoothing}");
        if (Loss == PreferenceLoss.Ipo && LabelSmoothing > 0) throw new ArgumentException("label-smoothing applies to the sigmoid loss, not ipo");
        if (Epochs < 1 || BatchSize < 1 || !(LearningRate > 0)) throw new ArgumentException("epochs, batch size and learning rate must be positive");
    }

    /// <summary>IPO regresses on length-normalised log-probabilities (as TRL computes it); DPO on their sums.</summary>
    public bool Averaged => Loss == PreferenceLoss.Ipo;
}

/// <summary>Per pair: the loss, and the implicit rewards β·(log π − log π_ref) of the chosen and the rejected answer.</summary>
public sealed record DpoTerms(Tensor Losses, Tensor ChosenRewards, Tensor RejectedRewards);

/// <summary>What a round of preference training and a pass over preference pairs report.</summary>
/// <param name="Accuracy">Share of pairs whose implicit reward margin is positive.</param>
/// <param name="ChosenDrift">Mean change of the chosen answers' log-probability against the reference (rejected alike).</param>
public sealed record PreferenceReport(int Pairs, double Loss, double Accuracy, double Margin, double ChosenDrift, double RejectedDrift);

/// <param name="After">The training pairs against the same reference once trained.</param>
public sealed record DpoTrainResult(int Steps, double FirstLoss, double LastLoss, PreferenceReport After, double Seconds);

/// <summary>
/// Direct Preference Optimization (Rafailov et al. 2023) as pure functions over log-probabilities and models:
/// −log σ(β[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]), with cDPO's label smoothing and
/// IPO's squared loss (Azar et al. 2023) as options, written as TRL's <c>dpo_loss</c>. Log-probabilities are summed
/// over the response tokens only; the reference is computed once before training, so it needs no second model.
/// </summary>
public static class PreferenceOptimization
{
    public static DpoTerms Loss(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected, DpoOptions o)
    {
        var logits = policyChosen.sub(policyRejected).sub(referenceChosen.sub(referenceRejected));
        // Held: HeldScalars says why.
        using Scalar beta = o.Beta.ToScalar(), minusBeta = (-o.Beta).ToScalar(), ipoTarget = (1 / (2 * o.Beta)).ToScalar(),
            kept = (-(1 - o.LabelSmoothing)).ToScalar(), smoothing = o.LabelSmoothing.ToScalar();
        var losses = o.Loss switch
        {
            PreferenceLoss.Ipo => logits.sub(ipoTarget).pow(Models.HeldScalars.Two),
            _ => nn.functional.logsigmoid(logits.mul(beta)).mul(kept)
                .sub(nn.functional.logsigmoid(logits.mul(minusBeta)).mul(smoothing)),
        };
        return new DpoTerms(losses, policyChosen.sub(referenceChosen).mul(beta).detach(), policyRejected.sub(referenceRejected).mul(beta).detach());
    }

    /// <summary>Each row's log-probability of its labelled (response) tokens: summed, or averaged over them.</summary>
    public static Tensor SequenceLogProbs(Tensor logits, Tensor labels, bool average)
    {
        var shifted = labels.narrow(1, 1, labels.shape[1] - 1);
        var mask = shifted.ne(InstructionData.IgnoreIndex);
        var logp = logits.narrow(1, 0, logits.shape[1] - 1).to_type(ScalarType.Float32).log_softmax(-1)
            .gather(2, shifted.masked_fill(mask.logical_not(), 0).unsqueeze(2)).squeeze(2);
        var summed = logp.mul(mask).sum(1);
        return average ? summed.div(mask.sum(1).clamp_min(1)) : summed;
    }

    /// <summary>The chosen and the rejected answer of every pair tokenized as an instruction example (the prompt's labels ignored).</summary>
    public static (List<TokenizedExample> Chosen, List<TokenizedExample> Rejected) Tokenize(IReadOnlyList<PreferencePair> pairs, ITextTokenizer tok, DataOptions data) =>
        (pairs.Select(p => InstructionData.Tokenize(new Example(p.Prompt, p.Chosen, p.Location), tok, data)).ToList(),
         pairs.Select(p => InstructionData.Tokenize(new Example(p.Prompt, p.Rejected, p.Location), tok, data)).ToList());

    /// <summary>The model's log-probabilities of the given examples as it stands (no gradients), in batches.</summary>
    public static double[] LogProbs(CausalLm model, IReadOnlyList<TokenizedExample> items, int padId, int batchSize, bool average)
    {
        var wasTraining = model.training;
        model.eval();
        var result = new List<double>(items.Count);
        using (no_grad())
            foreach (var chunk in items.Chunk(Math.Max(1, batchSize)))
            {
                using var scope = NewDisposeScope();
                var batch = InstructionData.Collate(chunk, padId, model.parameters().First().device);
                result.AddRange(SequenceLogProbs(model.Forward(batch.InputIds), batch.Labels, average).data<float>().Select(x => (double)x));
            }
        if (wasTraining) model.train();
        return [.. result];
    }

    /// <summary>The reference's log-probabilities: the base (adapter disabled) or the model as it stands (the round's start).</summary>
    public static (double[] Chosen, double[] Rejected) Reference(CausalLm model, List<TokenizedExample> chosen, List<TokenizedExample> rejected, int padId, int batchSize,
        bool average, bool baseReference)
    {
        using var disabled = baseReference ? PeftModel.AdapterDisabled(model) : null;
        return (LogProbs(model, chosen, padId, batchSize, average), LogProbs(model, rejected, padId, batchSize, average));
    }

    /// <summary>Loss, preference accuracy, mean margin and log-probability drift of the model as it stands against a reference.</summary>
    public static PreferenceReport Report(CausalLm model, List<TokenizedExample> chosen, List<TokenizedExample> rejected, (double[] Chosen, double[] Rejected) reference,
        int padId, int batchSize, DpoOptions o)
    {
        var pc = LogProbs(model, chosen, padId, batchSize, o.Averaged);
        var pr = LogProbs(model, rejected, padId, batchSize, o.Averaged);
        using var scope = NewDisposeScope();
        var t = Loss(tensor(pc), tensor(pr), tensor(reference.Chosen), tensor(reference.Rejected), o);
        var margins = t.ChosenRewards.sub(t.RejectedRewards);
        return new PreferenceReport(pc.Length, t.Losses.mean().item<double>(), margins.gt(0).to_type(ScalarType.Float64).mean().item<double>(),
            margins.mean().item<double>(), pc.Zip(reference.Chosen).Average(x => x.First - x.Second), pr.Zip(reference.Rejected).Average(x => x.First - x.Second));
    }

    /// <summary>
    /// DPO on the model's trainable (LoRA) parameters through <see cref="AdapterSteps"/> (AdamW, seeded shuffles,
    /// gradient clipping, resumable checkpoints): each step runs the policy on the batch's chosen and rejected answers
    /// against the reference log-probabilities computed before the first step.
    /// </summary>
    public static DpoTrainResult Train(CausalLm model, ITextTokenizer tok, IReadOnlyList<PreferencePair> pairs, DataOptions data, DpoOptions o, bool baseReference,
        CancellationToken ct = default, AdapterStepsCheckpoints? checkpoints = null)
    {
        o.Check();
        if (!PeftModel.TrainableParameters(model).Any()) throw new InvalidOperationException("the model has no trainable parameters (attach LoRA first)");
        var sw = Stopwatch.StartNew();
        var pad = tok.PadId ?? tok.EosId ?? 0;
        var (chosen, rejected) = Tokenize(pairs, tok, data);
        var reference = Reference(model, chosen, rejected, pad, o.BatchSize, o.Averaged, baseReference);
        var device = model.parameters().First().device;
        var (steps, first, last) = AdapterSteps.Run(model, Enumerable.Range(0, pairs.Count).ToList(), o.Epochs, o.BatchSize, o.LearningRate, o.Seed, chunk =>
        {
            // Chosen and rejected in one forward pass: the same dropout stream and one graph.
            var batch = InstructionData.Collate([.. chunk.Select(i => chosen[i]), .. chunk.Select(i => rejected[i])], pad, device);
            var logps = SequenceLogProbs(model.Forward(batch.InputIds), batch.Labels, o.Averaged);
            var n = chunk.Length;
            var rc = tensor(chunk.Select(i => (float)reference.Chosen[i]).ToArray(), device: device);
            var rr = tensor(chunk.Select(i => (float)reference.Rejected[i]).ToArray(), device: device);
            return Loss(logps.narrow(0, 0, n), logps.narrow(0, n, n), rc, rr, o).Losses.mean();
        }, ct, checkpoints);
        return new DpoTrainResult(steps, first, last, Report(model, chosen, rejected, reference, pad, o.BatchSize, o), sw.Elapsed.TotalSeconds);
    }
}

/// <summary>Preference JSONL: one object per line with a prompt, a chosen and a rejected answer (column names configurable).</summary>
public static class PreferenceData
{
    public static List<PreferencePair> Read(string path, string promptColumn, string chosenColumn, string rejectedColumn)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: preference file not found");
        var pairs = new List<PreferencePair>();
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            if (text.Trim().Length == 0) continue;
            JsonObject o;
            try { o = JsonNode.Parse(text) as JsonObject ?? throw new DataFormatException($"{path}:{line}: not a JSON object"); }
            catch (JsonException e) { throw new DataFormatException($"{path}:{line}: not valid JSON ({e.Message})"); }
            string Column(string name) => o[name] is JsonValue v && v.TryGetValue<string>(out var s) && s.Trim().Length > 0
                ? s : throw new DataFormatException($"{path}:{line}: column '{name}' is missing or empty (columns: {string.Join(", ", o.Select(kv => kv.Key))})");
            var pair = new PreferencePair(Column(promptColumn), Column(chosenColumn), Column(rejectedColumn), $"{path}:{line}");
            if (pair.Chosen == pair.Rejected) throw new DataFormatException($"{path}:{line}: the chosen and the rejected answer are the same");
            pairs.Add(pair);
        }
        return pairs.Count > 0 ? pairs : throw new DataFormatException($"{path}: no preference pairs");
    }
}
