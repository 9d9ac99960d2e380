using FateLlm.Host.Cli;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
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
    public void Text_that_starts_with_an_at_sign_is_text_and_never_read_as_a_response_file()
    {
        var dir = TestSupport.TempDir();
        Assert.Equal(0, Run("model", "init", "--preset", "tiny", "--out", Path.Combine(dir, "m")).Code);
        string Encode(string text)
        {
            var (o, e) = (new StringWriter(), new StringWriter());
            Assert.True(CliApp.Run(["tokenizer", "encode", "--tokenizer", Path.Combine(dir, "m"), "--text", text], o, e) == 0, e.ToString());
            return o.ToString().Trim();
        }
        // model init's tiny preset has the byte tokenizer: a character's id is its byte.
        static string Bytes(string text) => string.Join(' ', System.Text.Encoding.UTF8.GetBytes(text));
        Assert.Equal(Bytes("@home is where"), Encode("@home is where"));
        // Even when a file of that name exists, its content is not what gets encoded.
        var file = Path.Combine(dir, "home");
        File.WriteAllText(file, "something else");
        Assert.Equal(Bytes("@" + file), Encode("@" + file));
    }

    [Fact]
    public void A_node_refuses_a_port_something_already_listens_on_and_a_bind_host_that_is_no_address()
    {
        // Akka's remoting would share the port (SO_REUSEPORT on Linux) and the kernel split its connections between two nodes.
        using var taken = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        taken.Start();
        var port = ((System.Net.IPEndPoint)taken.LocalEndpoint).Port.ToString();
        var dir = TestSupport.TempDir();
        var (code, err) = Run("seed", "--port", port, "--data-dir", dir);
        Assert.Equal((CliApp.RuntimeError, $"error: --port {port}: something already listens on 127.0.0.1:{port} (is this node already running?)"), (code, err.Trim()));
        (code, err) = Run("arbiter", "--seed", "akka.tcp://fate-llm@127.0.0.1:4053", "--bind-host", "0.0.0.0", "--stream-port", port, "--data-dir", dir);
        Assert.Equal((CliApp.RuntimeError, $"error: --stream-port {port}: something already listens on 127.0.0.1:{port} (is this node already running?)"), (code, err.Trim()));
        var config = Path.Combine(TestSupport.TempDir(), "node.conf");
        File.WriteAllText(config, $"fate-llm.transfer.stream-port = {port}");
        (code, err) = Run("arbiter", "--seed", "akka.tcp://fate-llm@127.0.0.1:4053", "--config", config, "--data-dir", dir);
        Assert.Equal((CliApp.RuntimeError, $"error: fate-llm.transfer.stream-port = {port}: something already listens on 127.0.0.1:{port} (is this node already running?)"), (code, err.Trim()));
        (code, err) = Run("arbiter", "--seed", "akka.tcp://fate-llm@127.0.0.1:4053", "--bind-host", "nowhere", "--data-dir", dir);
        Assert.Equal((CliApp.UsageError, "error: --bind-host 'nowhere' must be an IP address of this machine, e.g. 0.0.0.0"), (code, err.Trim()));
        Assert.Equal(CliApp.UsageError, Run("arbiter", "--seed", "akka.tcp://fate-llm@127.0.0.1:4053", "--stream-port", "70000", "--data-dir", dir).Code);
        Assert.Empty(Directory.GetFileSystemEntries(dir)); // refused before anything was started or written
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
    public void Broken_configuration_stops_the_command_with_one_line_naming_the_file_and_field()
    {
        var dir = TestSupport.TempDir();
        var seed = new[] { "--seed", "akka.tcp://fate-llm@127.0.0.1:1" };
        var malformed = Path.Combine(dir, "malformed.conf");
        File.WriteAllText(malformed, "job { model = ${no.such.setting}\n parties = [ { org = a } ] }");
        var (code, err) = Run(["job", "submit", malformed, .. seed]);
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("malformed.conf: not valid HOCON", err);
        Assert.Single(err.Trim().Split('\n'));

        var robustSecure = Path.Combine(dir, "robust-secure.conf");
        File.WriteAllText(robustSecure, "job { model = m, parties = [{org = a}, {org = b}, {org = c}], aggregation.algorithm = krum, secure-aggregation = on }");
        (code, err) = Run(["job", "submit", robustSecure, .. seed]);
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("robust-secure.conf: job.aggregation.algorithm", err);

        var distributedPlain = Path.Combine(dir, "distributed.conf");
        File.WriteAllText(distributedPlain, "job { model = m, parties = [{org = a}, {org = b}, {org = c}], dp.mode = distributed }");
        (code, err) = Run(["job", "submit", distributedPlain, .. seed]);
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("job.dp.mode", err);

        (code, err) = Run("party", "--org", "acme", "--data", "train=" + WriteJsonl(dir, "a.jsonl", 2), "--seed", "akka.ssl.tcp://fate-llm@127.0.0.1:1",
            "--tls", Path.Combine(dir, "no-certs"));
        Assert.Equal(CliApp.RuntimeError, code);
        Assert.Contains("node.pfx: node certificate not found", err);
        (code, err) = Run("arbiter", "--seed", "akka.ssl.tcp://fate-llm@127.0.0.1:1");
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains("pass --tls", err);

        Assert.Equal(0, Run("model", "init", "--preset", "tiny", "--out", Path.Combine(dir, "m")).Code);
        (code, err) = Run("train", "--model", Path.Combine(dir, "m"), "--data", WriteJsonl(dir, "t.jsonl", 4), "--lora-targets", "no_such_proj",
            "--out", Path.Combine(dir, "o"));
        Assert.NotEqual(0, code);
        Assert.Contains("no_such_proj", err);
        File.Delete(Path.Combine(dir, "m", HfCheckpoint.SingleFile));
        (code, err) = Run("eval", "--model", Path.Combine(dir, "m"), "--data", WriteJsonl(dir, "e.jsonl", 2));
        Assert.Equal(CliApp.RuntimeError, code);
        Assert.Contains(Path.Combine(dir, "m"), err);
    }

    /// <summary>What the held-out fault run found checked only after training had started, now refused at submit.</summary>
    [Theory]
    [InlineData("local.learning-rate = -1", "job.local.learning-rate must be a positive number, got -1")]
    [InlineData("peft.r = 0", "job.peft.r must be ≥ 1, got 0")]
    [InlineData("round-deadline-factor = -1", "job.round-deadline-factor must be ≥ 0 (0: a fixed deadline), got -1")]
    [InlineData("peft.dropout = 1.5", "job.peft.dropout must be in [0, 1), got 1.5")]
    [InlineData("local.warmup-ratio = 1", "job.local.warmup-ratio must be in [0, 1), got 1")]
    [InlineData("evaluation.max-new-tokens = 0", "job.evaluation.max-new-tokens must be ≥ 1, got 0")]
    [InlineData("id = \"bad id/../x\"", "job.id 'bad id/../x' must be 1-64 letters, digits")]
    [InlineData("output = FILE", "' is a file; the job writes a folder there")]
    [InlineData("output = FULL", "' already holds files; name a new or empty folder")]
    public void A_job_setting_out_of_range_is_refused_at_submit_with_exit_2_before_anything_runs(string setting, string message)
    {
        var dir = TestSupport.TempDir();
        var file = Path.Combine(dir, "out.txt");
        File.WriteAllText(file, "x");
        var full = Path.Combine(dir, "full");
        Directory.CreateDirectory(full);
        File.WriteAllText(Path.Combine(full, "adapter.safetensors"), "x");
        setting = setting.Replace("FILE", System.Text.Json.JsonSerializer.Serialize(file)).Replace("FULL", System.Text.Json.JsonSerializer.Serialize(full));
        var job = Path.Combine(dir, "job.conf");
        File.WriteAllText(job, $"job {{ id = ok, model = m, parties = [{{org = a}}, {{org = b}}], output = {System.Text.Json.JsonSerializer.Serialize(Path.Combine(dir, "o"))}\n{setting} }}");
        var (code, err) = Run("job", "submit", job, "--seed", "akka.tcp://fate-llm@127.0.0.1:1");
        Assert.Equal(CliApp.UsageError, code);
        Assert.Contains(message, err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void A_party_whose_base_model_differs_from_the_jobs_refuses_naming_both_digests()
    {
        var dir = TestSupport.TempDir();
        Assert.Equal(0, Run("model", "init", "--preset", "tiny", "--seed", "1", "--out", Path.Combine(dir, "a")).Code);
        Assert.Equal(0, Run("model", "init", "--preset", "tiny", "--seed", "2", "--out", Path.Combine(dir, "b")).Code);
        var spec = Actors.Jobs.JobFile.Default("j", Path.Combine(dir, "b"), [new("acme", "train", null)], dir) with
        {
            ModelDigest = Training.Models.HfCheckpoint.WeightsDigest(Path.Combine(dir, "a")),
        };
        var e = Assert.Throws<Training.Models.ModelFormatException>(() => Training.Federation.FederatedComputation.VerifyModel(spec, spec.ModelPath, "party 'acme'"));
        Assert.Contains("party 'acme'", e.Message);
        Assert.Contains(spec.ModelDigest[..12], e.Message);
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
        // The adapter records the prompt layout it was trained with; generate applies that template to a bare prompt.
        Assert.Equal("{prompt}\n", AdapterFolder.ReadDataOptions(adapter)!.Template);
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

    [Theory]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  rounds = 2\n", "bad.conf:5:1: missing '}' to close the '{' at line 1, column 5")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  output = \"../out/bad-quote\n  seed = 42\n}\n", "bad.conf:4:12: unterminated string opened at line 4, column 12 (a quoted value must close on its line)")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  peft [ method = lora ]\n}\n", "bad.conf:4:8: expected '=', ':' or '{' after 'peft', found '['")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  rounds = = 6\n}\n", "bad.conf:4:12: expected a value for 'rounds', found '='")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ] data { template = x }\n}\n", "bad.conf:3:29: expected ',' or a new line after the value of 'parties', found 'd'")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  rounds = six\n}\n", "bad.conf: job.rounds = 'six' is not an integer")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  round-deadline = soon\n}\n", "bad.conf: job.round-deadline = 'soon' is not a duration such as 90s, 5m or 1h")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  local { learnig-rate = 1e-3 }\n}\n", "bad.conf: job.local.learnig-rate is not a job setting (did you mean 'job.local.learning-rate'?)")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a, dta = train } ]\n}\n", "bad.conf: job.parties[0].dta is not a party setting (did you mean 'data'?)")]
    [InlineData("job {\n  model = m\n  parties = [ { org = a } ]\n  peft.targets = q_proj\n}\n", "bad.conf: job.peft.targets must be a list such as [q_proj, v_proj]")]
    public void A_broken_job_file_is_refused_with_file_line_column_or_key_and_what_was_expected(string text, string message)
    {
        var dir = TestSupport.TempDir();
        var path = Path.Combine(dir, "bad.conf");
        File.WriteAllText(path, text);
        var (code, err) = Run("job", "submit", path, "--seed", "akka.tcp://fate-llm@127.0.0.1:1");
        Assert.Equal(CliApp.UsageError, code);
        Assert.Equal("error: " + Path.Combine(dir, message), err.Trim());
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void A_json_error_in_data_gives_one_position_the_files_line_and_column()
    {
        var dir = TestSupport.TempDir();
        var bad = Path.Combine(dir, "bad-train.jsonl");
        File.WriteAllLines(bad, ["{\"content\": \"a\", \"summary\": \"b\"}", "{\"content\": \"a\", \"summary\": oops}"]);
        var e = Assert.Throws<Training.Data.DataFormatException>(() => Training.Data.InstructionData.ReadJsonl(bad, new Training.Data.DataOptions()));
        Assert.Equal($"{bad}:2:29: not valid JSON ('o' is an invalid start of a value)", e.Message);
    }
}
