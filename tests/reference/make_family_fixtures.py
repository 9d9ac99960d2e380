#!/usr/bin/env python3
"""Writes the model-family parity fixtures under tests/FateLlm.Tests/Fixtures/families: for each family FateLlm
loads (Llama 3.x, Qwen2.5, Qwen3, Mistral, Phi-3, Gemma, Gemma 2, Gemma 3) and each rope_scaling type (linear, dynamic, llama3, yarn,
longrope), a checkpoint whose config.json has that family's real shape scaled down, plus
  expected.json   logits of a batch, and the greedy continuation of a prompt with a KV cache, as
                  generate(do_sample=False) computes it (keys cached as rotated when they were computed);
  lora.safetensors LoRA factors for the family's PEFT default targets, the merged weights W + (alpha/r)·B·A and the
                  logits of the adapted model.
Everything here is an independent PyTorch implementation of HF's modeling_{llama,qwen2,qwen3,mistral,phi3,gemma,gemma2,gemma3} and
modeling_rope_utils formulas; FateLlm's code is not used. Dev-only (python3-torch); CI uses the committed output.
Run: /usr/bin/python3 tests/reference/make_family_fixtures.py"""
import json, math, os, sys
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import OUT as FIXTURES, save_safetensors

OUT = os.path.join(FIXTURES, "families")
torch.manual_seed(20261126)
LORA_R, LORA_ALPHA = 4, 8.0


def rnd(*shape, std=0.2):
    return torch.randn(*shape) * std


# ---- rotary frequencies, one function per HF rope_type -------------------------------------------------------

def rotary_dim(cfg):
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return int(d * cfg.get("partial_rotary_factor", 1.0))


def plain_inv_freq(base, dim):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def inv_freq_and_scale(cfg, seq_len):
    """(inv_freq, attention_scaling) for a forward pass whose largest position is seq_len - 1."""
    base, dim, rs = cfg["rope_theta"], rotary_dim(cfg), cfg.get("rope_scaling")
    kind = (rs or {}).get("rope_type", (rs or {}).get("type", "default"))
    if kind == "default":
        return plain_inv_freq(base, dim), 1.0
    if kind == "linear":
        return plain_inv_freq(base, dim) / rs["factor"], 1.0
    if kind == "dynamic":
        orig = rs.get("original_max_position_embeddings", cfg["max_position_embeddings"])
        L = max(seq_len, orig)
        b = base * ((rs["factor"] * L / orig) - (rs["factor"] - 1)) ** (dim / (dim - 2))
        return plain_inv_freq(b, dim), 1.0
    if kind == "llama3":
        inv = plain_inv_freq(base, dim)
        factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > lo_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < hi_wl) * ~(wavelen > lo_wl)
        return torch.where(medium, smoothed, out), 1.0
    if kind == "yarn":
        factor = rs["factor"]
        orig = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        mscale = lambda s, m=1: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
        att = rs.get("attention_factor")
        if att is None:
            att = mscale(factor, rs["mscale"]) / mscale(factor, rs["mscale_all_dim"]) if rs.get("mscale") and rs.get("mscale_all_dim") else mscale(factor)
        corr = lambda rot: (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))
        lo, hi = corr(rs.get("beta_fast") or 32), corr(rs.get("beta_slow") or 1)
        if rs.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
        pos = base ** (torch.arange(0, dim, 2).float() / dim)
        extra = 1 - ramp
        return (1.0 / (factor * pos)) * (1 - extra) + (1.0 / pos) * extra, att
    if kind == "longrope":
        orig = cfg["original_max_position_embeddings"]
        factor = cfg["max_position_embeddings"] / orig
        att = rs.get("attention_factor") or (1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig)))
        ext = torch.tensor(rs["long_factor"] if seq_len > orig else rs["short_factor"], dtype=torch.float32)
        return 1.0 / (ext * base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), att
    raise ValueError(kind)


# ---- the decoder ---------------------------------------------------------------------------------------------

