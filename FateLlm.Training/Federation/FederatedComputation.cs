using System.Diagnostics;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using FateLlm.Training.Privacy.SecureAggregation;
using FateLlm.Training.Runtime;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using static TorchSharp.torch;

namespace FateLlm.Training.Federation;

/// <summary>
/// The numeric work of a federated job, as plain functions over safetensors bytes so actors only orchestrate:
/// the initial global adapter, a party's local round, the arbiter's aggregation, evaluation and export.
/// </summary>
public static class FederatedComputation
{
    /// <summary>The round-0 global adapter: PEFT applied to the base model with the job's seed.</summary>
    public static byte[] InitialAdapter(FederatedTask task)
    {
        using var model = PreparedModel(task);
        var state = PeftModel.TrainableState(model);
        try { return SafeTensors.ToBytes(state); }
        finally { foreach (var t in state.Values) t.Dispose(); }
    }

    /// <summary>Verifies the local copy of the base model is the one the job names (SHA-256 of its weight files).</summary>
    public static void VerifyModel(FederatedTask task, string who)
    {
        var digest = HfCheckpoint.WeightsDigest(task.ModelPath);
        if (digest != task.ModelDigest)
            throw new ModelFormatException($"{who}: base model '{task.ModelPath}' has weights digest {digest[..12]}…, the job expects {task.ModelDigest[..12]}…");
    }

    static CausalLm PreparedModel(FederatedTask task)
    {
        var model = HfCheckpoint.Load(task.ModelPath);
        manual_seed(task.Seed);
        PeftModel.Apply(model, task.Peft);
        return model;
    }

