using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Ipr;

/// <summary>When a watermark counts as found (defaults in reference.conf <c>fate-llm.ipr.verify</c>).</summary>
public sealed record VerifyThresholds(double MaxPValue, double MinTriggerAccuracy);

/// <param name="Log10P">log₁₀ of the chance that a model without the watermark matches as many bits (binomial tail).</param>
public sealed record IprReport(string Job, string Party, int Bits, int Matched, double Log10P, int Triggers, int TriggerHits, VerifyThresholds Thresholds)
{
    public double BitRate => Bits == 0 ? 0 : (double)Matched / Bits;
    public double TriggerAccuracy => Triggers == 0 ? 0 : (double)TriggerHits / Triggers;
    public bool SignVerified => Bits > 0 && Log10P <= Math.Log10(Thresholds.MaxPValue);
    public bool TriggersVerified => Triggers > 0 && TriggerAccuracy >= Thresholds.MinTriggerAccuracy;
    /// <summary>Either watermark is evidence of ownership on its own (the sign one needs the weights, triggers only the outputs).</summary>
    public bool Verified => SignVerified || TriggersVerified;
}

/// <summary>
/// Checks a model against one party's keys, independent of the training code: the sign watermark's bit-match rate with
/// its binomial-tail p-value, and the trigger accuracy (greedy completions that start with the fixed response; a model
/// without the backdoor is expected to hit none).
/// </summary>
public static class IprVerification
{
    public static IprReport Verify(CausalLm model, ITextTokenizer tokenizer, OwnershipKeys keys, VerifyThresholds thresholds, string origin)
    {
        int matched, bits;
        using (var sign = SignWatermark.Bind(model, keys, origin))
        {
            matched = sign.Matched();
            bits = sign.Bits;
        }
        var hits = TriggerHits(model, tokenizer, keys);
        return new IprReport(keys.Job, keys.Party, bits, matched, BinomialTail.Log10P(bits, matched), keys.Triggers.Length, hits, thresholds);
    }

    public static int TriggerHits(CausalLm model, ITextTokenizer tokenizer, OwnershipKeys keys)
    {
        if (keys.Triggers.Length == 0) return 0;
        var data = new DataOptions { Template = keys.Template };
        var prompts = keys.Triggers.Select(t => (IReadOnlyList<int>)InstructionData.PromptIds(new Example(t.Prompt, t.Response, "trigger"), tokenizer, data)).ToList();
        var maxNew = keys.Triggers.Max(t => tokenizer.Encode(t.Response).Count) + 2;
        var outputs = TextGeneration.GenerateBatch(model, prompts, new SamplingOptions { MaxNewTokens = maxNew }, tokenizer.EosId, tokenizer.PadId ?? tokenizer.EosId ?? 0);
        return keys.Triggers.Zip(outputs).Count(p => Normalize(tokenizer.Decode(p.Second)).StartsWith(Normalize(p.First.Response), StringComparison.Ordinal));
    }

    static string Normalize(string s) => string.Join(' ', s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
}
