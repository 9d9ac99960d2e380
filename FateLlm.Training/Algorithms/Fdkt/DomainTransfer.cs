using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static TorchSharp.torch;

namespace FateLlm.Training.Algorithms.Fdkt;

/// <summary>How FDKT's texts are laid out: the small model's prompt per category and the separator inside its synthetic text.</summary>
public sealed record SynthesisFormat(string Template, string Separator)
{
    public string PromptFor(string category) => Template.Replace("{category}", category);

    /// <summary>
    /// A private example as the small model learns to write it: prompted with its category, it writes the example's
    /// prompt and response joined by the separator (the loss covers both: they are what it will generate).
    /// </summary>
    public Example Training(SyntheticExample e, string location) => new(PromptFor(e.Category), e.Prompt + Separator + e.Response, location);

    /// <summary>A generated text back to an example, or null when it has no separator or an empty side.</summary>
    public SyntheticExample? Parse(string category, string text)
    {
        var at = text.IndexOf(Separator, StringComparison.Ordinal);
        if (at < 0) return null;
        var (prompt, response) = (text[..at].Trim(), text[(at + Separator.Length)..].Trim());
        return prompt.Length == 0 || response.Length == 0 ? null : new SyntheticExample(category, prompt, response);
    }
}

/// <summary>
/// FDKT's numeric steps as functions over models (Li et al., arXiv 2405.14212; FATE-LLM <c>algo/fdkt</c>): the party's
/// synthesis from its DP-trained small model, and the arbiter's embedding, clustering, filtering and augmentation with
/// its LLM. The plug-in (<see cref="FdktAlgorithm"/>) only orchestrates them.
/// </summary>
public static class DomainTransfer
{
    /// <summary>The data options for synthesis texts: the response holds a whole example, so it gets the prompt's room too.</summary>
    public static DataOptions SynthesisData(DataOptions d) =>
        d with { MaxResponseTokens = d.MaxPromptTokens + d.MaxResponseTokens, MaxTotalTokens = d.MaxTotalTokens + d.MaxPromptTokens };

    /// <summary><paramref name="perCategory"/> samples of the small model per category; those that do not parse are counted, not kept.</summary>
    public static (List<SyntheticExample> Examples, int Unparsed) Synthesize(CausalLm model, ITextTokenizer tok, DataOptions data, SynthesisFormat format,
        IReadOnlyList<string> categories, int perCategory, SamplingOptions sampling, int batchSize, CancellationToken ct)
    {
        var examples = new List<SyntheticExample>();
        var unparsed = 0;
        var pad = tok.PadId ?? tok.EosId ?? 0;
        foreach (var (category, c) in categories.Select((c, i) => (c, i)))
        {
            var prompt = (IReadOnlyList<int>)InstructionData.PromptIds(new Example(format.PromptFor(category), "", "synthesis"), tok, data);
            for (int start = 0; start < perCategory; start += batchSize)
            {
                ct.ThrowIfCancellationRequested();
                var n = Math.Min(batchSize, perCategory - start);
                var texts = TextGeneration.GenerateBatch(model, Enumerable.Repeat(prompt, n).ToList(), sampling with { Seed = sampling.Seed + c * 1_000_003L + start }, tok.EosId, pad)
                    .Select(ids => tok.Decode(ids));
                foreach (var text in texts)
                {
                    if (format.Parse(category, text) is { } e) examples.Add(e);
                    else unparsed++;
                }
            }
        }
        return (examples, unparsed);
    }

    /// <summary>Each example's embedding: the LLM's hidden state after its last block, averaged over the example's tokens and L2-normalised.</summary>
    public static List<float[]> Embed(CausalLm model, ITextTokenizer tok, IReadOnlyList<SyntheticExample> examples, string separator)
    {
        var wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            return examples.Select(e =>
            {
                using var scope = NewDisposeScope();
                var ids = InstructionData.TextIds(e.Prompt + separator + e.Response, tok).Take(model.Config.MaxPositions).Select(i => (long)i).ToArray();
                var (_, hidden) = model.ForwardCapturing(tensor(ids, [1, ids.Length]), model.Config.NumLayers - 1);
                var mean = hidden.to_type(ScalarType.Float32).mean([1]).squeeze(0);
                return mean.div(mean.norm().clamp_min(1e-12)).data<float>().ToArray();
            }).ToList();
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }

