using System.Text.Json.Nodes;

namespace FateLlm.Training.Models;

/// <summary>A decoder's shape: width, depth, attention heads (KV heads for LLaMA's grouped-query attention), MLP width, context.</summary>
public sealed record ModelShape(int Hidden, int Layers, int Heads, int KvHeads, int Intermediate, int Positions);

/// <summary>Named shapes for <c>model init</c>: random, seeded models in HF config.json form.</summary>
public static class ModelPresets
{
    public static readonly string[] Names = ["tiny", "small", "gpt2-small"];

    /// <param name="vocabSize">Defaults to the byte tokenizer's vocabulary for tiny/small, GPT-2's for gpt2-small.</param>
    public static ModelConfig Create(string arch, string preset, int? vocabSize = null)
    {
        var (shape, vocab) = preset switch
        {
            // ≈1.6 M parameters (llama): trains in seconds on CPU.
            "tiny" => (new ModelShape(192, 4, 6, 2, 512, 512), Tokenization.ByteTokenizer.VocabularySize),
            // ≈9.5 M: big enough to learn real text in minutes.
            "small" => (new ModelShape(384, 6, 6, 2, 1024, 512), Tokenization.ByteTokenizer.VocabularySize),
            // GPT-2 small's shape (124 M with GPT-2's vocabulary), for benchmarks.
            "gpt2-small" => (new ModelShape(768, 12, 12, 12, 3072, 1024), 50257),
            _ => throw new ModelFormatException($"unknown preset '{preset}' (known: {string.Join(", ", Names)})"),
        };
        vocab = vocabSize ?? vocab;
        (int?, int?, int?) special = vocab == Tokenization.ByteTokenizer.VocabularySize
            ? (Tokenization.ByteTokenizer.Bos, Tokenization.ByteTokenizer.Eos, Tokenization.ByteTokenizer.Pad)
            : arch == "gpt2" ? (50256, 50256, null) : (null, null, null);
        return Create(arch, shape, vocab, special, tieEmbeddings: preset != "gpt2-small", $"preset {arch}/{preset}");
    }

    /// <summary>A config of any shape; <paramref name="special"/> are the tokenizer's bos/eos/pad ids.</summary>
    public static ModelConfig Create(string arch, ModelShape shape, int vocab, (int? Bos, int? Eos, int? Pad) special, bool tieEmbeddings, string source)
    {
        var (hidden, layers, heads, kvHeads, inter, positions) = (shape.Hidden, shape.Layers, shape.Heads, shape.KvHeads, shape.Intermediate, shape.Positions);
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
                ["hidden_act"] = "silu", ["tie_word_embeddings"] = tieEmbeddings, ["attention_bias"] = false,
                ["mlp_bias"] = false, ["initializer_range"] = 0.02,
            },
            _ => throw new ModelFormatException($"unknown architecture '{arch}' (known: gpt2, llama)"),
        };
        if (special.Bos is int bos) o["bos_token_id"] = bos;
        if (special.Eos is int eos) o["eos_token_id"] = eos;
        if (special.Pad is int pad) o["pad_token_id"] = pad;
        return ModelConfig.FromJson(o, source);
    }
}
