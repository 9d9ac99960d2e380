using System.Text.Json.Nodes;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;

namespace FateLlm.Training.Evaluation.Harness;

public sealed record HarnessOptions
{
    public int BatchSize { get; init; } = 8;
    /// <summary>At most this many documents: a count when ≥ 1, a fraction of the split when below 1 (lm-eval's --limit); null = all.</summary>
    public double? Limit { get; init; }
    /// <summary>Overrides every task's num_fewshot.</summary>
    public int? NumFewshot { get; init; }
    /// <summary>The model's context in tokens; null = its max_position_embeddings.</summary>
    public int? MaxLength { get; init; }
    /// <summary>Prefix contexts with BOS (HF's add_special_tokens); null = when the tokenizer adds one, as FateLlm trains.</summary>
    public bool? AddBos { get; init; }
    public int FewshotSeed { get; init; } = 1234;
    public int BootstrapIters { get; init; } = 1000;
    public bool LogSamples { get; init; }
    /// <summary>Called with (requests done, requests in all) as scoring goes.</summary>
    public Action<int, int>? Progress { get; init; }
}

/// <summary>One task's figures: each metric's aggregate and standard error, how many documents, and the per-document log.</summary>
public sealed record TaskResult(TaskConfig Task, IReadOnlyDictionary<string, MetricValue> Metrics, int Original, int Effective, int NumFewshot,
    IReadOnlyList<JsonObject> Samples)
{
    /// <summary>
    /// Each document's value, in the split's order, for paired comparisons of two models: acc and acc_norm (0 or 1),
    /// exact_match and rougeL, and for rolling documents their loglikelihood, bytes and words.
    /// </summary>
    public IReadOnlyDictionary<string, double[]> PerDocument { get; init; } = new Dictionary<string, double[]>();
}

/// <summary>
/// Runs one lm-eval task on a model: builds each document's context (description, few-shot examples, doc_to_text),
/// turns it into lm-eval's requests, encodes them as lm-eval's HF backend does (<c>_encode_pair</c>: trailing
/// whitespace of the context moves to the continuation, the continuation is what the joined text adds), scores
/// them in batches, and aggregates the metrics.
/// </summary>
public static class TaskEvaluation
{
    public static TaskResult Run(CausalLm model, ITextTokenizer tok, TaskConfig task, HarnessOptions o)
    {
        var docs = new TaskDocuments(task);
        var all = docs.Split(task.EvalSplit);
        var count = o.Limit switch
        {
            null => all.Count,
            < 1 and > 0 and var f => (int)Math.Ceiling(all.Count * f),
            var n => (int)Math.Min(all.Count, n.Value),
        };
        var items = all.Take(count).ToList();
        var shots = o.NumFewshot ?? task.NumFewshot ?? 0;
        var contexts = FewshotContexts(task, docs, items, shots, o.FewshotSeed);
        var maxLength = o.MaxLength ?? model.Config.MaxPositions;
        var encoder = new RequestEncoder(tok, o.AddBos ?? tok.AddBos);
        var pad = tok.PadId ?? tok.EosId ?? 0;
        var samples = new List<JsonObject>();
        var perDocument = new Dictionary<string, double[]>();
        var metrics = task.OutputType switch
        {
            OutputType.GenerateUntil => Generate(model, tok, task, docs, items, contexts, encoder, maxLength, pad, o, samples, perDocument),
            _ => Likelihood(model, task, docs, items, contexts, encoder, maxLength, pad, o, samples, perDocument),
        };
        return new TaskResult(task, metrics, all.Count, items.Count, shots, o.LogSamples ? samples : []) { PerDocument = perDocument };
    }

