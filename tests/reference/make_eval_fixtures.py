#!/usr/bin/env python3
"""Writes the evaluation-harness fixture under tests/FateLlm.Tests/Fixtures/eval: a tiny LLaMA with FateLlm's byte
tokenizer (ids 0-255 are UTF-8 bytes, 256 BOS, 257 EOS, 258 pad), three lm-eval tasks on local JSONL (arc_easy's
YAML with local data, a wikitext-style rolling-perplexity task, a generate_until task), and expected.json with
what lm-eval's HF backend computes for them, written out here independently of FateLlm:
  * _encode_pair: trailing whitespace of the context moves to the continuation; the continuation's tokens are
    what encoding context + continuation adds after the context's tokens; contexts start with BOS (FateLlm's
    --bos auto for a tokenizer that adds one);
  * _loglikelihood_tokens: (context + continuation)[-(max_length + 1):][:-1] is the input, the continuation's
    log-softmax over the last positions is summed, is_greedy compares argmaxes;
  * multiple_choice: acc = argmax ll, acc_norm = argmax ll / len(choice in characters), stderr = sd(ddof=1)/sqrt(n);
  * loglikelihood_rolling: get_rolling_token_windows(prefix=BOS, max_seq_len=max_length, context_len=1) and
    make_disjoint_window; word_perplexity = exp(-sum ll / sum words), byte_perplexity alike with bytes,
    bits_per_byte = -sum ll / sum bytes / ln 2;
  * few-shot contexts: random.Random(1234).sample of the training split per document, in document order;
  * generate_until: greedy decoding of max_gen_toks tokens (stopping at EOS), cut at the first stop sequence;
    exact_match with ignore_case.
The model's max_position_embeddings is 24, so long contexts are cut from the left and long documents take
several rolling windows. Dev-only (python3-torch); CI uses the committed output.
Run: /usr/bin/python3 tests/reference/make_eval_fixtures.py"""
import json, math, os, re, sys
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import OUT as FIXTURES, save_safetensors, llama_forward

OUT = os.path.join(FIXTURES, "eval")
torch.manual_seed(3)
BOS, EOS, VOCAB, MAX_LEN = 256, 257, 259, 24


def rnd(*shape, std=0.2):
    return torch.randn(*shape) * std


def model():
    n, H, KV, d, i = 32, 4, 2, 8, 64
    cfg = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": n, "num_hidden_layers": 2, "num_attention_heads": H,
           "num_key_value_heads": KV, "intermediate_size": i, "max_position_embeddings": MAX_LEN, "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False, "rope_scaling": None,
           "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": 258}
    sd = {"model.embed_tokens.weight": rnd(VOCAB, n, std=0.5), "model.norm.weight": 1 + rnd(n, std=0.1), "lm_head.weight": rnd(VOCAB, n, std=0.15)}
    for l in range(2):
        p = f"model.layers.{l}."
        sd.update({p + "input_layernorm.weight": 1 + rnd(n, std=0.1), p + "post_attention_layernorm.weight": 1 + rnd(n, std=0.1),
                   p + "self_attn.q_proj.weight": rnd(H * d, n), p + "self_attn.k_proj.weight": rnd(KV * d, n),
                   p + "self_attn.v_proj.weight": rnd(KV * d, n), p + "self_attn.o_proj.weight": rnd(n, H * d),
                   p + "mlp.gate_proj.weight": rnd(i, n), p + "mlp.up_proj.weight": rnd(i, n), p + "mlp.down_proj.weight": rnd(n, i)})
    return cfg, sd


def enc(text):
    return list(text.encode("utf-8"))


def logits_of(sd, cfg, ids):
    with torch.no_grad():
        return llama_forward(sd, cfg, torch.tensor([ids]))[0]


def loglikelihood(sd, cfg, context, continuation):
    """lm-eval's _loglikelihood_tokens for one request of token lists."""
    whole = (context + continuation)[-(MAX_LEN + 1):][:-1]
    logp = F.log_softmax(logits_of(sd, cfg, whole)[len(whole) - len(continuation):], dim=-1)
    target = torch.tensor(continuation)
    ll = logp.gather(1, target[:, None]).sum().item()
    return ll, bool((logp.argmax(-1) == target).all())


def encode_pair(context, continuation):
    spaces = len(context) - len(context.rstrip())
    if spaces > 0:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = [BOS] + enc(context + continuation)
    ctx = [BOS] + enc(context)
    return ctx, whole[len(ctx):]


def rolling_windows(tokens, prefix, max_seq_len):
    pred_len = max_seq_len
    first = min(max_seq_len, len(tokens))
    windows = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        wl = min(len(tokens) - predicted, pred_len)
        end = predicted + wl
        windows.append((tokens[end - max_seq_len - 1:end - 1], tokens[end - wl:end]))
        predicted += wl
    return [(a[:len(a) - (len(b) - 1)], b) for a, b in windows]


