using System.Text.Json.Nodes;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;

namespace FateLlm.Host.Experiments;

public sealed record AnalyticShare(string Model, long Parameters, string LoraSetting, long LoraParameters, double LoraPercent,
    string PrefixSetting, long PrefixParameters, double PrefixPercent);

/// <summary>
/// Trainable-parameter shares computed from published configs alone (no weights), to set against the FATE-LLM
/// paper's 0.059 % (LoRA) and 0.473 % (P-Tuning v2) for ChatGLM-6B.
/// </summary>
public static class PublishedConfigs
{
    const int Rank = 8, PrefixTokens = 128;

    public static IReadOnlyList<AnalyticShare> Compute()
    {
        var rows = new List<AnalyticShare>
        {
            FromConfig("LLaMA-7B", new JsonObject { ["model_type"] = "llama", ["vocab_size"] = 32000, ["hidden_size"] = 4096, ["num_hidden_layers"] = 32,
                ["num_attention_heads"] = 32, ["intermediate_size"] = 11008, ["tie_word_embeddings"] = false }, ["q_proj", "v_proj"]),
            FromConfig("Qwen2-7B", new JsonObject { ["model_type"] = "qwen2", ["vocab_size"] = 152064, ["hidden_size"] = 3584, ["num_hidden_layers"] = 28,
                ["num_attention_heads"] = 28, ["num_key_value_heads"] = 4, ["intermediate_size"] = 18944, ["tie_word_embeddings"] = false }, ["q_proj", "v_proj"]),
            FromConfig("GPT-2 XL", new JsonObject { ["model_type"] = "gpt2", ["vocab_size"] = 50257, ["n_embd"] = 1600, ["n_layer"] = 48, ["n_head"] = 25,
                ["n_positions"] = 1024 }, ["c_attn"]),
        };
        // ChatGLM-6B (GLM block: fused query_key_value with bias, dense, 4h GELU MLP, tied 130,528-token embedding);
        // computed by hand since the architecture is not one we load.
        long h = 4096, layers = 28, vocab = 130528, ffn = 16384;
        long perLayer = (h * 3 * h + 3 * h) + (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h;
        long total = vocab * h + layers * perLayer + 2 * h;
        long lora = layers * Rank * (h + 3 * h);
        long prefix = PrefixTokens * layers * 2 * h;
        rows.Add(new AnalyticShare("ChatGLM-6B", total, $"r={Rank} on query_key_value", lora, 100.0 * lora / total,
            $"{PrefixTokens} virtual tokens", prefix, 100.0 * prefix / total));
        return rows;
    }

    static AnalyticShare FromConfig(string name, JsonObject json, string[] targets)
    {
        var c = ModelConfig.FromJson(json, name);
        var total = c.ParameterCount();
        // LoRA on a projection of in × out adds r·(in + out); shapes follow from the config.
        long Lora(string t) => t switch
        {
            "q_proj" => Rank * (c.HiddenSize + (long)c.NumHeads * c.HeadDim),
            "v_proj" or "k_proj" => Rank * (c.HiddenSize + (long)c.NumKvHeads * c.HeadDim),
            "c_attn" => Rank * (c.HiddenSize + 3L * c.HiddenSize),
            _ => throw new ArgumentException(t),
        };
        var lora = c.NumLayers * targets.Sum(Lora);
        var prefix = PrefixTokens * PrefixEncoder.FlatWidth(c);
        return new AnalyticShare(name, total, $"r={Rank} on {string.Join("+", targets)}", lora, 100.0 * lora / total,
            $"{PrefixTokens} virtual tokens", prefix, 100.0 * prefix / total);
    }
}
