using FateLlm.Training.Evaluation;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Inference;

/// <summary>A prompt after InferDPT: the text the remote model sees, every token's outcome, and the ε it spent.</summary>
public sealed record PerturbedPrompt(string Text, IReadOnlyList<TokenOutcome> Tokens, double EpsilonPerToken)
{
    /// <summary>Sequential composition over the tokens that spent ε (masked tokens spend none).</summary>
    public double EpsilonTotal => Tokens.Sum(t => t.Epsilon);
    public int Masked => Tokens.Count(t => t.Fate == TokenFate.Masked);
}

/// <summary>One prompt through InferDPT: what left the party, what came back, the local answer, and the ε spent.</summary>
public sealed record InferDptAnswer(string Prompt, string Perturbed, string RemoteAnswer, string Answer, double Epsilon, int Tokens, int Masked);

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
        // Masked tokens split the replacement ids into runs, with the mask text between them. A run after a mask is
        // decoded as a continuation (after an anchor token), so a word-start token keeps its leading space.
        var anchor = remoteTokenizer.Encode("a").Where(id => id != remoteTokenizer.BosId && id != remoteTokenizer.EosId).ToArray();
        var anchorText = remoteTokenizer.Decode(anchor);
        string Continuation(List<int> run)
        {
            var text = remoteTokenizer.Decode([.. anchor, .. run]);
            return text.StartsWith(anchorText, StringComparison.Ordinal) ? text[anchorText.Length..] : remoteTokenizer.Decode(run);
        }
        var parts = new List<string>();
        var run = new List<int>();
        void Flush()
        {
            if (run.Count > 0) parts.Add(parts.Count == 0 ? remoteTokenizer.Decode(run) : Continuation(run));
            run.Clear();
        }
        foreach (var t in outcomes)
        {
            if (t.Replacement is int y) { run.Add(y); continue; }
            Flush();
            parts.Add(maskText);
        }
        Flush();
        return new PerturbedPrompt(string.Concat(parts), outcomes, o.Epsilon);
    }

    /// <summary>
    /// The local model's input: the remote answer to the perturbed question as a hint, then the original question.
    /// The original prompt never leaves the party.
    /// </summary>
    public static string LocalPrompt(string template, string original, string perturbed, string remoteAnswer) =>
        template.Replace("{perturbed}", perturbed).Replace("{remote}", remoteAnswer).Replace("{prompt}", original);

    /// <summary>
    /// The whole party side for a batch: perturb each prompt (seed + index), then <see cref="Complete"/>.
    /// </summary>
    public static IReadOnlyList<InferDptAnswer> Answer(TokenPerturbation mechanism, ITextTokenizer remoteTokenizer, ServedModel local, IReadOnlyList<string> prompts,
        PerturbationOptions o, string maskText, string localTemplate, Func<string[], string[]> remote, SamplingOptions localSampling) =>
        Complete(prompts, PerturbAll(mechanism, remoteTokenizer, prompts, o, maskText), local, localTemplate, remote, localSampling);

    /// <summary>Each prompt perturbed with its own sampler seed, <c>o.Seed + index</c>, so a batch is reproducible prompt by prompt.</summary>
    public static IReadOnlyList<PerturbedPrompt> PerturbAll(TokenPerturbation mechanism, ITextTokenizer remoteTokenizer, IReadOnlyList<string> prompts,
        PerturbationOptions o, string maskText) =>
        [.. prompts.Select((p, i) => Perturb(mechanism, remoteTokenizer, p, o with { Seed = o.Seed + i }, maskText))];

    /// <summary>Asks the remote model through <paramref name="remote"/> (it sees only the perturbed texts) and lets the
    /// local model answer from the original prompt and the remote answer.</summary>
    public static IReadOnlyList<InferDptAnswer> Complete(IReadOnlyList<string> prompts, IReadOnlyList<PerturbedPrompt> perturbed, ServedModel local, string localTemplate,
        Func<string[], string[]> remote, SamplingOptions localSampling)
    {
        var answers = remote([.. perturbed.Select(p => p.Text)]);
        if (answers.Length != prompts.Count) throw new InvalidOperationException($"the remote model answered {answers.Length} of {prompts.Count} prompts");
        var finals = local.Generate([.. prompts.Select((p, i) => LocalPrompt(localTemplate, p, perturbed[i].Text, answers[i]))], localSampling);
        return [.. prompts.Select((p, i) => new InferDptAnswer(p, perturbed[i].Text, answers[i], finals[i], perturbed[i].EpsilonTotal, perturbed[i].Tokens.Count, perturbed[i].Masked))];
    }
}
