using FateLlm.Training.Models;
using static TorchSharp.torch;

namespace FateLlm.Training.Evaluation;

public sealed record SamplingOptions
{
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>0 = greedy decoding.</summary>
    public double Temperature { get; init; }
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public long Seed { get; init; } = 0;
    public bool StopAtEos { get; init; } = true;
}

/// <summary>Autoregressive decoding with a KV cache; batches are left-padded so every row ends at the same column.</summary>
public static class TextGeneration
{
    public static IReadOnlyList<int> Generate(CausalLm model, IReadOnlyList<int> prompt, SamplingOptions o, int? eos) =>
        GenerateBatch(model, [prompt], o, eos, padId: eos ?? 0)[0];

    /// <param name="finished">Whether row i's output so far is complete (a stop sequence reached); such rows stop growing.</param>
    public static List<List<int>> GenerateBatch(CausalLm model, IReadOnlyList<IReadOnlyList<int>> prompts, SamplingOptions o, int? eos, int padId,
        Func<int, IReadOnlyList<int>, bool>? finished = null)
    {
        if (prompts.Count == 0) return [];
        if (prompts.Any(p => p.Count == 0)) throw new ArgumentException("an empty prompt cannot be continued (add a BOS token)");
        var device = model.parameters().First().device;
        var gen = new Generator((ulong)o.Seed, device);
        var wasTraining = model.training;
        model.eval();
        var outputs = prompts.Select(_ => new List<int>()).ToList();
        var done = new bool[prompts.Count];
        try
        {
            using var _ = no_grad();
            using var cache = model.NewCache();
            int width = prompts.Max(p => p.Count), b = prompts.Count;
            var ids = new long[b * width];
            var mask = new List<long>[b];
            for (int i = 0; i < b; i++)
            {
                var pad = width - prompts[i].Count;
                mask[i] = Enumerable.Repeat(0L, pad).Concat(Enumerable.Repeat(1L, prompts[i].Count)).ToList();
                for (int t = 0; t < width; t++) ids[i * width + t] = t < pad ? padId : prompts[i][t - pad];
            }
            var padded = mask.Any(m => m[0] == 0);
            var input = tensor(ids, [b, width], device: device);
            for (int step = 0; step < o.MaxNewTokens; step++)
            {
                using var scope = NewDisposeScope();
                Tensor? attn = padded ? tensor(mask.SelectMany(m => m).ToArray(), [b, mask[0].Count], device: device) : null;
                var logits = model.Forward(input, cache, attn).select(1, -1).to_type(ScalarType.Float32);
                var next = Pick(logits, o, gen);
                var chosen = next.cpu().data<long>().ToArray();
                for (int i = 0; i < b; i++)
                {
                    mask[i].Add(1);
                    if (done[i]) continue;
                    if (o.StopAtEos && eos is int e && chosen[i] == e) { done[i] = true; continue; }
                    outputs[i].Add((int)chosen[i]);
                    if (finished?.Invoke(i, outputs[i]) == true) done[i] = true;
                }
                if (done.All(d => d)) break;
                input.Dispose();
                input = next.unsqueeze(1).MoveToOuterDisposeScope();
            }
            input.Dispose();
        }
        finally
        {
            if (wasTraining) model.train();
        }
        return outputs;
    }

    /// <summary>Greedy argmax, or temperature, top-k and nucleus (top-p) filtering followed by sampling.</summary>
    public static Tensor Pick(Tensor logits, SamplingOptions o, Generator gen)
    {
        if (o.Temperature <= 0) return logits.argmax(-1);
        var l = logits.div(o.Temperature);
        if (o.TopK > 0 && o.TopK < l.shape[^1])
        {
            var kth = l.topk(o.TopK, -1).values.narrow(-1, o.TopK - 1, 1);
            l = l.masked_fill(l.lt(kth), double.NegativeInfinity);
        }
        if (o.TopP < 1.0)
        {
            var (sorted, index) = l.sort(-1, descending: true);
            var probs = sorted.softmax(-1);
            // Drop a token when the mass before it already reaches top_p (the first token always stays).
            var remove = probs.cumsum(-1).sub(probs).ge(o.TopP);
            var removeOrig = zeros_like(remove).scatter(-1, index, remove);
            l = l.masked_fill(removeOrig, double.NegativeInfinity);
        }
        return l.softmax(-1).multinomial(1, generator: gen).squeeze(-1);
    }
}
