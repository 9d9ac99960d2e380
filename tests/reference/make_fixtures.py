#!/usr/bin/env python3
"""Writes the parity fixtures under tests/FateLlm.Tests/Fixtures: small HF-format checkpoints made by an
independent PyTorch implementation of HF's GPT-2 and LLaMA forward passes, their expected logits, and nltk
BLEU values. Dev-only (needs python3-torch and python3-nltk from Debian); CI uses the committed output.
Run: /usr/bin/python3 tests/reference/make_fixtures.py"""
import json, math, os, struct
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "FateLlm.Tests", "Fixtures")
torch.manual_seed(1234)


def save_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[t.dtype]
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gpt2_forward(sd, cfg, ids):
    n, H = cfg["n_embd"], cfg["n_head"]
    d = n // H
    T = ids.shape[1]
    h = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        a = F.layer_norm(h, (n,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], cfg["layer_norm_epsilon"])
        qkv = a @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(n, dim=2)
        q, k, v = [t.view(t.shape[0], T, H, d).transpose(1, 2) for t in (q, k, v)]
        w = q @ k.transpose(-1, -2) / math.sqrt(d)
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            w = w / float(l + 1)
        w = w.masked_fill(~causal, torch.finfo(w.dtype).min).softmax(-1)
        o = (w @ v).transpose(1, 2).reshape(h.shape[0], T, n)
        h = h + o @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        m = F.layer_norm(h, (n,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], cfg["layer_norm_epsilon"])
        m = gelu_new(m @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"])
        h = h + m @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
    h = F.layer_norm(h, (n,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], cfg["layer_norm_epsilon"])
    return h @ sd["transformer.wte.weight"].T


def rms(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def llama_forward(sd, cfg, ids):
    n, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim", n // H)
    B, T = ids.shape
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    pos = torch.arange(T).float()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    h = sd["model.embed_tokens.weight"][ids]

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rms(h, sd[p + "input_layernorm.weight"], cfg["rms_norm_eps"])
        q = lin(a, p + "self_attn.q_proj").view(B, T, H, d).transpose(1, 2)
        k = lin(a, p + "self_attn.k_proj").view(B, T, KV, d).transpose(1, 2)
        v = lin(a, p + "self_attn.v_proj").view(B, T, KV, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV
        k = k[:, :, None].expand(B, KV, rep, T, d).reshape(B, H, T, d)
        v = v[:, :, None].expand(B, KV, rep, T, d).reshape(B, H, T, d)
        w = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, torch.finfo(torch.float32).min).softmax(-1)
        o = (w @ v).transpose(1, 2).reshape(B, T, H * d)
        h = h + lin(o, p + "self_attn.o_proj")
        m = rms(h, sd[p + "post_attention_layernorm.weight"], cfg["rms_norm_eps"])
        h = h + lin(F.silu(lin(m, p + "mlp.gate_proj")) * lin(m, p + "mlp.up_proj"), p + "mlp.down_proj")
    h = rms(h, sd["model.norm.weight"], cfg["rms_norm_eps"])
    head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else sd["lm_head.weight"]
    return h @ head.T


def rnd(*shape, std=0.2):
    return torch.randn(*shape) * std


def gpt2_case():
    cfg = {"model_type": "gpt2", "vocab_size": 61, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
           "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
           "scale_attn_by_inverse_layer_idx": True, "architectures": ["GPT2LMHeadModel"]}
    n, i = 32, 128
    sd = {"transformer.wte.weight": rnd(61, n), "transformer.wpe.weight": rnd(64, n),
          "transformer.ln_f.weight": 1 + rnd(n, std=0.1), "transformer.ln_f.bias": rnd(n, std=0.1)}
    for l in range(2):
        p = f"transformer.h.{l}."
        sd.update({p + "ln_1.weight": 1 + rnd(n, std=0.1), p + "ln_1.bias": rnd(n, std=0.1),
                   p + "attn.c_attn.weight": rnd(n, 3 * n), p + "attn.c_attn.bias": rnd(3 * n),
                   p + "attn.c_proj.weight": rnd(n, n), p + "attn.c_proj.bias": rnd(n),
                   p + "ln_2.weight": 1 + rnd(n, std=0.1), p + "ln_2.bias": rnd(n, std=0.1),
                   p + "mlp.c_fc.weight": rnd(n, i), p + "mlp.c_fc.bias": rnd(i),
                   p + "mlp.c_proj.weight": rnd(i, n), p + "mlp.c_proj.bias": rnd(n),
                   # HF writes the causal-mask buffer in older checkpoints; it must be ignored.
                   p + "attn.bias": torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)})
    return cfg, sd, gpt2_forward


def llama_case(qwen=False, tied=False):
    n, H, KV, d, i = 48, 6, 2, 8, 96
    cfg = {"model_type": "qwen2" if qwen else "llama", "vocab_size": 67, "hidden_size": n, "num_hidden_layers": 2,
           "num_attention_heads": H, "num_key_value_heads": KV, "intermediate_size": i, "max_position_embeddings": 128,
           "rms_norm_eps": 1e-6, "rope_theta": 500000.0 if not qwen else 1000000.0, "hidden_act": "silu",
           "tie_word_embeddings": tied, "attention_bias": False, "rope_scaling": None}
    sd = {"model.embed_tokens.weight": rnd(67, n, std=0.5), "model.norm.weight": 1 + rnd(n, std=0.1)}
    if not tied:
        sd["lm_head.weight"] = rnd(67, n)
    for l in range(2):
        p = f"model.layers.{l}."
        sd.update({p + "input_layernorm.weight": 1 + rnd(n, std=0.1), p + "post_attention_layernorm.weight": 1 + rnd(n, std=0.1),
                   p + "self_attn.q_proj.weight": rnd(H * d, n), p + "self_attn.k_proj.weight": rnd(KV * d, n),
                   p + "self_attn.v_proj.weight": rnd(KV * d, n), p + "self_attn.o_proj.weight": rnd(n, H * d),
                   p + "mlp.gate_proj.weight": rnd(i, n), p + "mlp.up_proj.weight": rnd(i, n), p + "mlp.down_proj.weight": rnd(n, i)})
        if qwen:
            sd.update({p + "self_attn.q_proj.bias": rnd(H * d), p + "self_attn.k_proj.bias": rnd(KV * d), p + "self_attn.v_proj.bias": rnd(KV * d)})
    return cfg, sd, llama_forward


def write_case(name, case, ids, shard=False, dtype=torch.float32):
    cfg, sd, fwd = case
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    # Logits from the weights as stored (bf16 checkpoints are widened to fp32 by the loader).
    sd = {k: v.to(dtype) for k, v in sd.items()}
    logits = fwd({k: v.float() for k, v in sd.items()}, cfg, ids)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if shard:
        names = sorted(sd)
        half = len(names) // 2
        parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        for file, keys in parts.items():
            save_safetensors(os.path.join(folder, file), {k: sd[k] for k in keys})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": {k: file for file, keys in parts.items() for k in keys}}, f)
    else:
        save_safetensors(os.path.join(folder, "model.safetensors"), sd)
    with open(os.path.join(folder, "expected_logits.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "shape": list(logits.shape), "logits": [round(x, 7) for x in logits.flatten().tolist()]}, f)


def bleu_cases():
    from nltk.translate.bleu_score import sentence_bleu, SmoothingFunction
    pairs = [("the cat is on the mat", "the cat sat on the mat"),
             ("a small domesticated carnivorous mammal", "a small carnivorous mammal"),
             ("move fast by using one's feet", "move quickly"),
             ("an animal that lives on the farm", "the farm animal that lives there"),
             ("it is a guide to action that ensures the military will forever heed party commands",
              "it is a guide to action which ensures that the military always obeys the commands of the party"),
             ("one two three four", "one two three four"),
             ("alpha beta", "gamma"),
             ("x y z", "x")]
    sm = SmoothingFunction().method3
    return [{"reference": r, "hypothesis": h, "bleu": sentence_bleu([r.split()], h.split(), smoothing_function=sm)} for r, h in pairs]


if __name__ == "__main__":
    ids = torch.tensor([[1, 5, 9, 2, 33, 7, 60, 4, 11, 0, 3, 42], [8, 8, 8, 20, 21, 22, 23, 1, 2, 3, 4, 5]])
    write_case("gpt2", gpt2_case(), ids)
    write_case("llama-gqa", llama_case(), ids)
    write_case("qwen2-bias-sharded", llama_case(qwen=True), ids, shard=True)
    write_case("llama-tied-bf16", llama_case(tied=True), ids, dtype=torch.bfloat16)
    with open(os.path.join(OUT, "bleu_nltk.json"), "w") as f:
        json.dump(bleu_cases(), f, indent=1)
    print("fixtures written to", os.path.abspath(OUT))
