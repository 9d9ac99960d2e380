using FateLlm.Training.Data;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using FateLlm.Training.Trainer;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class TrainerSpec
{
    static List<TokenizedExample> EightSamples()
    {
        var tok = new ByteTokenizer();
        return Enumerable.Range(0, 8).Select(i => InstructionData.Tokenize(
            new Example($"word#{i}", $"definition number {i} of the tiny set", "mem"), tok, new DataOptions())).ToList();
    }

    [Theory, InlineData("llama", PeftMethod.Lora), InlineData("gpt2", PeftMethod.Lora), InlineData("llama", PeftMethod.Full)]
    public void Loss_falls_when_overfitting_eight_samples(string arch, PeftMethod method)
    {
        using var m = TestSupport.TinyModel(arch);
        m.Randomness.manual_seed(11);
        PeftModel.Apply(m, new PeftConfig { Method = method, LoraR = 8, LoraTargets = ["all-linear"], LoraDropout = 0 });
        var data = EightSamples();
        var (before, _) = Evaluator.Loss(m, data, ByteTokenizer.Pad, 8);
        new LocalTrainer(m, new TrainOptions { Epochs = 60, BatchSize = 4, LearningRate = method == PeftMethod.Full ? 3e-3 : 1e-2, WarmupRatio = 0.1 }, ByteTokenizer.Pad).Train(data);
        var (after, _) = Evaluator.Loss(m, data, ByteTokenizer.Pad, 8);
        Assert.True(after < before * 0.5, $"eval loss {before:F3} → {after:F3}");
    }

    [Fact]
    public void A_libtorch_error_is_one_line_naming_the_operation_and_the_shapes()
    {
        using var m = TestSupport.TinyModel();
        PeftModel.Apply(m, new PeftConfig { Method = PeftMethod.Lora, LoraR = 2 });
        // A token id past the embedding: libtorch's "index out of range in self" and a dozen C++ frames.
        var bad = new List<TokenizedExample> { new([1, 2, m.Config.VocabSize + 5], [1, 2, 3]) };
        var e = Assert.Throws<Training.Runtime.TorchOperationException>(() => new LocalTrainer(m, new TrainOptions { MaxSteps = 1, BatchSize = 1 }, 0).Train(bad));
        Assert.DoesNotContain('\n', e.Message);
        Assert.DoesNotContain("frame #", e.Message);
        Assert.StartsWith($"training step 1, batch of token ids [1, 3] (largest id {m.Config.VocabSize + 5}, vocabulary {m.Config.VocabSize}): ", e.Message);
        Assert.Contains("index out of range", e.Message);
        Assert.Equal(e.Message, Training.Runtime.TorchErrors.OneLine(e));
        var loss = Assert.Throws<Training.Runtime.TorchOperationException>(() => Evaluator.Loss(m, bad, 0, 8));
        Assert.StartsWith("loss of a batch of token ids [1, 3]", loss.Message);
        Assert.Equal($"libtorch: {Training.Runtime.TorchErrors.FirstLine(e.InnerException!.Message)}", Training.Runtime.TorchErrors.OneLine(e.InnerException!));
    }

    /// <summary>
    /// Parties hosted in one process (demo, experiments, specs) train side by side: a run draws its adapter initialisation
    /// and dropout masks from its model's own generator, so another thread reseeding and drawing from torch's process-wide
    /// generator meanwhile changes nothing; and the numbers are those torch's generator gave when seeded alike.
    /// </summary>
    [Fact]
    public async Task A_run_draws_only_from_its_models_generator_and_gives_what_the_global_generator_gave_seeded_alike()
    {
        var data = EightSamples();
        var cfg = new PeftConfig { Method = PeftMethod.Lora, LoraR = 4, LoraDropout = 0.2, LoraTargets = ["all-linear"] };
        var options = new TrainOptions { Epochs = 2, BatchSize = 4, LearningRate = 5e-3, Seed = 3 };
        Dictionary<string, TorchSharp.torch.Tensor> Run()
        {
            using var m = TestSupport.TinyModel();
            m.Randomness.manual_seed(9);
            PeftModel.Apply(m, cfg);
            new LocalTrainer(m, options, ByteTokenizer.Pad).Train(data);
            return PeftModel.TrainableState(m);
        }
        var quiet = Run();
        using var stop = new CancellationTokenSource();
        var noise = Task.Run(() =>
        {
            for (long i = 0; !stop.IsCancellationRequested; i++)
            {
                TorchSharp.torch.manual_seed(i);
                using var _ = TorchSharp.torch.rand(64);
            }
        });
        Dictionary<string, TorchSharp.torch.Tensor> noisy;
        try { noisy = Run(); }
        finally { stop.Cancel(); }
        await noise;
        foreach (var (name, t) in quiet) Assert.True(t.eq(noisy[name]).all().item<bool>(), name);

        using var model = TestSupport.TinyModel();
        model.Randomness.manual_seed(9);
        PeftModel.Apply(model, cfg);
        var first = model.Projections().First(p => p.Module.HasLora).Module.LoraA!.weight;
        TorchSharp.torch.manual_seed(9);
        using var old = TorchSharp.torch.empty(first.shape);
        TorchSharp.torch.nn.init.kaiming_uniform_(old, a: Math.Sqrt(5));
        Assert.True(old.eq(first).all().item<bool>(), "the first LoRA A is what kaiming_uniform_ drew from torch's generator seeded alike");
    }

    [Fact]
    public void Training_is_deterministic_and_a_resumed_run_equals_an_uninterrupted_one()
    {
        var data = EightSamples();
        var cfg = new PeftConfig { Method = PeftMethod.Lora, LoraR = 4, LoraDropout = 0.1 };
        Dictionary<string, TorchSharp.torch.Tensor> Run(TrainOptions o, int? crashAtStep = null)
        {
            using var m = TestSupport.TinyModel();
            m.Randomness.manual_seed(5);
            PeftModel.Apply(m, cfg);
            if (crashAtStep is int k)
            {
                // Interrupt the same run mid-epoch; its in-memory state is discarded as a crash would.
                using var crashed = TestSupport.TinyModel();
                crashed.Randomness.manual_seed(5);
                PeftModel.Apply(crashed, cfg);
                using var cts = new CancellationTokenSource();
                var progress = new SyncProgress(p => { if (p.Step == k) cts.Cancel(); });
                Assert.Throws<OperationCanceledException>(() => new LocalTrainer(crashed, o, ByteTokenizer.Pad).Train(data, progress, cts.Token));
            }
            new LocalTrainer(m, o, ByteTokenizer.Pad).Train(data);
            return PeftModel.TrainableState(m);
        }
        var options = new TrainOptions { Epochs = 4, BatchSize = 3, LearningRate = 5e-3, Seed = 11 };
        var a = Run(options);
        var b = Run(options);
        var dir = TestSupport.TempDir();
        // 8 samples in batches of 3: 3 steps per epoch, so step 7 is inside the third epoch.
        var resumed = Run(options with { CheckpointDir = dir, Resume = true }, crashAtStep: 7);
        foreach (var (name, t) in a)
        {
            Assert.True(TestSupport.MaxAbsDiff(t, b[name]) == 0, $"{name} differs between identical runs");
            Assert.True(TestSupport.MaxAbsDiff(t, resumed[name]) < 1e-6, $"{name} differs after resume");
        }
        Assert.Equal(3, TrainerCheckpoint.Latest(dir)!.State.Epoch);

        // Checkpoints inside an epoch (every 2 steps; batches of 2, so 4 steps per epoch): a crash at step 7 resumes
        // at step 6, inside the second epoch, with the dropout stream as it was there: bit for bit the same run.
        var every = options with { BatchSize = 2, Epochs = 3 };
        var plain = Run(every);
        var inside = TestSupport.TempDir();
        var continued = Run(every with { CheckpointDir = inside, Resume = true, CheckpointEvery = 2 }, crashAtStep: 7);
        foreach (var (name, t) in plain) Assert.True(TestSupport.MaxAbsDiff(t, continued[name]) == 0, $"{name} differs after resuming inside an epoch");
    }

    sealed class SyncProgress(Action<TrainProgress> onReport) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress value) => onReport(value);
    }

    [Fact]
    public void Learning_rate_schedules_warm_up_then_decay_like_hf()
    {
        Assert.Equal(0.25, LocalTrainer.LrFactor(LrSchedule.Linear, 0, 4, 20), 6);
        Assert.Equal(1.0, LocalTrainer.LrFactor(LrSchedule.Linear, 4, 4, 20), 6);
        Assert.Equal(0.5, LocalTrainer.LrFactor(LrSchedule.Linear, 12, 4, 20), 6);
        Assert.Equal(0.5, LocalTrainer.LrFactor(LrSchedule.Cosine, 12, 4, 20), 6);
        Assert.Equal(1.0, LocalTrainer.LrFactor(LrSchedule.Constant, 19, 4, 20), 6);
    }
}