    static List<string> FewshotContexts(TaskConfig task, TaskDocuments docs, IReadOnlyList<TaskDocument> items, int shots, int seed)
    {
        if (shots == 0) return items.Select(d => task.Description + docs.Text(d)).ToList();
        var pool = docs.Split(task.ShotSplit);
        // lm-eval's ContextSampler: one random.Random(seed) for the whole task, drawn in document order; one example more
        // when fewshot_split names the scored split, so that the document itself can be dropped.
        var draws = shots + (task.FewshotSplit is not null && task.FewshotSplit == task.TestSplit ? 1 : 0);
        if (pool.Count < draws)
            throw new TaskConfigException($"{task.Source}: task '{task.Task}': {shots} few-shot examples asked, split '{task.ShotSplit}' holds {pool.Count}");
        var rng = new PythonRandom(seed);
        return items.Select(doc =>
        {
            // As lm-eval's `x != doc`: an example equal to the document is dropped, from whichever split it came.
            var picked = rng.Sample(pool.Count, draws).Select(i => pool[i]).Where(p => !JsonNode.DeepEquals(p.Fields, doc.Fields)).Take(shots);
            var examples = string.Concat(picked.Select(p => docs.Text(p) + task.TargetDelimiter + docs.TargetTexts(p)[0] + task.FewshotDelimiter));
            return task.Description + examples + docs.Text(doc);
        }).ToList();
    }

    static Dictionary<string, MetricValue> Likelihood(CausalLm model, TaskConfig task, TaskDocuments docs, IReadOnlyList<TaskDocument> items, List<string> contexts,
        RequestEncoder encoder, int maxLength, int pad, HarnessOptions o, List<JsonObject> samples, Dictionary<string, double[]> perDocument)
    {
        // Each document's requests as text pairs (for the log) and as tokens (for scoring).
        var perDoc = new List<(List<(string Context, string Continuation)> Text, List<TokenRequest> Tokens)>();
        for (int d = 0; d < items.Count; d++)
        {
            var doc = items[d];
            List<(string, string)> text;
            List<TokenRequest> tokens;
            switch (task.OutputType)
            {
                case OutputType.MultipleChoice:
                    text = docs.Choices(doc).Select(c => (contexts[d], task.TargetDelimiter + c)).ToList();
                    tokens = text.Select(x => encoder.Pair(x.Item1, x.Item2)).ToList();
                    break;
                case OutputType.Loglikelihood:
                    text = [(contexts[d], task.TargetDelimiter + docs.TargetTexts(doc)[0])];
                    tokens = text.Select(x => encoder.Pair(x.Item1, x.Item2)).ToList();
                    break;
                default:
                    var document = docs.TargetTexts(doc)[0];
                    text = [("", document)];
                    tokens = LikelihoodScoring.RollingWindows(encoder.Tokenizer.Encode(document), encoder.Prefix, maxLength);
                    break;
            }
            perDoc.Add((text, tokens));
        }
        var flat = perDoc.SelectMany(x => x.Tokens).ToList();
        int done = 0;
        var scores = LikelihoodScoring.Score(model, flat, o.BatchSize, maxLength, pad, n => o.Progress?.Invoke(done += n, flat.Count));
        var acc = new List<double>();
        var accNorm = new List<double>();
        var lls = new List<double>();
        var weighted = new List<(double Ll, int Words, int Bytes)>();
        int at = 0;
        for (int d = 0; d < items.Count; d++)
        {
            var doc = items[d];
            var s = scores.Skip(at).Take(perDoc[d].Tokens.Count).ToList();
            at += s.Count;
            var sample = new JsonObject
            {
                ["doc_id"] = d, ["doc"] = doc.Fields.DeepClone(), ["location"] = doc.Location,
                ["arguments"] = new JsonArray(perDoc[d].Text.Select(x => (JsonNode)new JsonArray(x.Context, x.Continuation)).ToArray()),
            };
            switch (task.OutputType)
            {
                case OutputType.MultipleChoice:
                    var choices = docs.Choices(doc);
                    var gold = docs.Gold(doc, choices);
                    var (a, n) = TaskMetrics.MultipleChoice(s.Select(x => x.LogLikelihood).ToList(), choices, gold);
                    acc.Add(a);
                    accNorm.Add(n);
                    sample["target"] = gold.Count == 1 ? gold[0] : new JsonArray(gold.Select(g => (JsonNode)g).ToArray());
                    sample["resps"] = new JsonArray(s.Select(x => (JsonNode)new JsonArray(new JsonArray(x.LogLikelihood, x.IsGreedy))).ToArray());
                    sample["acc"] = a;
                    sample["acc_norm"] = n;
                    break;
                case OutputType.Loglikelihood:
                    lls.Add(s[0].LogLikelihood);
                    acc.Add(s[0].IsGreedy ? 1 : 0);
                    sample["target"] = docs.TargetTexts(doc)[0];
                    sample["resps"] = new JsonArray(new JsonArray(new JsonArray(s[0].LogLikelihood, s[0].IsGreedy)));
                    sample["perplexity"] = s[0].LogLikelihood;
                    sample["acc"] = s[0].IsGreedy ? 1 : 0;
                    break;
                default:
                    var text = perDoc[d].Text[0].Continuation;
                    var ll = s.Sum(x => x.LogLikelihood);
                    weighted.Add((ll, TaskMetrics.Words(text), TaskMetrics.Bytes(text)));
                    sample["target"] = text;
                    sample["resps"] = new JsonArray(new JsonArray(ll));
                    sample["word_perplexity"] = new JsonArray(ll, weighted[^1].Words);
                    sample["byte_perplexity"] = new JsonArray(ll, weighted[^1].Bytes);
                    sample["bits_per_byte"] = new JsonArray(ll, weighted[^1].Bytes);
                    break;
            }
            samples.Add(sample);
        }
        if (acc.Count > 0) perDocument["acc"] = [.. acc];
        if (accNorm.Count > 0) perDocument["acc_norm"] = [.. accNorm];
        if (lls.Count > 0) perDocument["loglikelihood"] = [.. lls];
        if (weighted.Count > 0)
        {
            perDocument["loglikelihood"] = [.. weighted.Select(x => x.Ll)];
            perDocument["bytes"] = [.. weighted.Select(x => (double)x.Bytes)];
            perDocument["words"] = [.. weighted.Select(x => (double)x.Words)];
        }
        var result = new Dictionary<string, MetricValue>();
        foreach (var m in task.Metrics)
            result[m.Name] = m.Name switch
            {
                "acc" => TaskMetrics.Mean(acc),
                "acc_norm" => TaskMetrics.Mean(accNorm),
                "perplexity" => TaskMetrics.Perplexity(lls, o.BootstrapIters, o.FewshotSeed),
                "word_perplexity" => TaskMetrics.WeightedPerplexity(weighted.Select(x => (x.Ll, x.Words)).ToList()),
                "byte_perplexity" => TaskMetrics.WeightedPerplexity(weighted.Select(x => (x.Ll, x.Bytes)).ToList()),
                "bits_per_byte" => TaskMetrics.BitsPerByte(weighted.Select(x => (x.Ll, x.Bytes)).ToList()),
                var other => throw new TaskConfigException($"{task.Source}: metric '{other}' is not computed for {TaskYaml.Snake(task.OutputType)}"),
            };
        return result;
    }

