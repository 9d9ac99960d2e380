using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Inference;

/// <summary>A prompt after InferDPT: the text the remote model sees, every token's outcome, and the ε it spent.</summary>
public sealed record PerturbedPrompt(string Text, IReadOnlyList<TokenOutcome> Tokens, double EpsilonPerToken)
{
    /// <summary>Sequential composition over the tokens that spent ε (masked tokens spend none).</summary>
    public double EpsilonTotal => Tokens.Sum(t => t.Epsilon);
    public int Masked => Tokens.Count(t => t.Fate == TokenFate.Masked);
}

/// <summary>
/// InferDPT's party side: perturb a prompt with the remote model's kit (tokenized with the remote tokenizer), and
/// write the local model's prompt from the original prompt and the remote answer to the perturbed one.
/// </summary>
public static class InferDpt
{
    public static PerturbedPrompt Perturb(TokenPerturbation mechanism, ITextTokenizer remoteTokenizer, string prompt, PerturbationOptions o, string maskText)
    {
        var ids = remoteTokenizer.Encode(prompt).Where(id => id != remoteTokenizer.BosId && id != remoteTokenizer.EosId).ToList();
        var outcomes = mechanism.Perturb(ids, o);
        // Masked tokens split the replacement ids into runs decoded on their own, with the mask text between them.
        var parts = new List<string>();
        var run = new List<int>();
        foreach (var t in outcomes)
        {
            if (t.Replacement is int y) { run.Add(y); continue; }
            if (run.Count > 0) parts.Add(remoteTokenizer.Decode(run));
            run.Clear();
            parts.Add(maskText);
        }
        if (run.Count > 0) parts.Add(remoteTokenizer.Decode(run));
        return new PerturbedPrompt(string.Concat(parts), outcomes, o.Epsilon);
    }

    /// <summary>
    /// The local model's input: the remote answer to the perturbed question as a hint, then the original question.
    /// The original prompt never leaves the party.
    /// </summary>
    public static string LocalPrompt(string template, string original, string perturbed, string remoteAnswer) =>
        template.Replace("{perturbed}", perturbed).Replace("{remote}", remoteAnswer).Replace("{prompt}", original);
}
