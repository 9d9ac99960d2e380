using System.CommandLine;
using TorchSharp;
using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

internal static class TrainingCommands
{
    public static Command Train(Terminal t)
    {
        var model = Required<string>("--model", "Base model folder (HF format)");
        var data = Required<string>("--data", "Training JSONL");
        var evalData = new Option<string?>("--eval-data") { Description = "Dev JSONL: loss before/after, and ROUGE/BLEU after" };
        // Defaults are the job defaults of reference.conf: a local run trains as a federated job would.
        var d = JobFile.Defaults;
        var peft = Opt("--peft", "lora | ptuning-v2 | full", d.GetString("peft.method"));
        var loraR = Opt("--lora-r", "LoRA rank", d.GetInt("peft.r"));
        var loraAlpha = Opt("--lora-alpha", "LoRA alpha", d.GetDouble("peft.alpha"));
        var loraDropout = Opt("--lora-dropout", "LoRA dropout", d.GetDouble("peft.dropout"));
        var loraTargets = Opt("--lora-targets", "Comma-separated module names, or all-linear (default: c_attn for gpt2, q_proj,v_proj for llama)", "");
        var virtualTokens = Opt("--num-virtual-tokens", "P-Tuning v2 prefix length", d.GetInt("peft.num-virtual-tokens"));
        var prefixProjection = Opt("--prefix-projection", "P-Tuning v2 reparameterisation MLP", false);
        var baseDtype = Opt("--base-dtype", "auto | fp32 | bf16 | fp16: dtype the frozen base is loaded in (auto: the checkpoint's; adapters train in fp32)", d.GetString("peft.base-dtype"));
        var epochs = Opt("--epochs", "Epochs", d.GetInt("local.epochs"));
        var maxSteps = new Option<int?>("--max-steps") { Description = "Stop after this many optimizer steps" };
        var lr = Opt("--lr", "Peak learning rate", d.GetDouble("local.learning-rate"));
        var batch = Opt("--batch-size", "Examples per micro-batch", d.GetInt("local.batch-size"));
        var accum = Opt("--grad-accum", "Micro-batches per optimizer step", 1);
        var warmup = Opt("--warmup-ratio", "Fraction of steps spent warming up", d.GetDouble("local.warmup-ratio"));
        var schedule = Opt("--schedule", "constant | linear | cosine", d.GetString("local.schedule"));
        var weightDecay = Opt("--weight-decay", "AdamW weight decay", 0.0);
        var clip = Opt("--max-grad-norm", "Gradient clipping norm (0 = off)", 1.0);
        var seed = Opt("--seed", "Seed for init, data order and dropout", d.GetLong("seed"));
        var resume = Opt("--resume", "Continue from the latest epoch checkpoint in --out", false);
        var evalLimit = Opt("--eval-limit", "Evaluate on at most N dev examples (0 = all)", 0);
        var dpSgd = Opt("--dp-sgd", "Example-level DP-SGD: Poisson batches of rate --batch-size / examples, each example's gradient clipped, Gaussian noise", false);
        var dpNoise = Opt("--dp-noise-multiplier", "DP-SGD's σ (noise std = σ × --dp-clip-norm)", d.GetDouble("local.dp-sgd.noise-multiplier"));
        var dpTarget = new Option<double?>("--dp-target-epsilon") { Description = "Solve σ so that the run spends this ε at --dp-delta (instead of --dp-noise-multiplier)" };
        var dpClip = Opt("--dp-clip-norm", "DP-SGD's per-example clip norm C", d.GetDouble("local.dp-sgd.clip-norm"));
        var dpDelta = Opt("--dp-delta", "DP-SGD's δ", d.GetDouble("local.dp-sgd.delta"));
        var outDir = Required<string>("--out", "Output adapter folder (PEFT layout; checkpoints/ inside)");
        var dataSet = new DataOptionSet();
        var runtime = new RuntimeOptionSet();
        Option[] options = [model, data, evalData, peft, loraR, loraAlpha, loraDropout, loraTargets, virtualTokens, prefixProjection, baseDtype,
            epochs, maxSteps, lr, batch, accum, warmup, schedule, weightDecay, clip, seed, resume, evalLimit, dpSgd, dpNoise, dpTarget, dpClip, dpDelta, outDir,
            .. dataSet.All, .. runtime.All];
        return new Command("train", "Fine-tune a model locally with LoRA, P-Tuning v2 or full fine-tuning").With(p =>
        {
            var device = runtime.Apply(p);
            var dataOptions = dataSet.Read(p);
            var peftConfig = new PeftConfig
            {
                Method = ParseEnum(() => PeftConfig.ParseMethod(p.GetValue(peft)!)),
                LoraR = Positive(p.GetValue(loraR), "--lora-r"), LoraAlpha = p.GetValue(loraAlpha), LoraDropout = p.GetValue(loraDropout),
                LoraTargets = p.GetValue(loraTargets)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                NumVirtualTokens = Positive(p.GetValue(virtualTokens), "--num-virtual-tokens"), PrefixProjection = p.GetValue(prefixProjection),
                BaseDtype = ParseEnum(() => PeftConfig.ParseDtype(p.GetValue(baseDtype)!)),
            };
            var trainOptions = new TrainOptions
            {
                Epochs = Positive(p.GetValue(epochs), "--epochs"), MaxSteps = p.GetValue(maxSteps), LearningRate = p.GetValue(lr),
                BatchSize = Positive(p.GetValue(batch), "--batch-size"), GradientAccumulation = Positive(p.GetValue(accum), "--grad-accum"),
                WarmupRatio = p.GetValue(warmup), Schedule = ParseEnum(() => TrainOptions.ParseSchedule(p.GetValue(schedule)!)),
                WeightDecay = p.GetValue(weightDecay), MaxGradNorm = p.GetValue(clip), Seed = p.GetValue(seed),
                CheckpointDir = Path.Combine(p.GetValue(outDir)!, "checkpoints"), Resume = p.GetValue(resume), Device = device,
            };
            if (trainOptions.MaxSteps is <= 0) throw new UsageException("--max-steps must be positive");
            DpSgdOptions? privacy = null;
            if (p.GetValue(dpSgd))
            {
                privacy = DpSgdOptions.Off with
                {
                    Enabled = true, NoiseMultiplier = p.GetValue(dpNoise), TargetEpsilon = p.GetValue(dpTarget), ClipNorm = p.GetValue(dpClip), Delta = p.GetValue(dpDelta),
                };
                try { privacy.Validate(); }
                catch (ArgumentException e) { throw new UsageException($"--dp-sgd: {e.Message}"); }
                if (trainOptions.GradientAccumulation != 1 || trainOptions.Resume)
                    throw new UsageException("--dp-sgd cannot run with --grad-accum > 1 or --resume (a DP-SGD run is one Poisson-sampled pass, not resumed mid-way)");
            }
            RunTrain(t, p.GetValue(model)!, p.GetValue(data)!, p.GetValue(evalData), peftConfig, trainOptions, dataOptions,
                p.GetValue(evalLimit), p.GetValue(outDir)!, device, privacy);
        }, options);
    }

