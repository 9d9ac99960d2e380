using TorchSharp;
using System.Collections.Concurrent;
using System.Diagnostics;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.Mkt;

/// <summary>A teacher's distribution for one response token, in the receiver's vocabulary (sparse, sums to 1).</summary>
public sealed record TokenTarget(long[] Ids, float[] Probabilities);

/// <param name="Teacher">Per response token of the receiver's tokenization, the target (aligned logits, or a one-hot on the true next token).</param>
public sealed record ExampleTarget(float Metric, TokenTarget[] Teacher, int Aligned);

public sealed record TransferOptions(double Alpha, double Temperature, int Epochs, int BatchSize, double LearningRate, long Seed);

public sealed record TransferResult(int Steps, double FirstLoss, double LastLoss, int Distilled, int Examples, double Seconds);

/// <summary>
/// FedMKT's knowledge transfer as pure functions over models and logit blocks: computing a model's top-k logits on the
/// public set, aligning another model's block into a receiver's vocabulary and tokenization, choosing per example the
/// teacher of lowest cross-entropy (Min-CE), and training with α·CE + (1−α)·KD, KD = −Σ q·log softmax(z/T) averaged
/// over response tokens.
/// </summary>
public static class KnowledgeTransfer
{
    sealed record Encoded(TokenizedExample Example, int PromptLength, int[] Response);

    static Encoded Encode(Example e, ITextTokenizer tok, DataOptions data)
    {
        var t = InstructionData.Tokenize(e, tok, data);
        var prompt = t.Labels.TakeWhile(l => l == InstructionData.IgnoreIndex).Count();
        return new Encoded(t, prompt, t.InputIds[prompt..]);
    }

    /// <summary>Where each response token starts in the decoded response (special tokens add no text).</summary>
    static (string Text, int[] Starts) Starts(ITextTokenizer tok, int[] response)
    {
        var starts = new int[response.Length];
        for (int t = 1; t < response.Length; t++) starts[t] = tok.Decode(response.Take(t)).Length;
        return (tok.Decode(response), starts);
    }

    /// <summary>The model's top-k logits and mean response cross-entropy on every public example.</summary>
    public static PublicLogits Compute(CausalLm model, ITextTokenizer tok, TokenVocabulary vocab, IReadOnlyList<Example> publicSet, DataOptions data, int k)
    {
        model.eval();
        k = Math.Min(k, model.Config.VocabSize);
        var examples = new List<ExampleLogits>(publicSet.Count);
        var used = new SortedSet<int>();
        using var _ = no_grad();
        foreach (var e in publicSet)
        {
            using var scope = NewDisposeScope();
            var enc = Encode(e, tok, data);
            var m = enc.Response.Length;
            var (text, starts) = Starts(tok, enc.Response);
            if (m == 0 || enc.PromptLength == 0) { examples.Add(new ExampleLogits(0, text, [], [], [])); continue; }
            var ids = tensor(enc.Example.InputIds.Select(i => (long)i).ToArray(), [1, enc.Example.InputIds.Length]);
            // Position p predicts token p+1: the response's m tokens are predicted at prompt−1 … prompt+m−2.
            var logits = model.Forward(ids)[0].narrow(0, enc.PromptLength - 1, m).to_type(ScalarType.Float32);
            var targets = tensor(enc.Response.Select(i => (long)i).ToArray());
            var metric = nn.functional.cross_entropy(logits, targets).item<float>();
            var (values, top) = logits.topk(k, dim: -1);
            var topIds = top.to_type(ScalarType.Int32).data<int>().ToArray();
            foreach (var id in topIds) used.Add(id);
            examples.Add(new ExampleLogits(metric, text, starts, topIds, values.data<float>().ToArray().Select(v => (Half)v).ToArray()));
        }
        return new PublicLogits(model.Config.VocabSize, k, used.ToDictionary(id => id, id => vocab.Surfaces[id]), examples);
    }

    /// <summary>
    /// A sender's block as targets for the receiver: positions matched by character offsets (the token predicted starts
    /// at the same character), the sender's top-k mapped into the receiver's vocabulary by surface (nearest by edit
    /// distance where none is equal), probabilities of ids that map together summed; unmatched positions get a
    /// one-hot on the receiver's own next token.
    /// </summary>
    public static List<ExampleTarget> Align(PublicLogits sender, ITextTokenizer tok, TokenVocabulary receiver, IReadOnlyList<Example> publicSet,
        DataOptions data, double temperature)
    {
        if (sender.Examples.Count != publicSet.Count)
            throw new FormatException($"a logit block of {sender.Examples.Count} examples for a public set of {publicSet.Count}");
        var idMap = MapIds(sender.Surfaces, receiver);
        var result = new List<ExampleTarget>(publicSet.Count);
        for (int x = 0; x < publicSet.Count; x++)
        {
            var enc = Encode(publicSet[x], tok, data);
            var own = Starts(tok, enc.Response);
            var s = sender.Examples[x];
            var matched = TokenAlignment.Positions((s.Text, s.Starts), own);
            var teacher = new TokenTarget[enc.Response.Length];
            var aligned = 0;
            for (int t = 0; t < teacher.Length; t++)
            {
                var j = matched[t];
                if (j < 0) { teacher[t] = new TokenTarget([enc.Response[t]], [1f]); continue; }
                aligned++;
                var logits = Enumerable.Range(0, sender.K).Select(i => (double)s.Values[j * sender.K + i] / temperature).ToArray();
                var max = logits.Max();
                var weights = logits.Select(v => Math.Exp(v - max)).ToArray();
                var z = weights.Sum();
                var probabilities = new Dictionary<long, double>();
                for (int i = 0; i < sender.K; i++)
                {
                    var id = idMap[s.Ids[j * sender.K + i]];
                    probabilities[id] = probabilities.GetValueOrDefault(id) + weights[i] / z;
                }
                teacher[t] = new TokenTarget(probabilities.Keys.ToArray(), probabilities.Values.Select(p => (float)p).ToArray());
            }
            // A sender that had no response tokens for this example (truncation) is no teacher for it.
            result.Add(new ExampleTarget(s.Tokens == 0 ? float.PositiveInfinity : s.Metric, teacher, aligned));
        }
        return result;
    }

