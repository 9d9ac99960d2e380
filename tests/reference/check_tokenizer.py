"""Encodes texts with the reference implementations, independently of FateLlm, to check its tokenizer files.

  check_tokenizer.py sentencepiece DIR < texts.txt   -> ids per line, with Google's sentencepiece on DIR/tokenizer.model
  check_tokenizer.py gpt2 DIR < texts.txt            -> ids per line, with GPT-2's own encoder.py algorithm on
                                                        DIR/vocab.json + DIR/merges.txt (what HF's GPT2Tokenizer does)
Each input line is one JSON string; each output line is the ids, space-separated, then a tab and the decoded text as JSON.
"""
import json
import sys

import regex


def bytes_to_unicode():
    # GPT-2's encoder.py, verbatim in effect.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Gpt2:
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, folder):
        self.encoder = json.load(open(f"{folder}/vocab.json", encoding="utf-8"))
        self.decoder = {v: k for k, v in self.encoder.items()}
        lines = open(f"{folder}/merges.txt", encoding="utf-8").read().split("\n")
        assert lines[0].startswith("#version"), "merges.txt must start with its #version line"
        merges = [tuple(l.split(" ")) for l in lines[1:] if l]
        self.ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}

    def bpe(self, token):
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def encode(self, text):
        ids = []
        for token in regex.findall(self.pattern, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


def main():
    kind, folder = sys.argv[1], sys.argv[2]
    if kind == "sentencepiece":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
        encode, decode = sp.encode, sp.decode
    else:
        g = Gpt2(folder)
        encode, decode = g.encode, g.decode
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        ids = encode(json.loads(line))
        out.write(" ".join(map(str, ids)) + "\t" + json.dumps(decode(ids), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