def rms(x, w, eps, gemma):
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (n * (1.0 + w.float())).to(x.dtype) if gemma else w * n.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(x, cos, sin):
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


def act(name, x):
    return {"silu": F.silu, "gelu_pytorch_tanh": lambda t: F.gelu(t, approximate="tanh"), "gelu": F.gelu}[name](x)


GEMMA_NORM = ("gemma", "gemma2", "gemma3_text")


def sliding_layers(cfg):
    """Which layers attend through the sliding window: HF's layer_types, or what each config class derives."""
    kind, L = cfg["model_type"], cfg["num_hidden_layers"]
    if kind in ("mistral", "phi3"):
        return [bool(cfg.get("sliding_window"))] * L
    if kind in ("gemma2", "gemma3_text"):
        if cfg.get("layer_types"):
            return [t == "sliding_attention" for t in cfg["layer_types"]]
        pattern = cfg.get("sliding_window_pattern", 6) if kind == "gemma3_text" else 2
        return [bool((i + 1) % pattern) for i in range(L)]
    return [False] * L


def rope_tables(cfg, pos, seq_len, local):
    if local:  # Gemma 3's sliding layers: their own base, never scaled
        inv, scale = plain_inv_freq(cfg["rope_local_base_freq"], rotary_dim(cfg)), 1.0
    else:
        inv, scale = inv_freq_and_scale(cfg, seq_len)
    freqs = torch.outer(pos.float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale)[None, None], (emb.sin() * scale)[None, None]


def softcap(x, cap):
    return torch.tanh(x / cap) * cap if cap else x


def forward(sd, cfg, ids, cache=None):
    """Logits of ids placed after the cached positions; cache is a list of (k, v) per layer, extended in place."""
    kind = cfg["model_type"]
    gemma, phi3 = kind in GEMMA_NORM, kind == "phi3"
    sandwich = kind in ("gemma2", "gemma3_text")
    n, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    d = cfg.get("head_dim") or n // H
    B, T = ids.shape
    past = cache[0][0].shape[2] if cache and cache[0] is not None else 0
    pos = torch.arange(past, past + T)
    tables = {False: rope_tables(cfg, pos, past + T, False)}
    if kind == "gemma3_text":
        tables[True] = rope_tables(cfg, pos, past + T, True)
    q_idx, k_idx = pos[:, None], torch.arange(past + T)[None, :]
    causal = k_idx <= q_idx
    window = cfg.get("sliding_window")
    local_allowed = causal & (k_idx > q_idx - window) if window else causal
    sliding = sliding_layers(cfg)
    act_name = cfg.get("hidden_activation") or "gelu_pytorch_tanh" if gemma else cfg.get("hidden_act", "silu")
    eps = cfg["rms_norm_eps"]
    scaling = cfg["query_pre_attn_scalar"] ** -0.5 if sandwich else None

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    h = sd["model.embed_tokens.weight"][ids]
    if gemma:
        h = h * torch.tensor(n ** 0.5, dtype=h.dtype)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rms(h, sd[p + "input_layernorm.weight"], eps, gemma)
        if phi3:
            qkv = lin(a, p + "self_attn.qkv_proj")
            q, k, v = qkv[..., :H * d], qkv[..., H * d:(H + KV) * d], qkv[..., (H + KV) * d:]
        else:
            q, k, v = lin(a, p + "self_attn.q_proj"), lin(a, p + "self_attn.k_proj"), lin(a, p + "self_attn.v_proj")
        q, k, v = q.reshape(B, T, H, d), k.reshape(B, T, KV, d), v.reshape(B, T, KV, d)
        if p + "self_attn.q_norm.weight" in sd:  # Qwen3, Gemma 3: RMSNorm over each head before RoPE
            q, k = rms(q, sd[p + "self_attn.q_norm.weight"], eps, gemma), rms(k, sd[p + "self_attn.k_norm.weight"], eps, gemma)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = tables[sliding[l] and kind == "gemma3_text"]
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            if cache[l] is not None:
                k, v = torch.cat((cache[l][0], k), 2), torch.cat((cache[l][1], v), 2)
            cache[l] = (k, v)
        rep = H // KV
        k = k[:, :, None].expand(B, KV, rep, k.shape[2], d).reshape(B, H, -1, d)
        v = v[:, :, None].expand(B, KV, rep, v.shape[2], d).reshape(B, H, -1, d)
        scores = q @ k.transpose(-1, -2)
        scores = softcap(scores * scaling, cfg.get("attn_logit_softcapping")) if scaling else scores / math.sqrt(d)
        allowed = local_allowed if sliding[l] else causal
        w = scores.masked_fill(~allowed, torch.finfo(torch.float32).min).softmax(-1)
        o = lin((w @ v).transpose(1, 2).reshape(B, T, H * d), p + "self_attn.o_proj")
        if sandwich:
            o = rms(o, sd[p + "post_attention_layernorm.weight"], eps, gemma)
            h = h + o
            m = rms(h, sd[p + "pre_feedforward_layernorm.weight"], eps, gemma)
        else:
            h = h + o
            m = rms(h, sd[p + "post_attention_layernorm.weight"], eps, gemma)
        if phi3:
            gu = lin(m, p + "mlp.gate_up_proj")
            gate, up = gu.chunk(2, dim=-1)
        else:
            gate, up = lin(m, p + "mlp.gate_proj"), lin(m, p + "mlp.up_proj")
        f = lin(act(act_name, gate) * up, p + "mlp.down_proj")
        h = h + (rms(f, sd[p + "post_feedforward_layernorm.weight"], eps, gemma) if sandwich else f)
    h = rms(h, sd["model.norm.weight"], eps, gemma)
    head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", gemma) else sd["lm_head.weight"]
    return softcap(h @ head.T, cfg.get("final_logit_softcapping"))


