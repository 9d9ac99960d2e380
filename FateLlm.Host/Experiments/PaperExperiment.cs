using System.Diagnostics;
using System.Text.Json;
using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Evaluation.Harness;
using FateLlm.Training.Federation;
using FateLlm.Training.Metrics;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using FateLlm.Training.Zoo;
using FateLlm.Host.Zoo;

namespace FateLlm.Host.Experiments;

public enum EvaluationSet { Test, Dev }

public sealed record ExperimentSettings
{
    public required string OutDir { get; init; }
    public int[] Seeds { get; init; } = [1, 2, 3];
    public string[] Methods { get; init; } = ["lora", "ptuning-v2"];
    public bool FullFineTuningBaseline { get; init; } = true;
    public int Rounds { get; init; } = 5;
    public int LocalEpochs { get; init; } = 1;
    public int TrainPerParty { get; init; } = 800;
    public int DevPerParty { get; init; } = 100;
    public int TestPerParty { get; init; } = 200;
    /// <summary>The zoo's recipes (reference.conf's unless a caller brings its own).</summary>
    public ZooCatalog Zoo { get; init; } = ZooCatalog.Load();
    /// <summary>The zoo model every setting fine-tunes (built on first use); the catalog's demo base by default.</summary>
    public string? BaseModel { get; init; }
    /// <summary>The zoo's folder; the catalog's root unless set.</summary>
    public string? ZooRoot { get; init; }
    public int MaxNewTokens { get; init; } = 40;
    public int BatchSize { get; init; } = 16;
    /// <summary>Dev: score every setting on the parties' pooled dev sets instead of the test set (for tuning).</summary>
    public EvaluationSet EvaluateOn { get; init; } = EvaluationSet.Test;
    public double LoraLearningRate { get; init; } = 5e-3;
    public double PrefixLearningRate { get; init; } = 1e-2;
    public string WordNetDir { get; init; } = WordNetCorpus.DefaultDictionary;
    /// <summary>The live board the federation's arbiter feeds (<c>demo --http</c>); none by default.</summary>
    public FateLlm.Actors.Board.BoardFeed? Board { get; init; }

    /// <summary>Fewer examples per party: the same comparison in about a third of the time.</summary>
    public static ExperimentSettings Quick(string outDir) => new() { OutDir = outDir, TrainPerParty = 400, TestPerParty = 100 };

    public static ExperimentSettings Full(string outDir) => new() { OutDir = outDir };

    public static ExperimentSettings Demo(string outDir) => new()
    {
        OutDir = outDir, Seeds = [1], Methods = ["lora"], FullFineTuningBaseline = false, TrainPerParty = 400, TestPerParty = 60, DevPerParty = 20,
    };

    /// <summary>
    /// The three-party WordNet split of this experiment, written under its folder (public examples capped at
    /// <paramref name="publicLimit"/>), with the likelihood tasks over its test and dev synsets in <see cref="TaskFolder"/>.
    /// </summary>
    /// <param name="synsets">The dictionary already read (read from <see cref="WordNetDir"/> when null).</param>
    public WordNetSplit WriteSplit(int publicLimit, IReadOnlyList<Synset>? synsets = null)
    {
        synsets ??= WordNetCorpus.Read(WordNetDir);
        var options = SplitOptions(publicLimit);
        WordNetTasks.Write(synsets, TaskFolder, options);
        return WordNetCorpus.Write(synsets, Path.Combine(OutDir, "data"), options);
    }

    public string TaskFolder => Path.Combine(OutDir, "tasks");

    /// <summary>What every setting is scored on: the split's all-domain test set, or (tuning) the parties' pooled dev sets.</summary>
    public List<Example> Evaluation(WordNetSplit split) => EvaluateOn == EvaluationSet.Test
        ? InstructionData.ReadJsonl(split.Test, PaperExperiment.Data)
        : split.Parties.Values.SelectMany(p => InstructionData.ReadJsonl(p.Dev, PaperExperiment.Data)).ToList();

    public WordNetSplitOptions SplitOptions(int publicLimit) =>
        new() { TrainPerParty = TrainPerParty, DevPerParty = DevPerParty, TestPerParty = TestPerParty, PublicLimit = publicLimit };