    static void RunTrain(Terminal t, string modelDir, string dataPath, string? evalPath, PeftConfig peft, TrainOptions train, DataOptions dataOptions,
        int evalLimit, string outDir, TorchSharp.torch.Device device, DpSgdOptions? privacy = null)
    {
        // Read and validate all inputs before any work, so a bad line costs nothing.
        var examples = InstructionData.ReadJsonl(dataPath, dataOptions);
        var dev = evalPath is null ? null : InstructionData.ReadJsonl(evalPath, dataOptions);
        using var run = FineTuning.Open(modelDir, peft, train.Seed, device);
        var m = run.Model;
        var spec = PeftModel.Spec(m);
        t.Out.WriteLine($"{PeftConfig.MethodName(peft.Method)}: {spec.Parameters:N0} trainable parameters ({100.0 * spec.Parameters / m.Config.ParameterCount():F3}% of {m.Config.ParameterCount():N0}), {spec.Bytes:N0} bytes per update");
        var tokenized = run.Tokenize(examples, dataOptions);
        var devTokens = dev is null ? null : run.Tokenize(dev.Take(evalLimit > 0 ? evalLimit : int.MaxValue), dataOptions);
        double? before = devTokens is null ? null : run.Loss(devTokens, train.BatchSize);
        if (before is double b) t.Out.WriteLine($"eval loss before: {b:F4} (ppl {Math.Exp(b):F2})");
        Directory.CreateDirectory(outDir);
        DpSgdSpent? spent = null;
        if (privacy is not null)
        {
            var q = DpSgd.SamplingRate(train.BatchSize, tokenized.Count);
            var steps = DpSgd.Steps(train.MaxSteps, train.Epochs, q);
            var sigma = DpSgd.NoiseMultiplierFor(privacy, q, steps);
            spent = new DpSgdSpent(q, sigma, steps, DpSgd.Epsilon(q, sigma, steps, privacy.Delta), privacy.Delta);
            train = train with { Private = new PrivateTraining(sigma, privacy.ClipNorm, q) };
            t.Out.WriteLine($"DP-SGD: {steps} Poisson batches at q = {q:G3}, σ = {sigma:G4}, C = {privacy.ClipNorm:G4}: ε = {spent.Epsilon:F3} at δ = {privacy.Delta:G3}");
        }
        TrainResult result;
        using (var progress = TrainingProgress.Create(t))
            result = run.Train(tokenized, train, progress);
        if (result.ResumedFromEpoch > 0) t.Out.WriteLine($"resumed after epoch {result.ResumedFromEpoch}");
        t.Out.WriteLine($"trained {result.Steps} steps on {result.Samples} samples: loss {result.FirstLoss:F4} → {result.LastLoss:F4}, {result.TokensPerSecond:F0} tokens/s, {result.Elapsed.TotalSeconds:F1}s");
        run.SaveAdapter(outDir, dataOptions);
        var summary = new Dictionary<string, object?>
        {
            ["method"] = PeftConfig.MethodName(peft.Method), ["trainable_parameters"] = spec.Parameters, ["update_bytes"] = spec.Bytes,
            ["steps"] = result.Steps, ["first_loss"] = result.FirstLoss, ["last_loss"] = result.LastLoss, ["tokens_per_second"] = result.TokensPerSecond,
            ["eval_loss_before"] = before,
            ["dp_sgd"] = spent,
        };
        if (dev != null)
        {
            var report = run.Evaluate(dev, dataOptions, new EvalOptions { Limit = evalLimit, BatchSize = train.BatchSize });
            t.Out.WriteLine($"eval loss after: {report.Loss:F4} (ppl {report.Perplexity:F2})");
            PrintScores(t, report);
            summary["eval_loss_after"] = report.Loss;
            summary["scores"] = report.Scores;
        }
        File.WriteAllText(Path.Combine(outDir, "train_summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        t.Out.WriteLine($"adapter written to {outDir}");
    }

    public static Command Eval(Terminal t)
    {
        var model = new Option<string?>("--model") { Description = "Base model folder" };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder (PEFT layout) or a merged/full model folder" };
        var data = Required<string>("--data", "Test JSONL");
        var json = Opt("--json", "Print the report as JSON", false);
        var batch = Opt("--batch-size", "Batch size", 16);
        var limit = Opt("--limit", "Evaluate at most N examples (0 = all)", 0);
        var noGenerate = Opt("--no-generate", "Loss and perplexity only", false);
        var dataSet = new DataOptionSet();
        var sampling = new SamplingOptionSet();
        var runtime = new RuntimeOptionSet();
        return new Command("eval", "Loss, perplexity, ROUGE-1/2/L and BLEU-4 on a JSONL set").With(p =>
        {
            var device = runtime.Apply(p);
            var dataOptions = dataSet.Read(p);
            var samplingOptions = sampling.Read(p);
            var examples = InstructionData.ReadJsonl(p.GetValue(data)!, dataOptions);
            using var loaded = LoadedModel.Open(p.GetValue(model), p.GetValue(adapter), device);
            var report = Evaluator.Run(loaded.Model, loaded.Tokenizer, examples, dataOptions, new EvalOptions
            {
                BatchSize = Positive(p.GetValue(batch), "--batch-size"), Limit = p.GetValue(limit), Generate = !p.GetValue(noGenerate),
                Sampling = samplingOptions,
            });
            if (p.GetValue(json))
            {
                t.Out.WriteLine(JsonSerializer.Serialize(new
                {
                    loss = report.Loss, perplexity = report.Perplexity, tokens = report.Tokens,
                    rouge1 = report.Scores?.Rouge1, rouge2 = report.Scores?.Rouge2, rougeL = report.Scores?.RougeL, bleu4 = report.Scores?.Bleu4,
                    samples = report.Scores?.Samples ?? examples.Count,
                }));
                return;
            }
            t.Out.WriteLine($"loss {report.Loss:F4}  perplexity {report.Perplexity:F2}  ({report.Tokens:N0} response tokens)");
            PrintScores(t, report);
        }, [model, adapter, data, json, batch, limit, noGenerate, .. dataSet.All, .. sampling.All, .. runtime.All]);
    }

    public static Command Generate(Terminal t)
    {
        var model = new Option<string?>("--model") { Description = "Base model folder" };
        var adapter = new Option<string?>("--adapter") { Description = "Adapter folder" };
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text, continued exactly as given (as HF generate does); with --chat, the last user message" };
        var template = new Option<string?>("--template")
        {
            Description = "Apply this prompt template ({prompt} is replaced by --prompt); default: the template the adapter was trained with, none without one",
        };
        var chat = new Option<bool>("--chat")
        {
            Description = "Send --prompt as a user message through the model's chat_template (tokenizer_config.json) with the assistant turn opened",
        };
        var system = new Option<string?>("--system") { Description = "With --chat: a system message before the conversation" };
        var messages = new Option<string?>("--messages")
        {
            Description = "A conversation for the chat template (implies --chat): a JSON list of messages, or an object with 'messages' " +
                "and any variables the template reads ('tools', 'documents', 'enable_thinking', ...); --prompt, if given, is appended as a user message",
        };
        var printPrompt = new Option<bool>("--print-prompt") { Description = "Print the text the model is given and its token ids before the continuation" };
        var sampling = new SamplingOptionSet();
        var runtime = new RuntimeOptionSet();
        return new Command("generate", "Continue a prompt (greedy, temperature, top-k, top-p)").With(p =>
        {
            var device = runtime.Apply(p);
            var o = sampling.Read(p);
            using var loaded = LoadedModel.Open(p.GetValue(model), p.GetValue(adapter), device);
            var text = p.GetValue(prompt);
            var chosen = p.GetValue(template) ?? loaded.Data?.Template;
            if (chosen is not null && !chosen.Contains("{prompt}")) throw new UsageException("--template must contain {prompt}");
            List<int> ids;
            if (p.GetValue(chat) || p.GetValue(messages) is not null)
            {
                if (p.GetValue(template) is not null) throw new UsageException("--chat and --template exclude each other");
                var (chatTemplate, bos, eos) = TokenizerLoader.ReadChatTemplate(loaded.BaseFolder)
                    ?? throw new UsageException($"--chat: {Path.Combine(loaded.BaseFolder, TokenizerLoader.ConfigFile)} has no field 'chat_template'");
                var (conversation, variables) = Conversation(p.GetValue(messages), p.GetValue(system), text);
                variables.TryAdd("bos_token", bos);
                variables.TryAdd("eos_token", eos);
                // As apply_chat_template(tokenize=True): the rendered text already holds its special tokens.
                text = chatTemplate.Render(conversation, addGenerationPrompt: true, variables);
                ids = loaded.Tokenizer.Encode(text).ToList();
            }
            else
            {
                if (text is null) throw new UsageException("--prompt is required (or --messages)");
                if (p.GetValue(system) is not null) throw new UsageException("--system needs --chat");
                ids = chosen is null ? InstructionData.TextIds(text, loaded.Tokenizer)
                    : InstructionData.PromptIds(new Example(text, "", "--prompt"), loaded.Tokenizer,
                        new DataOptions { Template = chosen, MaxPromptTokens = loaded.Model.Config.MaxPositions, MaxTotalTokens = loaded.Model.Config.MaxPositions });
                if (ids.Count == 0) throw new UsageException("--prompt is empty and the tokenizer adds no BOS token to start from");
            }
            if (p.GetValue(printPrompt))
            {
                t.Out.WriteLine(chosen is null || p.GetValue(chat) || p.GetValue(messages) is not null ? text : chosen.Replace("{prompt}", text));
                t.Out.WriteLine($"ids: [{string.Join(", ", ids)}]");
            }
            t.Out.WriteLine(loaded.Tokenizer.Decode(TextGeneration.Generate(loaded.Model, ids, o, loaded.Tokenizer.EosId)));
        }, [model, adapter, prompt, template, chat, system, messages, printPrompt, .. sampling.All, .. runtime.All]);
    }

    /// <summary>
    /// The messages and template variables of <c>--messages</c> (a list, or an object with 'messages' and variables),
    /// with --system first and --prompt last; every problem names the file and, for JSON errors, the line.
    /// </summary>
    static (JsonArray Messages, Dictionary<string, object?> Variables) Conversation(string? file, string? system, string? prompt)
    {
        var variables = new Dictionary<string, object?>();
        JsonArray list = [];
        if (file is not null)
        {
            if (!File.Exists(file)) throw new UsageException($"--messages: {file} not found");
            JsonNode? root;
            try { root = JsonNode.Parse(File.ReadAllText(file)); }
            catch (JsonException e) { throw new UsageException($"--messages: {file}:{(e.LineNumber ?? 0) + 1}: not valid JSON ({e.Message})"); }
            list = root switch
            {
                JsonArray a => a,
                JsonObject o when o["messages"] is JsonArray a => a,
                _ => throw new UsageException($"--messages: {file} must be a list of messages or an object with a 'messages' list"),
            };
            if (root is JsonObject vars)
                foreach (var (key, value) in vars.Where(kv => kv.Key != "messages")) variables[key] = value?.DeepClone();
            list = (JsonArray)list.DeepClone();
            for (int i = 0; i < list.Count; i++)
                if (list[i] is not JsonObject m || m["role"] is not JsonValue role || !role.TryGetValue<string>(out _))
                    throw new UsageException($"--messages: {file}: messages[{i}] must be an object with a 'role' (and usually 'content')");
        }
        if (system is not null) list.Insert(0, new JsonObject { ["role"] = "system", ["content"] = system });
        if (prompt is not null) list.Add(new JsonObject { ["role"] = "user", ["content"] = prompt });
        if (list.Count == 0) throw new UsageException("--chat needs a conversation: --prompt, --messages or both");
        return (list, variables);
    }

    internal static void PrintScores(Terminal t, EvalReport report)
    {
        if (report.Scores is not { } s) return;
        t.Out.WriteLine($"ROUGE-1 {s.Rouge1:F2}  ROUGE-2 {s.Rouge2:F2}  ROUGE-L {s.RougeL:F2}  BLEU-4 {s.Bleu4:F2}  ({s.Samples} samples)");
    }

    internal static int Positive(int v, string name) => v > 0 ? v : throw new UsageException($"{name} must be positive, got {v}");

    internal static T ParseEnum<T>(Func<T> parse)
    {
        try { return parse(); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }
}