    /// <summary>
    /// One party's round: start from the global adapter, evaluate it on the party's dev data (if any), train on the
    /// party's data, and return Δ = θ_local − θ_global as safetensors bytes.
    /// </summary>
    public static LocalRoundResult LocalRound(FederatedTask task, byte[] globalAdapter, string trainData, string? evalData, int round, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        TorchRuntime.SetThreads(task.Threads);
        var examples = InstructionData.ReadJsonl(trainData, task.Data);
        var dev = evalData is null ? null : InstructionData.ReadJsonl(evalData, task.Data);
        using var model = PreparedModel(task);
        var tok = TokenizerLoader.Load(task.ModelPath, model.Config);
        var global = SafeTensors.FromBytes(globalAdapter, "global adapter");
        try
        {
            PeftModel.LoadTrainableState(model, global, "global adapter");
            var pad = tok.PadId ?? tok.EosId ?? 0;
            double? evalLoss = dev is null ? null
                : Evaluator.Loss(model, dev.Select(e => InstructionData.Tokenize(e, tok, task.Data)).ToList(), pad, task.BatchSize).Loss;
            var data = examples.Select(e => InstructionData.Tokenize(e, tok, task.Data)).ToList();
            var result = new LocalTrainer(model, new TrainOptions
            {
                Epochs = task.LocalEpochs, MaxSteps = task.LocalSteps, BatchSize = task.BatchSize, LearningRate = task.LearningRate,
                WarmupRatio = task.WarmupRatio, Schedule = task.Schedule, Seed = task.Seed * 1000 + round,
                ProximalMu = task.ProximalMu, ProximalReference = task.ProximalMu > 0 ? global : null,
            }, pad).Train(data, ct: ct);
            var local = PeftModel.TrainableState(model);
            var delta = local.ToDictionary(kv => kv.Key, kv => kv.Value.sub(global[kv.Key]));
            var bytes = SafeTensors.ToBytes(delta);
            foreach (var t in local.Values.Concat(delta.Values)) t.Dispose();
            return new LocalRoundResult(bytes, result.Samples, result.Steps, result.FirstLoss, result.LastLoss, evalLoss, sw.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (var t in global.Values) t.Dispose();
        }
    }

    /// <summary>Applies a strategy to the global adapter and the parties' deltas; returns the new global and server state.</summary>
    public static (byte[] Global, byte[] ServerState) Aggregate(byte[] global, IReadOnlyList<(string Party, byte[] Delta, long Samples)> updates,
        byte[]? serverState, IAggregationStrategy strategy)
    {
        var r = AggregateValidated(global, updates, serverState, strategy, new RoundRules(double.PositiveInfinity, 1, new DpOptions(), updates.Count));
        return (r.Global, r.ServerState);
    }

    /// <summary>
    /// The arbiter's plain round: every update is validated (<see cref="UpdateValidation"/>); rejected ones are left
    /// out and reported; the rest are aggregated by the strategy, under central DP when the job asks for it.
    /// Fails when fewer than <see cref="RoundRules.MinAccepted"/> updates pass.
    /// </summary>
    public static AggregateResult AggregateValidated(byte[] global, IReadOnlyList<(string Party, byte[] Delta, long Samples)> updates,
        byte[]? serverState, IAggregationStrategy strategy, RoundRules rules)
    {
        using var scope = NewDisposeScope();
        var g = SafeTensors.FromBytes(global, "global adapter");
        var state = ReadState(serverState);
        var rejected = new List<(string Party, string Reason)>();
        var deltas = new List<AdapterDelta>();
        foreach (var u in updates)
        {
            var (tensors, problem) = UpdateValidation.Parse(u.Delta);
            problem ??= UpdateValidation.Check(g, tensors!, rules.MaxNorm);
            if (problem is not null) rejected.Add((u.Party, problem));
            else deltas.Add(new AdapterDelta(u.Party, tensors!, u.Samples));
        }
        if (deltas.Count < rules.MinAccepted)
            throw new AggregationException($"{deltas.Count} valid updates, {rules.MinAccepted} required; rejected: {string.Join("; ", rejected.Select(r => $"{r.Party}: {r.Reason}"))}");
        var outcome = rules.Dp.Mode == DpMode.Central
            ? PrivateAggregation.Central(g, deltas, state, strategy, rules.Dp, rules.ExpectedParties)
            : strategy.Aggregate(g, deltas, state);
        return new AggregateResult(SafeTensors.ToBytes(outcome.Global), SafeTensors.ToBytes(outcome.ServerState), rejected, outcome.Metrics);
    }

    /// <summary>The clip norm this round's DP uses (the adaptive one from the server state, else the configured one).</summary>
    public static double CurrentClip(byte[]? serverState, DpOptions dp)
    {
        using var scope = NewDisposeScope();
        return PrivateAggregation.CurrentClip(ReadState(serverState), dp);
    }

    /// <summary>
    /// A party's masked contribution: its delta flattened (clipped and noised under distributed DP, weighted otherwise)
    /// and masked by its SecAgg+ client. Returns the masked words as little-endian bytes.
    /// </summary>
    public static byte[] MaskedInput(SecAggClient client, byte[] delta, long samples, long sampleCap, DpOptions dp, double clip, int expectedParties,
        IReadOnlyList<EncryptedShare> inbox)
    {
        using var scope = NewDisposeScope();
        var tensors = SafeTensors.FromBytes(delta, "local delta");
        var (values, extras) = AdapterVector.PrepareInput(tensors, samples, sampleCap, dp, clip, expectedParties);
        var words = client.MaskInput(values, extras, inbox);
        return System.Runtime.InteropServices.MemoryMarshal.AsBytes(words.AsSpan()).ToArray();
    }

    /// <summary>Reads masked words sent by a party; the length must be the session's.</summary>
    public static uint[] MaskedWords(byte[] bytes, SecAggSession session, string party)
    {
        if (bytes.Length != session.Words * 4) throw new SecAggException($"party '{party}' uploaded {bytes.Length} masked bytes, expected {session.Words * 4}");
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(bytes).ToArray();
    }

    /// <summary>The arbiter's secure round: unmask the sum, turn it into the mean update (DP or weighted) and apply the strategy.</summary>
    public static AggregateResult AggregateSecure(byte[] global, SecAggSession session, SecAggResult unmasked, byte[]? serverState,
        IAggregationStrategy strategy, DpOptions dp, int expectedParties)
    {
        using var scope = NewDisposeScope();
        var g = SafeTensors.FromBytes(global, "global adapter");
        var state = ReadState(serverState);
        var (values, extras) = unmasked.Decode(session);
        var sum = AdapterVector.Unflatten(g, values);
        var outcome = dp.Enabled
            ? PrivateAggregation.FromNoisedSum(g, sum, dp.AdaptiveClip ? extras[1] : unmasked.Contributors.Count, unmasked.Contributors.Count, state, strategy, dp, expectedParties)
            : PrivateAggregation.FromWeightedSum(g, sum, extras[0], state, strategy);
        return new AggregateResult(SafeTensors.ToBytes(outcome.Global), SafeTensors.ToBytes(outcome.ServerState), [], outcome.Metrics);
    }

    /// <summary>The vector length secure aggregation works on for an adapter.</summary>
    public static int AdapterLength(byte[] adapter)
    {
        using var scope = NewDisposeScope();
        return checked((int)AdapterVector.Length(SafeTensors.FromBytes(adapter, "global adapter")));
    }

    static Dictionary<string, Tensor> ReadState(byte[]? serverState) =>
        serverState is { Length: > 0 } ? SafeTensors.FromBytes(serverState, "server state") : new Dictionary<string, Tensor>();

    public static EvaluationResult Evaluate(FederatedTask task, byte[] adapter, string data, int limit, SamplingOptions sampling)
    {
        TorchRuntime.SetThreads(task.Threads);
        var examples = InstructionData.ReadJsonl(data, task.Data);
        using var model = PreparedModel(task);
        var tok = TokenizerLoader.Load(task.ModelPath, model.Config);
        var state = SafeTensors.FromBytes(adapter, "global adapter");
        try { PeftModel.LoadTrainableState(model, state, "global adapter"); }
        finally { foreach (var t in state.Values) t.Dispose(); }
        var report = Evaluator.Run(model, tok, examples, task.Data, new EvalOptions { Limit = limit, BatchSize = Math.Max(8, task.BatchSize), Sampling = sampling });
        var s = report.Scores;
        return new EvaluationResult(report.Loss, report.Perplexity, s?.Rouge1, s?.Rouge2, s?.RougeL, s?.Bleu4, s?.Samples ?? 0);
    }

    /// <summary>
    /// Writes a global adapter as a HF PEFT adapter folder (a full checkpoint for full fine-tuning) and, for LoRA,
    /// also merged into the base weights as a plain HF checkpoint in <paramref name="mergedFolder"/>.
    /// </summary>
    public static void ExportAdapter(FederatedTask task, byte[] adapter, string folder, string? mergedFolder = null)
    {
        using var model = PreparedModel(task);
        var state = SafeTensors.FromBytes(adapter, "global adapter");
        try { PeftModel.LoadTrainableState(model, state, "global adapter"); }
        finally { foreach (var t in state.Values) t.Dispose(); }
        AdapterFolder.Save(model, task.Peft, folder, task.ModelPath);
        if (mergedFolder is null || task.Peft.Method != PeftMethod.Lora) return;
        PeftModel.MergeLora(model);
        HfCheckpoint.Save(model, mergedFolder);
        TokenizerLoader.CopyFiles(task.ModelPath, mergedFolder);
    }
}