    public double LearningRate(string method) => method switch { "lora" => LoraLearningRate, "ptuning-v2" => PrefixLearningRate, _ => 1e-3 };

    public PeftConfig Peft(string method) => new()
    {
        Method = PeftConfig.ParseMethod(method), LoraR = 8, LoraAlpha = 16, LoraDropout = 0, LoraTargets = ["q_proj", "v_proj"],
        NumVirtualTokens = 16,
    };
}

/// <param name="RougeLPerExample">Each evaluation example's ROUGE-L F1 (0–100), in the evaluation set's order: paired bootstrap input.</param>
public sealed record Scores(double Rouge1, double Rouge2, double RougeL, double Bleu4, double Loss, IReadOnlyDictionary<string, double> RougeLByDomain,
    double[] RougeLPerExample, double[] Bleu4PerExample, string[] Predictions)
{
    /// <summary>The likelihood tasks over the same synsets, where the experiment ran them.</summary>
    public LikelihoodScores? Likelihood { get; init; }
}

/// <summary>
/// The built-in WordNet likelihood tasks per document, for paired bootstrap: each choice task's acc and acc_norm in
/// percent (0 or 100 per document), and each held-out gloss's share of the corpus bits per byte (−ll / ln 2 · n / Σ
/// bytes, so their mean is the corpus figure).
/// </summary>
public sealed record LikelihoodScores(double[] GlossAcc, double[] GlossAccNorm, double[] WordAcc, double[] KindAcc, double[] BitsPerByte)
{
    public static readonly string[] Tasks = ["wordnet_gloss", "wordnet_word", "wordnet_kind", "wordnet_gloss_ppl"];

    public static LikelihoodScores Of(CausalLm model, ITextTokenizer tok, IReadOnlyDictionary<string, TaskConfig> tasks, int batchSize)
    {
        IReadOnlyDictionary<string, double[]> Run(string name) => TaskEvaluation.Run(model, tok, tasks[name], new HarnessOptions { BatchSize = batchSize }).PerDocument;
        static double[] Percent(double[] xs) => [.. xs.Select(x => 100 * x)];
        var (gloss, word, kind, ppl) = (Run(Tasks[0]), Run(Tasks[1]), Run(Tasks[2]), Run(Tasks[3]));
        var ll = ppl["loglikelihood"];
        var bytes = ppl["bytes"].Sum();
        return new LikelihoodScores(Percent(gloss["acc"]), Percent(gloss["acc_norm"]), Percent(word["acc"]), Percent(kind["acc"]),
            [.. ll.Select(x => -x / Math.Log(2) * ll.Length / bytes)]);
    }
}

public sealed record RunResult(string Method, string Setting, int Seed, Scores Scores, double Seconds);

public sealed record CommunicationResult(string Method, long TrainableParameters, double PercentOfModel, long BytesPerPartyPerRound, long TotalBytes, int Rounds, int Parties,
    double[] BytesPerRound, double[] MeanEvalLossPerRound);

/// <param name="Examples">The evaluation examples (prompt, reference, domain) in the order of every per-example array.</param>
public sealed record ExperimentResult(ExperimentSettings Settings, ZooCard Base, IReadOnlyDictionary<string, int> DataCounts, List<RunResult> Runs,
    List<CommunicationResult> Communication, IReadOnlyList<AnalyticShare> Analytic, double Seconds, IReadOnlyList<EvaluatedExample> Examples, string? LossPlot);

public sealed record EvaluatedExample(string Prompt, string Reference, string Domain);

/// <summary>
/// The FATE-LLM experiment at small scale on WordNet: zero-shot base, each party alone, federated (through the Akka
/// federation), centralized — for each PEFT method and seed, on one all-domain test set.
/// </summary>
public sealed class PaperExperiment(ExperimentSettings s, Action<string> log)
{
    IReadOnlyDictionary<string, TaskConfig>? _tasks;