    static Dictionary<string, MetricValue> Generate(CausalLm model, ITextTokenizer tok, TaskConfig task, TaskDocuments docs, IReadOnlyList<TaskDocument> items,
        List<string> contexts, RequestEncoder encoder, int maxLength, int pad, HarnessOptions o, List<JsonObject> samples, Dictionary<string, double[]> perDocument)
    {
        var gen = task.Generation!;
        var sampling = new SamplingOptions
        {
            MaxNewTokens = gen.MaxGenToks, Temperature = gen.DoSample ? (gen.Temperature > 0 ? gen.Temperature : 1.0) : 0,
            TopK = gen.TopK, TopP = gen.TopP, Seed = o.FewshotSeed,
        };
        // As lm-eval: the context keeps its last max_length − max_gen_toks tokens.
        var keep = Math.Max(1, maxLength - gen.MaxGenToks);
        var prompts = contexts.Select(c => (IReadOnlyList<int>)encoder.Context(c).TakeLast(keep).ToList()).ToList();
        var predictions = new string[items.Count];
        int done = 0;
        // Longest prompts first keeps left padding small, as lm-eval's collator orders generation requests.
        var order = Enumerable.Range(0, items.Count).OrderByDescending(i => prompts[i].Count).ThenBy(i => i).ToArray();
        foreach (var chunk in order.Chunk(o.BatchSize))
        {
            var outs = TextGeneration.GenerateBatch(model, chunk.Select(i => prompts[i]).ToList(), sampling, tok.EosId, pad,
                (_, ids) => gen.Until.Count > 0 && Cut(tok.Decode(ids), gen.Until).Stopped);
            for (int r = 0; r < chunk.Length; r++) predictions[chunk[r]] = Cut(tok.Decode(outs[r]), gen.Until).Text;
            o.Progress?.Invoke(done += chunk.Length, items.Count);
        }
        var references = items.Select(docs.TargetTexts).ToList();
        for (int d = 0; d < items.Count; d++)
        {
            var sample = new JsonObject
            {
                ["doc_id"] = d, ["doc"] = items[d].Fields.DeepClone(), ["location"] = items[d].Location,
                ["target"] = references[d].Count == 1 ? references[d][0] : new JsonArray(references[d].Select(r => (JsonNode)r).ToArray()),
                ["arguments"] = new JsonArray(new JsonArray(contexts[d], new JsonObject { ["until"] = new JsonArray(gen.Until.Select(u => (JsonNode)u).ToArray()), ["max_gen_toks"] = gen.MaxGenToks })),
                ["resps"] = new JsonArray(new JsonArray(predictions[d])),
                ["filtered_resps"] = new JsonArray(predictions[d]),
            };
            samples.Add(sample);
        }
        var result = new Dictionary<string, MetricValue>();
        foreach (var m in task.Metrics)
        {
            switch (m.Name)
            {
                case "exact_match":
                    bool Flag(string k) => m.Options.TryGetValue(k, out var v) && v?.GetValue<bool>() == true;
                    var regexes = m.Options.TryGetValue("regexes_to_ignore", out var rx) ? (rx is JsonArray a ? a.Select(x => x!.GetValue<string>()).ToList() : [rx!.GetValue<string>()]) : [];
                    var em = Enumerable.Range(0, items.Count).Select(d => TaskMetrics.ExactMatch(predictions[d], references[d], Flag("ignore_case"), Flag("ignore_punctuation"), regexes, Flag("ignore_numbers"))).ToList();
                    for (int d = 0; d < items.Count; d++) samples[d]["exact_match"] = em[d];
                    perDocument[m.Name] = [.. em];
                    result[m.Name] = TaskMetrics.Mean(em);
                    break;
                case "rougeL":
                    var rl = Enumerable.Range(0, items.Count).Select(d => TaskMetrics.RougeL(predictions[d], references[d])).ToList();
                    for (int d = 0; d < items.Count; d++) samples[d]["rougeL"] = rl[d];
                    perDocument[m.Name] = [.. rl];
                    result[m.Name] = TaskMetrics.Mean(rl);
                    break;
                case "bleu":
                    result[m.Name] = TaskMetrics.CorpusBleu(Enumerable.Range(0, items.Count).Select(d => (references[d], predictions[d])).ToList(),
                        Math.Min(o.BootstrapIters, 100), o.FewshotSeed);
                    break;
                default:
                    throw new TaskConfigException($"{task.Source}: metric '{m.Name}' is not computed for generate_until");
            }
        }
        return result;
    }

