using FateLlm.Host.Cli;
using FateLlm.Training.IO;
using FateLlm.Training.Peft;
using Xunit;

namespace FateLlm.Tests;

public class CliSpec
{
    static (int Code, string Error) Run(params string[] args)
    {
        var err = new StringWriter();
        var code = CliApp.Run(args, new StringWriter(), err);
        return (code, err.ToString());
    }

    static string WriteJsonl(string dir, string name, int count, int offset = 0)
    {
        var path = Path.Combine(dir, name);
        File.WriteAllLines(path, Enumerable.Range(offset, count).Select(i =>
            $"{{\"content\": \"word#w{i % 5}*color#c{i % 3}\", \"summary\": \"a c{i % 3} thing called w{i % 5}\"}}"));
        return path;
    }

    [Fact]
    public void Usage_errors_exit_2_with_one_line()
    {
        var (code, err) = Run("train", "--model");
        Assert.Equal(CliApp.UsageError, code);
        Assert.StartsWith("error:", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Equal(CliApp.UsageError, Run("model", "init", "--arch", "bloom", "--out", TestSupport.TempDir()).Code);
        Assert.Equal(CliApp.UsageError, Run("no-such-command").Code);
    }

    [Fact]
    public void Runtime_errors_exit_1_naming_the_culprit()
    {
        var dir = TestSupport.TempDir();
        var (code, err) = Run("train", "--model", Path.Combine(dir, "nope"), "--data", WriteJsonl(dir, "t.jsonl", 4), "--out", Path.Combine(dir, "o"));
        Assert.Equal(CliApp.RuntimeError, code);
        Assert.Contains("nope", err);

        var bad = Path.Combine(dir, "bad.jsonl");
        File.WriteAllLines(bad, ["{\"content\": \"a\", \"summary\": \"b\"}", "not json"]);
        Assert.Equal(0, Run("model", "init", "--preset", "tiny", "--out", Path.Combine(dir, "m")).Code);
        (code, err) = Run("train", "--model", Path.Combine(dir, "m"), "--data", bad, "--out", Path.Combine(dir, "o"));
        Assert.Equal(CliApp.RuntimeError, code);
        Assert.Contains($"{bad}:2:", err);
        Assert.False(Directory.Exists(Path.Combine(dir, "o")), "nothing is written when the input is bad");
    }

    [Fact]
    public void Init_train_eval_export_and_generate_work_end_to_end()
    {
        var dir = TestSupport.TempDir();
        string model = Path.Combine(dir, "model"), adapter = Path.Combine(dir, "adapter");
        var train = WriteJsonl(dir, "train.jsonl", 24);
        var dev = WriteJsonl(dir, "dev.jsonl", 6, offset: 100);
        Assert.Equal(0, Run("model", "init", "--arch", "gpt2", "--preset", "tiny", "--seed", "3", "--out", model).Code);
        Assert.Equal(0, Run("train", "--model", model, "--data", train, "--eval-data", dev, "--peft", "lora", "--lora-targets", "c_attn,c_fc",
            "--epochs", "2", "--lr", "5e-3", "--batch-size", "8", "--out", adapter, "--threads", "2").Code);
        Assert.True(File.Exists(Path.Combine(adapter, AdapterFolder.ConfigFile)));
        Assert.True(File.Exists(Path.Combine(adapter, "train_summary.json")));
        Assert.Equal(0, Run("eval", "--adapter", adapter, "--data", dev, "--json", "--max-new-tokens", "8").Code);

        var peft = Path.Combine(dir, "peft");
        Assert.Equal(0, Run("adapter", "export", "--adapter", adapter, "--format", "peft", "--out", peft).Code);
        Assert.Contains("base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight",
            SafeTensors.ReadShapes(Path.Combine(peft, AdapterFolder.WeightsFile)).Keys);
        var merged = Path.Combine(dir, "merged");
        Assert.Equal(0, Run("adapter", "export", "--adapter", adapter, "--format", "merged", "--out", merged).Code);
        Assert.True(File.Exists(Path.Combine(merged, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(merged, "tokenizer_config.json")));
        Assert.Equal(0, Run("eval", "--model", merged, "--data", dev, "--no-generate").Code);
        Assert.Equal(0, Run("generate", "--adapter", adapter, "--prompt", "word#w1*color#c2", "--max-new-tokens", "5").Code);

        var prefix = Path.Combine(dir, "prefix");
        Assert.Equal(0, Run("train", "--model", model, "--data", train, "--peft", "ptuning-v2", "--num-virtual-tokens", "4",
            "--max-steps", "2", "--out", prefix).Code);
        Assert.Equal(CliApp.UsageError, Run("adapter", "export", "--adapter", prefix, "--format", "merged", "--out", Path.Combine(dir, "x")).Code);
    }
}
