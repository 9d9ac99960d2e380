using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

namespace FateLlm.Training.Data;

/// <summary>
/// Random batches of plain corpus text, as the arbiter's distillations train on it: each text encoded with BOS where the
/// tokenizer adds one, cut to <c>maxTokens</c>, texts of one token dropped, right-padded; labels are the ids with padding
/// ignored. Tensors are made in the caller's dispose scope.
/// </summary>
public sealed class CorpusBatches(ITextTokenizer tok, IReadOnlyList<string> texts, int maxTokens, int seed)
{
    readonly Random _rng = new(seed);
    readonly int _pad = tok.PadId ?? tok.EosId ?? 0;

    int[] Encode(string t) => (tok.AddBos && tok.BosId is int b ? new[] { b } : []).Concat(tok.Encode(t)).Take(maxTokens).ToArray();

    /// <summary><paramref name="size"/> texts drawn with replacement; null when every draw was too short.</summary>
    public (Tensor Ids, Tensor Mask, Tensor Labels)? Next(int size)
    {
        var batch = Enumerable.Range(0, size).Select(_ => Encode(texts[_rng.Next(texts.Count)])).Where(x => x.Length > 1).ToList();
        if (batch.Count == 0) return null;
        var width = batch.Max(x => x.Length);
        var ids = tensor(batch.SelectMany(x => x.Concat(Enumerable.Repeat(_pad, width - x.Length))).Select(i => (long)i).ToArray(), [batch.Count, width]);
        var mask = tensor(batch.SelectMany(x => Enumerable.Range(0, width).Select(i => i < x.Length)).ToArray(), [batch.Count, width]);
        return (ids, mask, ids.masked_fill(mask.logical_not(), InstructionData.IgnoreIndex));
    }
}