def greedy(sd, cfg, prompt, new_tokens):
    cache = [None] * cfg["num_hidden_layers"]
    logits = forward(sd, cfg, torch.tensor([prompt]), cache)
    out = []
    for _ in range(new_tokens):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        logits = forward(sd, cfg, torch.tensor([[nxt]]), cache)
    return out


# ---- the families, real config.json shapes scaled down --------------------------------------------------------

V = 71


def norm_of(size, gemma):
    return rnd(size, std=0.1) if gemma else 1 + rnd(size, std=0.1)


def weights(cfg, qkv_bias=False):
    n, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV, d, i = cfg.get("num_key_value_heads", H), cfg.get("head_dim") or n // H, cfg["intermediate_size"]
    kind = cfg["model_type"]
    gemma, phi3 = kind in GEMMA_NORM, kind == "phi3"
    norm = (lambda: rnd(n, std=0.1)) if gemma else (lambda: 1 + rnd(n, std=0.1))
    sd = {"model.embed_tokens.weight": rnd(V, n, std=0.5 if not gemma else 0.05), "model.norm.weight": norm()}
    if not cfg.get("tie_word_embeddings", gemma):
        sd["lm_head.weight"] = rnd(V, n)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        sd.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                   p + "self_attn.o_proj.weight": rnd(n, H * d), p + "mlp.down_proj.weight": rnd(n, i)})
        if phi3:
            sd.update({p + "self_attn.qkv_proj.weight": rnd((H + 2 * KV) * d, n), p + "mlp.gate_up_proj.weight": rnd(2 * i, n)})
        else:
            sd.update({p + "self_attn.q_proj.weight": rnd(H * d, n), p + "self_attn.k_proj.weight": rnd(KV * d, n),
                       p + "self_attn.v_proj.weight": rnd(KV * d, n), p + "mlp.gate_proj.weight": rnd(i, n), p + "mlp.up_proj.weight": rnd(i, n)})
        if kind in ("qwen3", "gemma3_text"):
            sd.update({p + "self_attn.q_norm.weight": norm_of(d, gemma), p + "self_attn.k_norm.weight": norm_of(d, gemma)})
        if kind in ("gemma2", "gemma3_text"):
            sd.update({p + "pre_feedforward_layernorm.weight": norm(), p + "post_feedforward_layernorm.weight": norm()})
        if qkv_bias:
            sd.update({p + "self_attn.q_proj.bias": rnd(H * d), p + "self_attn.k_proj.bias": rnd(KV * d), p + "self_attn.v_proj.bias": rnd(KV * d)})
    return sd


