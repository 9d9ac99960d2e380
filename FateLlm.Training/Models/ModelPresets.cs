using System.Text.Json.Nodes;

namespace FateLlm.Training.Models;

/// <summary>Named shapes for <c>model init</c>: random, seeded models in HF config.json form.</summary>
public static class ModelPresets
{
    public static readonly string[] Names = ["tiny", "small", "gpt2-small"];

    /// <param name="vocabSize">Defaults to the byte tokenizer's vocabulary for tiny/small, GPT-2's for gpt2-small.</param>
    public static ModelConfig Create(string arch, string preset, int? vocabSize = null)
    {
        var (hidden, layers, heads, kvHeads, inter, positions, vocab) = preset switch
        {
            // ≈1.6 M parameters (llama): trains in seconds on CPU.
            "tiny" => (192, 4, 6, 2, 512, 512, Tokenization.ByteTokenizer.VocabularySize),
            // ≈9.5 M: big enough to learn real text in minutes.
            "small" => (384, 6, 6, 2, 1024, 512, Tokenization.ByteTokenizer.VocabularySize),
            // GPT-2 small's shape (124 M with GPT-2's vocabulary), for benchmarks.
            "gpt2-small" => (768, 12, 12, 12, 3072, 1024, 50257),
            _ => throw new ModelFormatException($"unknown preset '{preset}' (known: {string.Join(", ", Names)})"),
        };
        vocab = vocabSize ?? vocab;
        JsonObject o = arch switch
        {
            "gpt2" => new JsonObject
            {
                ["model_type"] = "gpt2", ["vocab_size"] = vocab, ["n_embd"] = hidden, ["n_layer"] = layers,
                ["n_head"] = heads, ["n_inner"] = inter, ["n_positions"] = positions, ["n_ctx"] = positions,
                ["layer_norm_epsilon"] = 1e-5, ["activation_function"] = "gelu_new", ["tie_word_embeddings"] = true,
                ["initializer_range"] = 0.02,
            },
            "llama" => new JsonObject
            {
                ["model_type"] = "llama", ["vocab_size"] = vocab, ["hidden_size"] = hidden, ["num_hidden_layers"] = layers,
                ["num_attention_heads"] = heads, ["num_key_value_heads"] = kvHeads, ["intermediate_size"] = inter,
                ["max_position_embeddings"] = positions, ["rms_norm_eps"] = 1e-6, ["rope_theta"] = 10000.0,
                ["hidden_act"] = "silu", ["tie_word_embeddings"] = preset != "gpt2-small", ["attention_bias"] = false,
                ["mlp_bias"] = false, ["initializer_range"] = 0.02,
            },
            _ => throw new ModelFormatException($"unknown architecture '{arch}' (known: gpt2, llama)"),
        };
        if (vocab == Tokenization.ByteTokenizer.VocabularySize)
        {
            o["bos_token_id"] = Tokenization.ByteTokenizer.Bos;
            o["eos_token_id"] = Tokenization.ByteTokenizer.Eos;
            o["pad_token_id"] = Tokenization.ByteTokenizer.Pad;
        }
        else if (arch == "gpt2")
        {
            o["bos_token_id"] = 50256;
            o["eos_token_id"] = 50256;
        }
        return ModelConfig.FromJson(o, $"preset {arch}/{preset}");
    }
}
