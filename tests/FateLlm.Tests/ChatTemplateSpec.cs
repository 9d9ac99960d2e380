using System.Text.Json;
using System.Text.Json.Nodes;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The chat templates of Llama 3.x, Qwen2.5, Mistral, Phi-3 and Gemma rendered as HF's @huggingface/jinja renders them
/// (expected strings and errors from tests/reference/tokenizer_expected.mjs), including tool calls and raised errors.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ChatTemplateSpec
{
    static JsonObject Expected() => JsonNode.Parse(File.ReadAllText(TestSupport.FixturePath("tokenizers", "expected.json")))!.AsObject();

    public static TheoryData<int> Cases => new(Enumerable.Range(0, Expected()["chat"]!.AsArray().Count));

    [Theory, MemberData(nameof(Cases))]
    public void Renders_as_hf_jinja_does(int index)
    {
        var all = Expected();
        var c = all["chat"]![index]!.AsObject();
        var family = c["family"]!.GetValue<string>();
        var templates = JsonNode.Parse(File.ReadAllText(TestSupport.FixturePath("tokenizers", "chat_templates.json")))!.AsObject();
        var template = new ChatTemplate(templates[family]!.GetValue<string>());
        var messages = all["messages"]![c["messages"]!.GetValue<string>()]!.DeepClone().AsArray();
        var extra = new Dictionary<string, object?> { ["bos_token"] = c["bos_token"]?.GetValue<string>(), ["eos_token"] = c["eos_token"]?.GetValue<string>() };
        if (c["tools"]!.GetValue<bool>()) extra["tools"] = all["tools"]!.DeepClone();
        var addGeneration = c["add_generation_prompt"]!.GetValue<bool>();
        if (c["error"] is JsonValue error)
        {
            var e = Assert.Throws<ChatTemplateException>(() => template.Render(messages, addGeneration, extra));
            Assert.Equal(error.GetValue<string>(), e.Message);
        }
        else Assert.Equal(c["rendered"]!.GetValue<string>(), template.Render(messages, addGeneration, extra));
    }

    [Theory]
    [InlineData("7", "7 7")]
    [InlineData("7.0", "7.0 7.0")]
    [InlineData("[1, 2.5, -3]", "[1, 2.5, -3] [1, 2.5, -3]")]
    [InlineData("1e20", "1e+20 1e+20")]
    [InlineData("0.00001", "1e-05 1e-05")]
    public void Numbers_render_as_python_prints_and_json_dumps_them(string json, string rendered)
    {
        // What transformers' Jinja (Python) gives for {{ x }} and {{ x | tojson }}: ints stay ints; floats as repr.
        var template = new ChatTemplate("{{ messages[0].x }} {{ messages[0].x | tojson }}");
        var messages = new JsonArray(new JsonObject { ["x"] = JsonNode.Parse(json) });
        Assert.Equal(rendered, template.Render(messages, false, new Dictionary<string, object?>()));
    }

    [Fact]
    public void A_folder_template_renders_plain_messages_and_its_prompt_tokenizes_with_the_specials()
    {
        var folder = TestSupport.FixturePath("tokenizers", "qwen2");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, TokenizerLoader.ConfigFile)))!.AsObject();
        var template = ChatTemplate.FromTokenizerConfig(config, folder)!;
        var text = template.Render([new ChatMessage("user", "What is an ox?")], addGenerationPrompt: true, bosToken: null, eosToken: "<|im_end|>");
        Assert.EndsWith("<|im_start|>user\nWhat is an ox?<|im_end|>\n<|im_start|>assistant\n", text);
        var tok = TokenizerLoader.Load(folder, null);
        var imStart = tok.Encode("<|im_start|>").Single();
        Assert.Equal(3, tok.Encode(text).Count(i => i == imStart));
    }

    [Theory]
    [InlineData("{% macro greet(x) %}hi{% endmacro %}", "line 1: unsupported construct 'macro'")]
    [InlineData("a\n{% for m in messages %}{{ m.role }}", "template ends before '{% endfor %}'")]
    [InlineData("{{ messages | wordcount }}", "line 1: unsupported filter 'wordcount'")]
    [InlineData("{{ 'x'\n}", "line 1: '{{' is never closed")]
    public void An_unsupported_or_broken_template_names_the_construct_and_line(string source, string message)
    {
        var e = Assert.ThrowsAny<ChatTemplateException>(() => new ChatTemplate(source).Render([new ChatMessage("user", "hi")], true, null, null));
        Assert.Equal(message, e.Message);
    }

    [Fact]
    public void Loops_scope_sets_namespaces_carry_them_and_loop_controls_work()
    {
        var source = "{% set ns = namespace(n=0) %}{% set outer = 'o' %}{% for m in messages if m.role != 'system' %}"
            + "{% set outer = 'inner' %}{% if loop.first %}[{% endif %}{% if m.content == 'skip' %}{% continue %}{% endif %}"
            + "{% set ns.n = ns.n + 1 %}{{ loop.index }}:{{ m.content | upper }}{% if m.content == 'stop' %}{% break %}{% endif %}"
            + "{% else %}empty{% endfor %}] {{ outer }} {{ ns.n }} {{ [1, 2, 3][::-1] | join('-') }} {{ 7 // 2 }} {{ 'a' ~ 1 }}";
        var messages = new ChatMessage[] { new("system", "s"), new("user", "a"), new("user", "skip"), new("user", "stop"), new("user", "never") };
        Assert.Equal("[1:A3:STOP] o 2 3-2-1 3 a1", new ChatTemplate(source).Render(messages, false, null, null));
    }
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class ChatGenerateSpec
{
    /// <summary>A Qwen2.5-shaped model whose vocabulary is the qwen2 tokenizer fixture's (with its chat template).</summary>
    static string QwenModel()
    {
        var dir = TestSupport.TempDir();
        foreach (var f in Directory.GetFiles(TestSupport.FixturePath("tokenizers", "qwen2"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var tok = TokenizerLoader.Load(dir, null);
        var config = FateLlm.Training.Models.ModelConfig.FromJson(new JsonObject
        {
            ["model_type"] = "qwen2", ["vocab_size"] = tok.VocabSize, ["hidden_size"] = 32, ["num_hidden_layers"] = 1,
            ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["intermediate_size"] = 64, ["tie_word_embeddings"] = true,
        });
        using (var model = FateLlm.Training.Models.CausalLm.Create(config))
        {
            model.InitializeWeights(3);
            FateLlm.Training.Models.HfCheckpoint.Save(model, dir);
        }
        return dir;
    }

    [Fact]
    public void Generate_chat_sends_the_prompt_through_the_folder_template()
    {
        var dir = QwenModel();
        var (code, _, stderr) = Run("generate", "--model", dir, "--prompt", "What is an ox?", "--chat", "--temperature", "0", "--max-new-tokens", "4");
        Assert.True(code == 0, stderr);
        File.WriteAllText(Path.Combine(dir, TokenizerLoader.ConfigFile), "{\"eos_token\": \"<|im_end|>\"}");
        (code, _, stderr) = Run("generate", "--model", dir, "--prompt", "hi", "--chat");
        Assert.NotEqual(0, code);
        Assert.Contains("tokenizer_config.json has no field 'chat_template'", stderr);
    }

    [Fact]
    public void Generate_renders_a_conversation_from_messages_system_and_prompt_as_hf_jinja_does_and_prints_it()
    {
        var dir = QwenModel();
        var tok = TokenizerLoader.Load(dir, null);
        var expected = JsonNode.Parse(File.ReadAllText(TestSupport.FixturePath("tokenizers", "expected.json")))!;
        string Rendered(string set, bool tools) => expected["chat"]!.AsArray().Single(c => (string)c!["family"]! == "qwen2.5"
            && (string)c["messages"]! == set && (bool)c["add_generation_prompt"]! && (bool)c["tools"]! == tools)!["rendered"]!.GetValue<string>();
        string Printed(string rendered) => $"{rendered}\nids: [{string.Join(", ", tok.Encode(rendered))}]\n";
        var work = TestSupport.TempDir();

        // Multi-turn with a tool call and the tools as a template variable.
        var withTools = Path.Combine(work, "tools.json");
        File.WriteAllText(withTools, new JsonObject { ["messages"] = expected["messages"]!["tools"]!.DeepClone(), ["tools"] = expected["tools"]!.DeepClone() }.ToJsonString());
        var (code, stdout, stderr) = Run("generate", "--model", dir, "--messages", withTools, "--print-prompt", "--temperature", "0", "--max-new-tokens", "1");
        Assert.True(code == 0, stderr);
        Assert.StartsWith(Printed(Rendered("tools", tools: true)), stdout);

        // --system first, the file's turns, --prompt last: the "plain" conversation.
        var plain = expected["messages"]!["plain"]!.AsArray();
        var middle = Path.Combine(work, "middle.json");
        File.WriteAllText(middle, new JsonArray(plain.Skip(1).Take(2).Select(m => m!.DeepClone()).ToArray()).ToJsonString());
        (code, stdout, stderr) = Run("generate", "--model", dir, "--system", (string)plain[0]!["content"]!, "--messages", middle, "--prompt", (string)plain[3]!["content"]!,
            "--print-prompt", "--temperature", "0", "--max-new-tokens", "1");
        Assert.True(code == 0, stderr);
        Assert.StartsWith(Printed(Rendered("plain", tools: false)), stdout);

        // A bad file is named, with the line of a JSON error or the index of a bad message.
        File.WriteAllText(middle, "[\n{\"role\": \"user\", \"content\": \"hi\"},\n{\"content\": \"no role\"}\n]");
        (code, _, stderr) = Run("generate", "--model", dir, "--messages", middle);
        Assert.NotEqual(0, code);
        Assert.Contains($"{middle}: messages[1] must be an object with a 'role'", stderr);
        File.WriteAllText(middle, "[\n{\"role\": \"user\",\n oops }\n]");
        (code, _, stderr) = Run("generate", "--model", dir, "--messages", middle);
        Assert.NotEqual(0, code);
        Assert.Contains($"{middle}:3: not valid JSON", stderr);
    }

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        var code = FateLlm.Host.Cli.CliApp.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }
}
