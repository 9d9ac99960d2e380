// Writes the expected ids and chat renderings for the tokenizer.json fixtures (tests/FateLlm.Tests/Fixtures/tokenizers)
// with Hugging Face's JavaScript implementations, independent of the Rust library FateLlm runs:
// @huggingface/tokenizers 0.2.0 (tokenizers.js, used by transformers.js) and @huggingface/jinja 0.5.11.
// Dev-only; see make_tokenizer_fixtures.py for the full recipe. Run:
//   NODE_PATH=/tmp/jsref/node_modules node tests/reference/tokenizer_expected.mjs
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(join(process.env.NODE_PATH ?? "/tmp/jsref/node_modules", "x.js"));
const { Tokenizer } = require("@huggingface/tokenizers");
const { Template } = require("@huggingface/jinja");

const OUT = join(dirname(fileURLToPath(import.meta.url)), "..", "FateLlm.Tests", "Fixtures", "tokenizers");

export const TEXTS = [
  "Hello world",
  "The federation trained 12345 steps in 2026; loss fell from 3.14159 to 2.5.",
  "I'm sure they'LL say it's fine; WE'VE done it, you'd agree.",
  "  leading spaces,   runs   of spaces and trailing  ",
  "tabs\tand\nnew\n\nlines\r\nand CRLF",
  "Café au lait, naïve résumé — déjà vu.",
  "東京は日本の首都です。",
  "Emoji: 🙂🚀 and ∑ symbols ≈ ≠",
  "x = [1,2,3]; print(f'{x!r:>10}')",
  "special <|eot_id|> and <|im_end|> and [INST] inside text",
  "e\u0301 composed differently from é",
  // transformers' clean_up_tokenization at decode, on where tokenizer_config.json sets clean_up_tokenization_spaces
  "if (x != null) { say 'hi' , then stop . } Really ? Yes ! I 'm sure it 's done ; we 've , they 're , don 't ' quote",
  "",
];

const MESSAGES = {
  plain: [
    { role: "system", content: "  You answer briefly.  " },
    { role: "user", content: "What is an ox?" },
    { role: "assistant", content: "A bovine animal. " },
    { role: "user", content: "And a gnu?" },
  ],
  no_system: [
    { role: "user", content: "What is an ox?" },
    { role: "assistant", content: "A bovine animal." },
    { role: "user", content: "And a gnu?" },
  ],
  tools: [
    { role: "user", content: "Weather in Paris?" },
    { role: "assistant", content: "", tool_calls: [{ type: "function", function: { name: "get_weather", arguments: { city: "Paris", unit: "c" } } }] },
    { role: "tool", content: "{\"temp\": 21}" },
    { role: "user", content: "Thanks" },
  ],
  // integers stay integers (7, not 7.0) in a tool call's arguments, as Python's json and HF's jinja render them
  numbers: [
    { role: "user", content: "Forecast?" },
    { role: "assistant", content: "", tool_calls: [{ type: "function", function: { name: "forecast", arguments: { days: 7, scores: [1, 2.5, -3], p: 0.1 } } }] },
    { role: "user", content: "Thanks" },
  ],
};
const TOOLS = [{ type: "function", function: { name: "get_weather", description: "Weather now", parameters: { type: "object", properties: { city: { type: "string" } } } } }];

const result = { texts: TEXTS, tokenizers: {}, chat: [] };
for (const name of ["llama3", "qwen2", "mistral"]) {
  const tokJson = JSON.parse(readFileSync(join(OUT, name, "tokenizer.json"), "utf8"));
  const config = JSON.parse(readFileSync(join(OUT, name, "tokenizer_config.json"), "utf8"));
  const tok = new Tokenizer(tokJson, config);
  result.tokenizers[name] = {
    plain: TEXTS.map((t) => tok.encode(t, { add_special_tokens: false }).ids),
    with_specials: TEXTS.map((t) => tok.encode(t).ids),
    decoded: TEXTS.map((t) => { const ids = tok.encode(t, { add_special_tokens: false }).ids; return ids.length ? tok.decode(ids, { skip_special_tokens: true }) : ""; }),
  };
}

const templates = JSON.parse(readFileSync(join(OUT, "chat_templates.json"), "utf8"));
const specials = {
  llama3: { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" },
  "qwen2.5": { bos_token: null, eos_token: "<|im_end|>" },
  mistral: { bos_token: "<s>", eos_token: "</s>" },
  phi3: { bos_token: "<s>", eos_token: "<|endoftext|>" },
  gemma: { bos_token: "<bos>", eos_token: "<eos>" },
};
for (const [family, source] of Object.entries(templates)) {
  const template = new Template(source);
  for (const [set, messages] of Object.entries(MESSAGES)) {
    for (const addGenerationPrompt of [true, false]) {
      for (const withTools of set === "tools" ? [true] : [false]) {
        const vars = { messages, add_generation_prompt: addGenerationPrompt, ...specials[family] };
        if (withTools) vars.tools = TOOLS;
        let rendered = null, error = null;
        try { rendered = template.render(vars); } catch (e) { error = String(e.message ?? e); }
        result.chat.push({ family, messages: set, add_generation_prompt: addGenerationPrompt, tools: withTools, ...specials[family], rendered, error });
      }
    }
  }
}
result.messages = MESSAGES;
result.tools = TOOLS;
writeFileSync(join(OUT, "expected.json"), JSON.stringify(result, null, 1));
console.log("expected ids and renderings written to", join(OUT, "expected.json"));
