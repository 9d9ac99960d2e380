using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Trainer;

/// <summary>
/// Load a base model → apply PEFT (seeded) → optionally load a trainable state → train → evaluate → save. The one path
/// the <c>train</c> command, the experiments and every party's local round share.
/// </summary>
public sealed class FineTuning : IDisposable
{
    public CausalLm Model { get; }
    public ITextTokenizer Tokenizer { get; }
    public PeftConfig Peft { get; }
    public string ModelPath { get; }
    /// <summary>Seconds this use spent loading the base: 0 when a resident copy was lent (<see cref="ResidentModels"/>).</summary>
    public double LoadSeconds { get; internal set; }
    public int PadId => Tokenizer.PadId ?? Tokenizer.EosId ?? 0;

    FineTuning(CausalLm model, ITextTokenizer tokenizer, PeftConfig peft, string modelPath)
    {
        Model = model;
        Tokenizer = tokenizer;
        Peft = peft;
        ModelPath = modelPath;
    }

    /// <summary>The base model with PEFT applied; <paramref name="initSeed"/> seeds the adapter's initialisation.</summary>
    public static FineTuning Open(string modelPath, PeftConfig peft, long initSeed, Device? device = null) =>
        Open(modelPath, peft, initSeed, m => PeftModel.Apply(m, peft), device);

    /// <summary>
    /// The base model with its trainable parameters chosen by <paramref name="makeTrainable"/> (a plug-in's own choice,
    /// such as offsite tuning's adapter blocks), seeded by <paramref name="initSeed"/>.
    /// </summary>
    public static FineTuning Open(string modelPath, PeftConfig peft, long initSeed, Action<CausalLm> makeTrainable, Device? device = null)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var model = HfCheckpoint.Load(modelPath, peft.BaseDtypeFor(modelPath));
        try
        {
            model.Randomness.manual_seed(initSeed);
            makeTrainable(model);
            if (device is not null) model.to(device);
            return new FineTuning(model, TokenizerLoader.Load(modelPath, model.Config), peft, modelPath) { LoadSeconds = sw.Elapsed.TotalSeconds };
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Loads a trainable state (safetensors bytes of a global adapter) into the model.</summary>
    public void LoadTrainable(byte[] state, string origin)
    {
        using var scope = NewDisposeScope();
        PeftModel.LoadTrainableState(Model, IO.SafeTensors.FromBytes(state, origin), origin);
    }

    public byte[] TrainableBytes()
    {
        using var scope = NewDisposeScope();
        return IO.SafeTensors.ToBytes(PeftModel.TrainableState(Model));
    }

    public List<TokenizedExample> Tokenize(IEnumerable<Example> examples, DataOptions data) =>
        examples.Select(e => InstructionData.Tokenize(e, Tokenizer, data)).ToList();

    public TrainResult Train(IReadOnlyList<TokenizedExample> data, TrainOptions options, IProgress<TrainProgress>? progress = null, CancellationToken ct = default) =>
        new LocalTrainer(Model, options, PadId).Train(data, progress, ct);

    public double Loss(IReadOnlyList<TokenizedExample> data, int batchSize) => Evaluator.Loss(Model, data, PadId, batchSize).Loss;

    public EvalReport Evaluate(IReadOnlyList<Example> examples, DataOptions data, EvalOptions options) =>
        Evaluator.Run(Model, Tokenizer, examples, data, options);

    /// <summary>A HF PEFT adapter folder (a full checkpoint for full fine-tuning), with the data layout it was trained on.</summary>
    public void SaveAdapter(string folder, DataOptions data)
    {
        AdapterFolder.Save(Model, Peft, folder, ModelPath);
        AdapterFolder.SaveDataOptions(folder, data);
    }

    /// <summary>Set while <see cref="ResidentModels"/> lends this model: disposing returns it instead of freeing it.</summary>
    internal Action? ReturnTo { get; set; }

    public void Dispose()
    {
        if (ReturnTo is { } giveBack) giveBack();
        else Model.Dispose();
    }
}