def llama3():
    # Llama-3.2-1B's config.json, scaled: tied head, GQA 4:1, llama3 rope scaling.
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 1, "eos_token_id": [2, 3], "head_dim": 8, "hidden_act": "silu", "hidden_size": 32,
            "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 131072, "mlp_bias": False,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": V}


def qwen25():
    # Qwen2.5-0.5B-Instruct's config.json, scaled: qkv bias, tied head, GQA, no sliding window.
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0, "bos_token_id": 1,
            "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 48, "initializer_range": 0.02, "intermediate_size": 96,
            "max_position_embeddings": 32768, "max_window_layers": 21, "num_attention_heads": 6, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": V}


def mistral():
    # Mistral-7B-v0.1's config.json, scaled: sliding window (4096 there, 5 here so a 12-token input crosses it).
    return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 80,
            "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 5, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": V}


def phi3(long_rope):
    # Phi-3-mini-4k (sliding window, plain RoPE) or Phi-3.5-mini (longrope, original 4096 of 131072), scaled; fused projections.
    d = 8
    cfg = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "attention_bias": False, "attention_dropout": 0.0,
           "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 32,
           "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 64, "num_attention_heads": 4,
           "num_hidden_layers": 2, "num_key_value_heads": 4, "original_max_position_embeddings": 64, "pad_token_id": 0,
           "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 7,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": V}
    if long_rope:
        cfg.update({"max_position_embeddings": 256, "original_max_position_embeddings": 8, "sliding_window": 262144,
                    "partial_rotary_factor": 0.75,
                    "rope_scaling": {"type": "longrope",
                                     "short_factor": [round(1.0 + 0.1 * j, 3) for j in range(3)],
                                     "long_factor": [round(1.5 + 2.0 * j, 3) for j in range(3)]}})
    return cfg


def gemma():
    # Gemma-2b's config.json, scaled: multi-query attention, head_dim wider than hidden/heads, GeGLU, tied head.
    return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 2, "eos_token_id": 1, "head_dim": 16, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 8192,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1, "pad_token_id": 0, "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": V}


def qwen3():
    # Qwen3-1.7B's config.json, scaled: head_dim wider than hidden/heads, per-head q/k norm, no qkv bias, tied head.
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 1, "eos_token_id": 2, "head_dim": 16, "hidden_act": "silu", "hidden_size": 32,
            "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 40960, "max_window_layers": 28,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
            "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": V}


def gemma2():
    # Gemma-2-2b's config.json, scaled: sliding window on even layers (4096 there, 5 here), query_pre_attn_scalar apart
    # from head_dim (as Gemma-2-27b), soft-capping (50 and 30 there; 3 and 5 here so that they bite at this size).
    return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attention_bias": False, "attention_dropout": 0.0,
            "attn_logit_softcapping": 3.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 7],
            "final_logit_softcapping": 5.0, "head_dim": 16, "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 96,
            "max_position_embeddings": 8192, "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 2,
            "pad_token_id": 0, "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 5,
            "torch_dtype": "float32", "use_cache": True, "vocab_size": V}


def gemma3():
    # Gemma-3-1b's config.json, scaled: q/k norm, five sliding layers in six there (two in three here, window 5), a
    # local RoPE base apart from the global one, and Gemma-3-4b's linear rope_scaling, which only global layers use.
    return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
            "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
            "eos_token_id": [1, 6], "final_logit_softcapping": None, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 32768,
            "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 1, "pad_token_id": 0,
            "query_pre_attn_scalar": 16, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000, "sliding_window": 5,
            "sliding_window_pattern": 3, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": V}


