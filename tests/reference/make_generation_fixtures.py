#!/usr/bin/env python3
"""Writes the generation-parity fixtures under tests/FateLlm.Tests/Fixtures: a GPT-2 model folder with a byte-level BPE
tokenizer (vocab.json + merges.txt) and a LLaMA model folder with a SentencePiece tokenizer (tokenizer.model), each
with the prompt ids HF's tokenizer produces and the greedy continuation HF's generate produces. Both are computed here
independently of FateLlm: the GPT-2 encoder is GPT-2's own encoder.py algorithm, the SentencePiece ids come from
Google's sentencepiece library, the logits from the independent forward passes of make_fixtures.py, and decoding is
argmax until EOS or the token limit, as `generate(do_sample=False, max_new_tokens=N)` does. HF conventions applied:
GPT2Tokenizer adds no BOS; LlamaTokenizer adds BOS and no EOS.
Dev-only: apt-get install python3-torch python3-sentencepiece python3-regex. Run: /usr/bin/python3 tests/reference/make_generation_fixtures.py"""
import json, os, sys, tempfile
from collections import Counter
import regex as re
import torch
import sentencepiece as spm

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import OUT, gpt2_forward, llama_forward, save_safetensors, rnd

torch.manual_seed(20261126)
CORPUS = ["the cat sat on the mat", "a small domesticated carnivorous mammal", "the dog runs in the park",
          "an animal that lives on the farm", "a hand tool with a heavy head for driving nails",
          "a sweet yellow fluid made by bees", "the rain in spain falls mainly on the plain", "hello world, hello again!"]
PROMPTS = ["the cat", "Hello, world: a test of 3 words"]
NEW_TOKENS = 12


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


PAT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
B2U = bytes_to_unicode()


def pretokens(text):
    return ["".join(B2U[b] for b in t.encode("utf-8")) for t in re.findall(PAT, text)]


def merge(word, pair):
    """The word with every occurrence of the adjacent pair joined into one symbol."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_merges(n):
    words = Counter(tuple(t) for line in CORPUS for t in pretokens(line))
    merges = []
    for _ in range(n):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        new = Counter()
        for w, c in words.items():
            new[merge(w, best)] += c
        words = new
    return merges


def bpe(token, ranks):
    """GPT-2's encoder.py: merge the lowest-ranked adjacent pair until none is known."""
    word = tuple(token)
    while len(word) > 1:
        pairs = {(a, b) for a, b in zip(word, word[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        word = merge(word, best)
    return word


def greedy(fwd, sd, cfg, prompt_ids, eos):
    ids, new = list(prompt_ids), []
    for _ in range(NEW_TOKENS):
        nxt = int(fwd(sd, cfg, torch.tensor([ids]))[0, -1].argmax())
        if nxt == eos:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def gpt2_fixture():
    folder = os.path.join(OUT, "gpt2-bpe-generate")
    os.makedirs(folder, exist_ok=True)
    merges = train_merges(60)
    vocab = {u: i for i, u in enumerate(B2U[b] for b in sorted(B2U))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    eos = len(vocab)
    vocab["<|endoftext|>"] = eos
    ranks = {m: i for i, m in enumerate(merges)}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "model_max_length": 64}, f, indent=2)
    n, i, V = 32, 128, len(vocab)
    cfg = {"model_type": "gpt2", "vocab_size": V, "n_embd": n, "n_layer": 2, "n_head": 4, "n_positions": 64, "n_inner": None,
           "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "bos_token_id": eos, "eos_token_id": eos,
           "architectures": ["GPT2LMHeadModel"]}
    sd = {"transformer.wte.weight": rnd(V, n, std=0.6), "transformer.wpe.weight": rnd(64, n),
          "transformer.ln_f.weight": 1 + rnd(n, std=0.1), "transformer.ln_f.bias": rnd(n, std=0.1)}
    for l in range(2):
        p = f"transformer.h.{l}."
        sd.update({p + "ln_1.weight": 1 + rnd(n, std=0.1), p + "ln_1.bias": rnd(n, std=0.1),
                   p + "attn.c_attn.weight": rnd(n, 3 * n), p + "attn.c_attn.bias": rnd(3 * n),
                   p + "attn.c_proj.weight": rnd(n, n), p + "attn.c_proj.bias": rnd(n),
                   p + "ln_2.weight": 1 + rnd(n, std=0.1), p + "ln_2.bias": rnd(n, std=0.1),
                   p + "mlp.c_fc.weight": rnd(n, i), p + "mlp.c_fc.bias": rnd(i),
                   p + "mlp.c_proj.weight": rnd(i, n), p + "mlp.c_proj.bias": rnd(n)})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(folder, "model.safetensors"), sd)
    cases = []
    for prompt in PROMPTS:
        ids = [vocab[t] for tok in pretokens(prompt) for t in bpe(tok, ranks)]  # GPT2Tokenizer: no BOS
        cases.append({"prompt": prompt, "prompt_ids": ids, "new_ids": greedy(gpt2_forward, sd, cfg, ids, eos)})
    with open(os.path.join(folder, "expected_generation.json"), "w") as f:
        json.dump({"max_new_tokens": NEW_TOKENS, "cases": cases}, f, indent=1)


def llama_fixture():
    folder = os.path.join(OUT, "llama-spm-generate")
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            f.write("\n".join(CORPUS * 4))
        spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(tmp, "sp"), vocab_size=330, model_type="bpe",
                                       byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
                                       add_dummy_prefix=True, normalization_rule_name="identity", minloglevel=2)
        with open(os.path.join(tmp, "sp.model"), "rb") as src, open(os.path.join(folder, "tokenizer.model"), "wb") as dst:
            dst.write(src.read())
    sp = spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "model_max_length": 128}, f, indent=2)
    n, H, KV, d, i, V = 48, 6, 2, 8, 96, sp.get_piece_size()
    cfg = {"model_type": "llama", "vocab_size": V, "hidden_size": n, "num_hidden_layers": 2, "num_attention_heads": H,
           "num_key_value_heads": KV, "intermediate_size": i, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
           "rope_scaling": None, "bos_token_id": 1, "eos_token_id": 2}
    sd = {"model.embed_tokens.weight": rnd(V, n, std=0.6), "model.norm.weight": 1 + rnd(n, std=0.1), "lm_head.weight": rnd(V, n, std=0.6)}
    for l in range(2):
        p = f"model.layers.{l}."
        sd.update({p + "input_layernorm.weight": 1 + rnd(n, std=0.1), p + "post_attention_layernorm.weight": 1 + rnd(n, std=0.1),
                   p + "self_attn.q_proj.weight": rnd(H * d, n), p + "self_attn.k_proj.weight": rnd(KV * d, n),
                   p + "self_attn.v_proj.weight": rnd(KV * d, n), p + "self_attn.o_proj.weight": rnd(n, H * d),
                   p + "mlp.gate_proj.weight": rnd(i, n), p + "mlp.up_proj.weight": rnd(i, n), p + "mlp.down_proj.weight": rnd(n, i)})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(folder, "model.safetensors"), sd)
    cases = []
    for prompt in PROMPTS:
        ids = [1] + sp.encode(prompt)  # LlamaTokenizer: BOS, no EOS
        cases.append({"prompt": prompt, "prompt_ids": ids, "new_ids": greedy(llama_forward, sd, cfg, ids, 2)})
    with open(os.path.join(folder, "expected_generation.json"), "w") as f:
        json.dump({"max_new_tokens": NEW_TOKENS, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    gpt2_fixture()
    llama_fixture()
    print("generation fixtures written to", os.path.abspath(OUT))
