using FateLlm.Training.Models;
using static TorchSharp.torch;

namespace FateLlm.Training.Evaluation;

/// <summary>A continuation to score after a context, both as token ids.</summary>
public sealed record TokenRequest(IReadOnlyList<int> Context, IReadOnlyList<int> Continuation);

/// <summary>The continuation's summed log-probability, and whether greedy decoding would have produced it token by token.</summary>
public readonly record struct TokenScore(double LogLikelihood, bool IsGreedy);

/// <summary>
/// Log-likelihoods of continuations as lm-eval's HF backend computes them (<c>_loglikelihood_tokens</c>): the
/// context and continuation are joined, the last <c>maxLength + 1</c> tokens kept and the final one dropped as
/// input, and the continuation's tokens are read from the last positions' log-softmax. Requests run longest first in
/// right-padded batches without an attention mask: a causal model never looks right, so padding changes no score.
/// </summary>
public static class LikelihoodScoring
{
    public static TokenScore[] Score(CausalLm model, IReadOnlyList<TokenRequest> requests, int batchSize, int maxLength, int padId, Action<int>? scored = null)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), "batch size must be at least 1");
        var inputs = new int[requests.Count][];
        for (int i = 0; i < requests.Count; i++)
        {
            var (ctx, cont) = (requests[i].Context, requests[i].Continuation);
            if (cont.Count == 0) throw new ArgumentException($"request {i}: an empty continuation has no likelihood");
            if (cont.Count > maxLength) throw new ArgumentException($"request {i}: a continuation of {cont.Count} tokens exceeds the model's {maxLength}");
            if (ctx.Count == 0) throw new ArgumentException($"request {i}: the context needs at least one token (a BOS or EOS prefix)");
            var all = ctx.Concat(cont).ToArray();
            inputs[i] = all[Math.Max(0, all.Length - (maxLength + 1))..^1];
        }
        var results = new TokenScore[requests.Count];
        var order = Enumerable.Range(0, requests.Count).OrderByDescending(i => inputs[i].Length).ThenBy(i => i).ToArray();
        var device = model.parameters().First().device;
        var wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            foreach (var chunk in order.Chunk(batchSize))
            {
                using var scope = NewDisposeScope();
                var width = chunk.Max(i => inputs[i].Length);
                var ids = new long[chunk.Length * width];
                for (int r = 0; r < chunk.Length; r++)
                {
                    var row = inputs[chunk[r]];
                    for (int t = 0; t < width; t++) ids[r * width + t] = t < row.Length ? row[t] : padId;
                }
                var logits = model.Forward(tensor(ids, [chunk.Length, width], device: device));
                for (int r = 0; r < chunk.Length; r++)
                {
                    var req = requests[chunk[r]];
                    int len = inputs[chunk[r]].Length, n = req.Continuation.Count;
                    var logp = logits[r].narrow(0, len - n, n).to_type(ScalarType.Float32).log_softmax(-1);
                    var target = tensor(req.Continuation.Select(x => (long)x).ToArray(), device: device);
                    var ll = logp.gather(1, target.unsqueeze(1)).sum().item<float>();
                    var greedy = logp.argmax(-1).eq(target).all().item<bool>();
                    results[chunk[r]] = new TokenScore(ll, greedy);
                }
                scored?.Invoke(chunk.Length);
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        return results;
    }

    /// <summary>
    /// lm-eval's <c>get_rolling_token_windows</c> followed by <c>make_disjoint_window</c> with context length 1: the
    /// first window predicts up to <paramref name="maxSeqLen"/> tokens after the prefix token, each later window the next
    /// tokens with as much preceding text as fits, so every token is predicted exactly once.
    /// </summary>
    public static List<TokenRequest> RollingWindows(IReadOnlyList<int> tokens, int prefixToken, int maxSeqLen)
    {
        const int contextLen = 1;
        var windows = new List<TokenRequest>();
        if (tokens.Count == 0) return windows;
        var predLen = maxSeqLen - contextLen + 1;
        var first = Math.Min(maxSeqLen, tokens.Count);
        windows.Add(Disjoint([prefixToken, .. tokens.Take(first - 1)], [.. tokens.Take(first)]));
        var predicted = first;
        while (predicted < tokens.Count)
        {
            var windowPred = Math.Min(tokens.Count - predicted, predLen);
            var end = predicted + windowPred;
            var ctxStart = Math.Max(0, end - maxSeqLen - 1);
            windows.Add(Disjoint([.. tokens.Skip(ctxStart).Take(end - 1 - ctxStart)], [.. tokens.Skip(end - windowPred).Take(windowPred)]));
            predicted += windowPred;
        }
        return windows;
    }

    static TokenRequest Disjoint(int[] context, int[] continuation) => new(context[..(context.Length - (continuation.Length - 1))], continuation);
}