def rope_case(scaling, max_pos=32):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 32,
           "intermediate_size": 64, "max_position_embeddings": max_pos, "num_attention_heads": 4, "num_hidden_layers": 2,
           "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False,
           "rope_scaling": scaling, "vocab_size": V}
    return cfg


CASES = {
    "llama3": (llama3(), False, ["q_proj", "v_proj"]),
    "qwen2.5": (qwen25(), True, ["q_proj", "v_proj"]),
    "mistral": (mistral(), False, ["q_proj", "v_proj"]),
    "phi3": (phi3(False), False, ["qkv_proj", "gate_up_proj"]),
    "phi3.5-longrope": (phi3(True), False, ["qkv_proj", "gate_up_proj"]),
    "gemma": (gemma(), False, ["q_proj", "v_proj"]),
    "rope-linear": (rope_case({"rope_type": "linear", "factor": 4.0}), False, ["q_proj", "v_proj"]),
    # max_position_embeddings 8: the 12-token batch and the generation run past it, so the NTK base grows.
    "rope-dynamic": (rope_case({"rope_type": "dynamic", "factor": 2.0}, max_pos=8), False, ["q_proj", "v_proj"]),
    "rope-yarn": (rope_case({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, max_pos=64), False, ["q_proj", "v_proj"]),
    "rope-yarn-mscale": (rope_case({"type": "yarn", "factor": 40.0, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                                    "mscale_all_dim": 0.707, "original_max_position_embeddings": 16}, max_pos=640), False, ["q_proj", "v_proj"]),
    # Appended after the others so that their random weights stay as committed.
    "qwen3": (qwen3(), False, ["q_proj", "v_proj"]),
    "gemma2": (gemma2(), False, ["q_proj", "v_proj"]),
    "gemma3": (gemma3(), False, ["q_proj", "v_proj"]),
}

IDS = torch.tensor([[1, 5, 9, 2, 33, 7, 60, 4, 11, 0, 3, 42], [8, 8, 8, 20, 21, 22, 23, 1, 2, 3, 4, 5]])
PROMPT, NEW_TOKENS = [1, 17, 4, 9], 10


def write(name, cfg, qkv_bias, targets):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    sd = weights(cfg, qkv_bias)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(folder, "model.safetensors"), sd)
    logits = forward(sd, cfg, IDS)
    # LoRA on PEFT's default targets of the family: merged weight W + (alpha / r) · B · A.
    lora, merged = {}, dict(sd)
    for key in sorted(sd):
        mod = key[: -len(".weight")]
        if key.endswith(".weight") and mod.split(".")[-1] in targets:
            out_f, in_f = sd[key].shape
            a, b = rnd(LORA_R, in_f, std=0.3), rnd(out_f, LORA_R, std=0.3)
            lora[mod + ".lora_A.weight"], lora[mod + ".lora_B.weight"] = a, b
            merged[key] = sd[key] + (LORA_ALPHA / LORA_R) * (b @ a)
            lora["merged." + key] = merged[key]
    save_safetensors(os.path.join(folder, "lora.safetensors"), lora)
    adapted = forward(merged, cfg, IDS)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump({"input_ids": IDS.tolist(), "shape": list(logits.shape),
                   "logits": [round(x, 7) for x in logits.flatten().tolist()],
                   "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "targets": targets,
                            "logits": [round(x, 7) for x in adapted.flatten().tolist()]},
                   "prompt": PROMPT, "greedy": greedy(sd, cfg, PROMPT, NEW_TOKENS)}, f)


if __name__ == "__main__":
    for name, (cfg, bias, targets) in CASES.items():
        write(name, cfg, bias, targets)
    print("family fixtures written to", os.path.abspath(OUT))