    /// <summary>The text up to the first stop sequence, and whether one was found.</summary>
    static (string Text, bool Stopped) Cut(string text, IReadOnlyList<string> until)
    {
        var at = until.Where(u => u.Length > 0).Select(u => text.IndexOf(u, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
        return at >= 0 ? (text[..at], true) : (text, false);
    }

    /// <summary>lm-eval's HF encoding of requests, with FateLlm's BOS choice.</summary>
    sealed class RequestEncoder(ITextTokenizer tok, bool addBos)
    {
        public ITextTokenizer Tokenizer => tok;

        /// <summary>lm-eval's prefix_token_id: BOS, else EOS; what an empty context and a rolling document start from.</summary>
        public int Prefix => tok.BosId ?? tok.EosId ?? throw new InvalidOperationException("the tokenizer has neither BOS nor EOS to start a document from");

        public List<int> Context(string text) => addBos && tok.BosId is int bos ? [bos, .. tok.Encode(text)] : [.. tok.Encode(text)];

        public TokenRequest Pair(string context, string continuation)
        {
            if (context.Length == 0) return new TokenRequest([Prefix], tok.Encode(continuation));
            var spaces = context.Length - context.TrimEnd().Length;
            if (spaces > 0) (context, continuation) = (context[..^spaces], context[^spaces..] + continuation);
            var whole = Context(context + continuation);
            var ctx = Context(context);
            return new TokenRequest(ctx, whole[ctx.Count..]);
        }
    }
}