    /// <summary>Surface → receiver id, per receiver vocabulary (by digest): the nearest-surface search runs once per surface for the process.</summary>
    static readonly ConcurrentDictionary<string, ConcurrentDictionary<string, int>> Nearest = new(StringComparer.Ordinal);

    static Dictionary<int, long> MapIds(IReadOnlyDictionary<int, string> surfaces, TokenVocabulary receiver)
    {
        var known = Nearest.GetOrAdd(receiver.Digest, _ =>
        {
            var exact = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
            for (int v = receiver.Surfaces.Count - 1; v >= 0; v--)
                if (receiver.Surfaces[v].Length > 0) exact[receiver.Surfaces[v]] = v;
            exact[""] = receiver.Eos ?? 0;
            return exact;
        });
        return surfaces.ToDictionary(kv => kv.Key, kv => (long)known.GetOrAdd(kv.Value, surface => TokenAlignment.Nearest(surface, receiver)));
    }

    /// <summary>
    /// Min-CE: per example, the candidate teacher with the lowest cross-entropy, and only if it beats the receiver's
    /// own (<paramref name="ownMetric"/>); null where the receiver knows the example best (CE alone then).
    /// </summary>
    public static ExampleTarget?[] Select(IReadOnlyList<IReadOnlyList<ExampleTarget>> candidates, IReadOnlyList<float> ownMetric) =>
        Enumerable.Range(0, ownMetric.Count).Select(x =>
        {
            var best = candidates.Select(c => c[x]).Where(t => t.Teacher.Length > 0).MinBy(t => t.Metric);
            return best is not null && best.Metric < ownMetric[x] ? best : null;
        }).ToArray();

    /// <summary>α·CE + (1−α)·KD over the public set, AdamW on the model's trainable parameters.</summary>
    public static TransferResult Train(CausalLm model, ITextTokenizer tok, IReadOnlyList<Example> publicSet, IReadOnlyList<ExampleTarget?> teachers,
        DataOptions data, TransferOptions o, CancellationToken ct = default, AdapterStepsCheckpoints? checkpoints = null)
    {
        var sw = Stopwatch.StartNew();
        var encoded = publicSet.Select(e => Encode(e, tok, data)).ToList();
        var pad = tok.PadId ?? tok.EosId ?? 0;
        var eligible = Enumerable.Range(0, encoded.Count).Where(i => encoded[i].Response.Length > 0 && encoded[i].PromptLength > 0).ToList();
        // The batch's tensors belong to the step's dispose scope: backward still needs them after this returns.
        var (steps, first, last) = AdapterSteps.Run(model, eligible, o.Epochs, o.BatchSize, o.LearningRate, o.Seed, chunk =>
        {
            var batch = InstructionData.Collate(chunk.Select(i => encoded[i].Example).ToList(), pad);
            var logits = model.Forward(batch.InputIds);
            var ce = LanguageModelLoss.Shifted(logits, batch.Labels, nn.Reduction.Mean);
            var kd = Distillation(logits, chunk.Select(i => (encoded[i].PromptLength, teachers[i])).ToList(), o.Temperature);
            if (kd is null) return ce;
            using Scalar alpha = o.Alpha.ToScalar(), rest = (1 - o.Alpha).ToScalar(); // held: HeldScalars says why
            return ce.mul(alpha).add(kd.mul(rest));
        }, ct, checkpoints);
        return new TransferResult(steps, first, last, teachers.Count(t => t is not null), teachers.Count, sw.Elapsed.TotalSeconds);
    }

    /// <summary>−Σ q·log softmax(z/T) averaged over the response tokens of the examples that have a teacher; null when none has.</summary>
    static Tensor? Distillation(Tensor logits, IReadOnlyList<(int Prompt, ExampleTarget? Teacher)> rows, double temperature)
    {
        Tensor? total = null;
        var count = 0;
        using var t = temperature.ToScalar(); // held: HeldScalars says why
        for (int b = 0; b < rows.Count; b++)
        {
            var (prompt, teacher) = rows[b];
            if (teacher is null) continue;
            var logp = logits[b].narrow(0, prompt - 1, teacher.Teacher.Length).to_type(ScalarType.Float32).div(t).log_softmax(-1);
            for (int i = 0; i < teacher.Teacher.Length; i++)
            {
                var target = teacher.Teacher[i];
                var term = logp[i].gather(0, tensor(target.Ids)).mul(tensor(target.Probabilities)).sum().neg();
                total = total is null ? term : total.add(term);
                count++;
            }
        }
        if (total is null) return null;
        using var n = count.ToScalar();
        return total.div(n);
    }
}