    /// <summary>
    /// The likelihood tasks over the very synsets every setting is scored on (the dev sets' when tuning), once
    /// <see cref="ExperimentSettings.WriteSplit"/> has written them; null before, and scores then carry none.
    /// </summary>
    IReadOnlyDictionary<string, TaskConfig>? Tasks() => _tasks ??= !File.Exists(Path.Combine(s.TaskFolder, LikelihoodScores.Tasks[0] + ".yaml")) ? null
        : LikelihoodScores.Tasks.ToDictionary(t => t, t =>
        {
            var task = TaskYaml.Load(Path.Combine(s.TaskFolder, t + ".yaml"));
            return s.EvaluateOn == EvaluationSet.Test ? task : task with { TestSplit = task.ValidationSplit };
        });

    /// <summary>
    /// The in-process federation's settings for experiments: no log noise on the console, brisk retries. Warnings and
    /// up only: Akka writes the INFO events of a system's shutdown ("Remoting shut down.") to stdout once its loggers
    /// have stopped, whatever stdout-loglevel says (akkadotnet/akka.net#5246).
    /// </summary>
    public static readonly Config QuietCluster = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        fate-llm.logging.console-level = off
        akka.remote.log-remote-lifecycle-events = off
        akka.cluster.sharding.retry-interval = 300ms
        fate-llm.round.resend-interval = 2s
        """);

    /// <summary>Each party's named datasets: "train" and "dev".</summary>
    public static Dictionary<string, IReadOnlyDictionary<string, string>> Datasets(WordNetSplit split) =>
        split.Parties.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, string>)new Dictionary<string, string>
        {
            ["train"] = kv.Value.Train, ["dev"] = kv.Value.Dev,
        });

    public static readonly DataOptions Data = new() { MaxPromptTokens = 64, MaxResponseTokens = 96, MaxTotalTokens = 192 };

    public async Task<ExperimentResult> RunAsync(IProgress<JobStatus>? federationProgress = null)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(s.OutDir);
        var split = s.WriteSplit(publicLimit: 1);
        log($"data: {string.Join(", ", split.Counts.Where(kv => kv.Key != "public").Select(kv => $"{kv.Key} {kv.Value}"))}");
        var (basePath, card) = EnsureBase();
        var evaluation = s.Evaluation(split);
        log($"scoring every setting on the {(s.EvaluateOn == EvaluationSet.Test ? "all-domain test set" : "parties' pooled dev sets (tuning)")}: {evaluation.Count} examples");
        var runs = new List<RunResult>();

        var zero = Evaluate(basePath, null, evaluation);
        runs.Add(new RunResult("none", "zero-shot", 0, zero, 0));
        log($"zero-shot base: ROUGE-L {zero.RougeL:F2}, BLEU-4 {zero.Bleu4:F2}");

        var partyTrain = split.Parties.ToDictionary(kv => kv.Key, kv => InstructionData.ReadJsonl(kv.Value.Train, Data));
        var communication = new List<CommunicationResult>();
        var datasets = Datasets(split);
        string? lossPlot = null;
        await using var fed = await LocalFederation.StartAsync(Path.Combine(s.OutDir, "nodes-" + DateTime.UtcNow.Ticks), datasets, QuietCluster, board: s.Board);
        log($"federation up: seed {fed.SeedAddress}, parties {string.Join(", ", datasets.Keys)}");

        foreach (var method in s.Methods)
            foreach (var seed in s.Seeds)
            {
                var epochs = s.Rounds * s.LocalEpochs; // same number of local passes in every setting
                foreach (var (party, partyExamples) in partyTrain)
                    runs.Add(Timed(method, $"local:{party}", seed, () => TrainAndEvaluate(basePath, method, partyExamples, epochs, seed, evaluation)));
                runs.Add(Timed(method, "centralized", seed, () => TrainAndEvaluate(basePath, method, partyTrain.Values.SelectMany(x => x).ToList(), epochs, seed, evaluation)));
                var sw = Stopwatch.StartNew();
                var (status, adapterDir) = await Federate(fed, basePath, method, seed, federationProgress);
                var fedScores = Evaluate(basePath, adapterDir, evaluation);
                runs.Add(new RunResult(method, "federated", seed, fedScores, sw.Elapsed.TotalSeconds));
                if (seed == s.Seeds[0]) communication.Add(Communication(method, basePath, status));
                lossPlot ??= Path.Combine(status.OutputDir!, "loss.png");
                foreach (var r in runs.Where(r => r.Method == method && r.Seed == seed))
                    log($"{method} seed {seed} {r.Setting,-16} ROUGE-1 {r.Scores.Rouge1:F2} ROUGE-L {r.Scores.RougeL:F2} BLEU-4 {r.Scores.Bleu4:F2} loss {r.Scores.Loss:F3}");
            }
        if (s.FullFineTuningBaseline)
        {
            var (status, adapterDir) = await Federate(fed, basePath, "full", s.Seeds[0], federationProgress);
            runs.Add(new RunResult("full", "federated", s.Seeds[0], Evaluate(adapterDir, null, evaluation), 0));
            communication.Add(Communication("full", basePath, status));
        }
        var examples = evaluation.Select(e => new EvaluatedExample(e.Prompt, e.Response, Domain(e.Prompt))).ToList();
        return new ExperimentResult(s, card, split.Counts.Where(kv => kv.Key != "public").ToDictionary(), runs, communication, PublishedConfigs.Compute(),
            clock.Elapsed.TotalSeconds, examples, lossPlot is not null && File.Exists(lossPlot) ? lossPlot : null);
    }

    /// <summary>The zoo's base model: built now (with progress) unless the zoo has it cached.</summary>
    public (string Path, ZooCard Card) EnsureBase()
    {
        var zoo = s.Zoo.Open(s.ZooRoot ?? s.Zoo.Root, s.WordNetDir, log);
        var recipe = s.Zoo[s.BaseModel ?? s.Zoo.DemoBase];
        ZooCard card;
        using (var progress = new PretrainLog(log, "pretrain " + recipe.Name)) card = zoo.Ensure(recipe, progress);
        return (zoo.Folder(recipe.Name), card);
    }

    /// <summary>Pretraining progress as a log line every 30 s (the experiment's console is a log, not a terminal bar).</summary>
    sealed class PretrainLog(Action<string> log, string label) : IProgress<TrainProgress>, IDisposable
    {
        readonly Stopwatch _since = Stopwatch.StartNew();
        public void Report(TrainProgress p)
        {
            if (_since.Elapsed.TotalSeconds < 30 && p.Step != p.TotalSteps) return;
            _since.Restart();
            log($"{label}: step {p.Step}/{p.TotalSteps}, loss {p.Loss:F3}, {p.TokensPerSecond:F0} tokens/s, eta {p.Eta:mm\\:ss}");
        }
        public void Dispose() { }
    }

    RunResult Timed(string method, string setting, int seed, Func<Scores> run)
    {
        var sw = Stopwatch.StartNew();
        var scores = run();
        return new RunResult(method, setting, seed, scores, sw.Elapsed.TotalSeconds);
    }

    /// <param name="peft">Instead of the method's configuration (e.g. PEFT's per-family default targets for a GPT-2 model).</param>
    internal Scores TrainAndEvaluate(string basePath, string method, List<Example> train, int epochs, int seed, List<Example> test, PeftConfig? peft = null)
    {
        using var run = FineTuning.Open(basePath, peft ?? s.Peft(method), seed);
        run.Train(run.Tokenize(train, Data), new TrainOptions
        {
            Epochs = epochs, BatchSize = s.BatchSize, LearningRate = s.LearningRate(method), Schedule = LrSchedule.Constant, Seed = seed,
        });
        return Score(run.Model, test, run.Tokenizer);
    }

    public Scores Evaluate(string modelOrAdapterBase, string? adapterDir, List<Example> test)
    {
        using var model = adapterDir is null ? HfCheckpoint.Load(modelOrAdapterBase) : AdapterFolder.Load(adapterDir, modelOrAdapterBase).Model;
        return Score(model, test, TokenizerLoader.Load(modelOrAdapterBase, model.Config));
    }

    internal Scores Score(CausalLm model, List<Example> test, ITextTokenizer tok)
    {
        var report = Evaluator.Run(model, tok, test, Data, new EvalOptions { BatchSize = 32, Sampling = new SamplingOptions { MaxNewTokens = s.MaxNewTokens } });
        var each = report.Samples.Select(x => GenerationScores.Of(x.Reference, x.Prediction)).ToArray();
        var byDomain = report.Samples.Select((x, i) => (Domain(x.Prompt), each[i].RougeL)).GroupBy(x => x.Item1).ToDictionary(g => g.Key, g => g.Average(x => x.RougeL));
        var sc = report.Scores!;
        return new Scores(sc.Rouge1, sc.Rouge2, sc.RougeL, sc.Bleu4, report.Loss, byDomain, each.Select(x => x.RougeL).ToArray(), each.Select(x => x.Bleu4).ToArray(),
            report.Samples.Select(x => x.Prediction).ToArray())
        {
            Likelihood = Tasks() is { } tasks ? LikelihoodScores.Of(model, tok, tasks, 32) : null,
        };
    }

    internal static string Domain(string content)
    {
        const string key = "domain: ";
        var i = content.IndexOf(key, StringComparison.Ordinal);
        if (i < 0) return "?";
        var end = content.IndexOf(" | ", i, StringComparison.Ordinal);
        return content[(i + key.Length)..(end < 0 ? content.Length : end)];
    }

    async Task<(JobStatus Status, string AdapterDir)> Federate(LocalFederation fed, string basePath, string method, int seed, IProgress<JobStatus>? progress)
    {
        var jobId = $"{method}-seed{seed}-{DateTime.UtcNow:HHmmssfff}";
        var peft = s.Peft(method);
        var spec = Job(jobId, basePath, fed, method, seed);
        if (await fed.SubmitAsync(spec) is JobRejected r) throw new InvalidOperationException($"job {jobId} rejected: {r.Reason}");
        var status = await fed.WaitAsync(jobId, TimeSpan.FromHours(2), progress: progress);
        if (status.State != JobState.Completed) throw new InvalidOperationException($"federated {method} seed {seed}: {status.State}: {status.Reason}");
        return (status, Path.Combine(status.OutputDir!, "adapter"));
    }

    /// <summary>The federated job of one setting: the experiment's local training, 900 s per exchange, every party every round.</summary>
    internal JobSpec Job(string jobId, string basePath, LocalFederation fed, string method, int seed)
    {
        var spec = JobFile.Default(jobId, basePath, fed.Parties.Keys.Order().Select(o => new PartySpec(o, "train", "dev")).ToArray(),
            Path.Combine(s.OutDir, "federated", jobId));
        return spec with
        {
            Peft = s.Peft(method), Rounds = s.Rounds, Seed = seed, Data = Data, Evaluation = new EvaluationOptions(8, 16),
            Local = spec.Local with { Epochs = s.LocalEpochs, BatchSize = s.BatchSize, LearningRate = s.LearningRate(method), Schedule = LrSchedule.Constant },
            Round = spec.Round with { DeadlineSeconds = 900 },
        };
    }

    CommunicationResult Communication(string method, string basePath, JobStatus status)
    {
        using var model = HfCheckpoint.Load(basePath);
        PeftModel.Apply(model, s.Peft(method));
        var spec = PeftModel.Spec(model);
        var perRound = status.Rounds.Select(r => (double)r.Parties.Sum(p => p.UploadBytes + p.DownloadBytes)).ToArray();
        var evalLoss = status.Rounds.Select(r => r.Parties.Where(p => p.EvalLoss.HasValue).Select(p => p.EvalLoss!.Value).DefaultIfEmpty(double.NaN).Average()).ToArray();
        var parties = status.Rounds.FirstOrDefault()?.Parties.Length ?? 0;
        var perPartyRound = status.Rounds.FirstOrDefault()?.Parties.FirstOrDefault()?.UploadBytes ?? 0;
        return new CommunicationResult(method, spec.Parameters, 100.0 * spec.Parameters / model.Config.ParameterCount(), perPartyRound,
            (long)perRound.Sum(), status.Rounds.Length, parties, perRound, evalLoss);
    }
}