def stderr(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


ARC = [
    {"id": "q1", "question": "Which one is a mammal?", "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "q2", "question": "What melts ice fastest?", "choices": {"text": ["salt", "sand", "it's cold air"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    {"id": "q3", "question": "Water boils at sea level at what temperature in degrees Celsius, roughly?",
     "choices": {"text": ["50", "100", "150", "212"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
    {"id": "q4", "question": "Plants make food by", "choices": {"text": ["photosynthesis", "digestion", "respiration only", "fermenting"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "q5", "question": "A magnet attracts", "choices": {"text": ["iron", "glass", "wood", "paper"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "q6", "question": "The Sun is a", "choices": {"text": ["planet", "star", "moon", "comet"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
]
ARC_YAML = """tag:
  - ai2_arc
task: arc_easy
dataset_path: json
dataset_name: ARC-Easy
dataset_kwargs:
  data_files:
    test: arc-test.jsonl
    train: arc-train.jsonl
output_type: multiple_choice
training_split: train
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{question}}\\nAnswer:"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
WIKI = [{"page": "The cat sat on the mat."}, {"page": "Short"},
        {"page": "A much longer page of text that needs several rolling windows at twenty-four tokens a window, and ends here."},
        {"page": "Héllo wörld: bytes differ from characters."}]
WIKI_YAML = """task: tiny_wikitext
dataset_path: json
dataset_kwargs:
  data_files:
    test: wiki-test.jsonl
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{page}}"
metadata:
  version: 2.0
"""
QA = [{"question": "2+2", "answer": "4"}, {"question": "color of sky", "answer": "Blue"}, {"question": "cat", "answer": "meow"}]
QA_YAML = """task: tiny_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: qa-test.jsonl
output_type: generate_until
test_split: test
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
    ignore_case: true
  - metric: rougeL
  - metric: bleu
"""


def main():
    cfg, sd = model()
    folder = os.path.join(OUT, "model")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(folder, "model.safetensors"), sd)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "FateLlmByteTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "model_max_length": MAX_LEN}, f, indent=2)
    for name, rows in [("arc-test.jsonl", ARC), ("arc-train.jsonl", ARC[:3]), ("wiki-test.jsonl", WIKI), ("qa-test.jsonl", QA)]:
        with open(os.path.join(OUT, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for name, text in [("arc_easy.yaml", ARC_YAML), ("tiny_wikitext.yaml", WIKI_YAML), ("tiny_qa.yaml", QA_YAML)]:
        with open(os.path.join(OUT, name), "w") as f:
            f.write(text)

    arc, acc, acc_norm = [], [], []
    for doc in ARC:
        ctx = f"Question: {doc['question']}\nAnswer:"
        choices = doc["choices"]["text"]
        gold = doc["choices"]["label"].index(doc["answerKey"])
        scored = [loglikelihood(sd, cfg, *encode_pair(ctx, " " + c)) for c in choices]
        lls = [s[0] for s in scored]
        pred = max(range(len(lls)), key=lambda i: lls[i])
        pred_norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
        acc.append(1.0 if pred == gold else 0.0)
        acc_norm.append(1.0 if pred_norm == gold else 0.0)
        arc.append({"loglikelihoods": lls, "greedy": [s[1] for s in scored], "gold": gold})

    wiki, total_ll, words, nbytes = [], 0.0, 0, 0
    for doc in WIKI:
        text = doc["page"]
        windows = rolling_windows(enc(text), BOS, MAX_LEN)
        ll = sum(loglikelihood(sd, cfg, c, t)[0] for c, t in windows)
        wiki.append({"loglikelihood": ll, "windows": len(windows)})
        total_ll += ll
        words += len(re.split(r"\s+", text))
        nbytes += len(text.encode("utf-8"))

    qa, em = [], []
    for doc in QA:
        ids = [BOS] + enc(f"Q: {doc['question']}\nA:")
        out = []
        for _ in range(6):
            nxt = int(logits_of(sd, cfg, ids + out)[-1].argmax())
            if nxt == EOS:
                break
            out.append(nxt)
        text = bytes([t for t in out if t < 256]).decode("utf-8", errors="replace")
        for stop in ["\n", "."]:
            text = text.split(stop)[0]
        qa.append({"prediction": text})
        em.append(1.0 if text.lower() == doc["answer"].lower() else 0.0)

    # lm-eval's ContextSampler with fewshot_random_seed 1234: one random.Random for the task, sample() per document in
    # order, from the training split (no fewshot_split, so no extra draw), joined by fewshot_delimiter.
    import random
    rnd = random.Random(1234)
    fewshot = []
    for doc in ARC[:4]:
        shots = [d for d in rnd.sample(ARC[:3], 2) if d != doc][:2]
        labeled = "\n\n".join(f"Question: {d['question']}\nAnswer:" + " " + d["choices"]["text"][d["choices"]["label"].index(d["answerKey"])] for d in shots)
        fewshot.append(labeled + "\n\n" + f"Question: {doc['question']}\nAnswer:")

    expected = {
        "arc_easy_2shot": {"contexts": fewshot},
        "arc_easy": {"docs": arc, "acc": sum(acc) / len(acc), "acc_stderr": stderr(acc), "acc_norm": sum(acc_norm) / len(acc_norm), "acc_norm_stderr": stderr(acc_norm)},
        "tiny_wikitext": {"docs": wiki, "word_perplexity": math.exp(-total_ll / words), "byte_perplexity": math.exp(-total_ll / nbytes),
                          "bits_per_byte": -total_ll / nbytes / math.log(2)},
        "tiny_qa": {"docs": qa, "exact_match": sum(em) / len(em)},
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print("eval fixture written to", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