    /// <summary>
    /// The LLM's judgement of each example: the mean log-likelihood per token of its response after the rendered filter
    /// prompt (what a base LLM can judge; FATE-LLM asks an instruction-tuned one to list the valid indices).
    /// </summary>
    public static double[] Plausibility(CausalLm model, ITextTokenizer tok, DataOptions data, IReadOnlyList<SyntheticExample> examples, string template)
    {
        var requests = examples.Select(e =>
        {
            var context = InstructionData.PromptIds(new Example(Render(template, e, ""), "", "filter"), tok, data);
            var continuation = tok.Encode(e.Response).Take(data.MaxResponseTokens).ToList();
            if (tok.EosId is int eos) continuation.Add(eos);
            return new TokenRequest(context, continuation);
        }).ToList();
        var scores = LikelihoodScoring.Score(model, requests, 8, model.Config.MaxPositions, tok.PadId ?? tok.EosId ?? 0);
        return scores.Select((s, i) => s.LogLikelihood / requests[i].Continuation.Count).ToArray();
    }

    /// <summary>
    /// Per cluster, the ⌈keep·size⌉ examples the LLM finds likeliest (indices into <paramref name="scores"/>, ascending).
    /// </summary>
    public static List<int> Filter(IReadOnlyList<int> clusters, IReadOnlyList<double> scores, double keep) =>
        clusters.Select((c, i) => (Cluster: c, Index: i)).GroupBy(x => x.Cluster)
            .SelectMany(g => g.OrderByDescending(x => scores[x.Index]).ThenBy(x => x.Index).Take((int)Math.Ceiling(keep * g.Count())).Select(x => x.Index))
            .Order().ToList();

    /// <summary>
    /// FATE-LLM's filter, for an instruction-tuned LLM: per cluster, the LLM answers the judge prompt listing the
    /// cluster's examples (<c>{examples}</c>: one line each, <c>i. prompt separator response</c>, numbered from 0), and the
    /// examples whose numbers its answer names are kept (none named: none kept). Indices into <paramref name="clusters"/>, ascending.
    /// </summary>
    public static List<int> Judge(Func<IReadOnlyList<string>, string[]> generate, IReadOnlyList<int> clusters, IReadOnlyList<SyntheticExample> examples,
        string template, string separator)
    {
        var groups = clusters.Select((c, i) => (Cluster: c, Index: i)).GroupBy(x => x.Cluster).OrderBy(g => g.Key).Select(g => g.Select(x => x.Index).ToList()).ToList();
        var prompts = groups.Select(g => template
            .Replace("{category}", string.Join(", ", g.Select(i => examples[i].Category).Distinct(StringComparer.Ordinal)))
            .Replace("{examples}", string.Join("\n", g.Select((i, k) => $"{k}. {examples[i].Prompt}{separator}{examples[i].Response}".Replace("\n", " "))))).ToList();
        var answers = generate(prompts);
        return groups.Zip(answers, (g, answer) => Numbers.Matches(answer).Select(m => int.TryParse(m.Value, out var k) ? k : -1)
                .Where(k => k >= 0 && k < g.Count).Distinct().Select(k => g[k]))
            .SelectMany(x => x).Order().ToList();
    }

    static readonly System.Text.RegularExpressions.Regex Numbers = new(@"\b\d{1,6}\b", System.Text.RegularExpressions.RegexOptions.Compiled);

    /// <summary>
    /// <paramref name="count"/> new examples from the filtered seeds (cycled in order): the LLM answers the augmentation
    /// prompt rendered from each seed (its category, prompt, response, and up to <paramref name="shots"/> other seeds of the
    /// category as <c>{shots}</c>), and its answer becomes the response to the seed's prompt. Empty answers are dropped.
    /// </summary>
    public static List<SyntheticExample> Augment(Func<IReadOnlyList<string>, string[]> generate, IReadOnlyList<SyntheticExample> seeds, int count, string template,
        int shots, string separator)
    {
        if (seeds.Count == 0 || count == 0) return [];
        var byCategory = seeds.GroupBy(s => s.Category).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        var chosen = Enumerable.Range(0, count).Select(i => seeds[i % seeds.Count]).ToList();
        var prompts = chosen.Select((seed, i) =>
        {
            var others = byCategory[seed.Category].Where(s => !ReferenceEquals(s, seed)).ToList();
            var shotText = string.Join("\n", Enumerable.Range(0, Math.Min(shots, others.Count)).Select(k => others[(i + k) % others.Count])
                .Select(s => s.Prompt + separator + s.Response));
            return Render(template, seed, shotText);
        }).ToList();
        var answers = generate(prompts);
        return chosen.Zip(answers, (seed, answer) => new SyntheticExample(seed.Category, seed.Prompt, answer.Trim()))
            .Where(e => e.Response.Length > 0).ToList();
    }

    static string Render(string template, SyntheticExample e, string shots) =>
        template.Replace("{shots}", shots).Replace("{category}", e.Category).Replace("{prompt}", e.Prompt).Replace("{response}", e.Response);
}
