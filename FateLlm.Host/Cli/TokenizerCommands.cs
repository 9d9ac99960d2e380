using System.CommandLine;
using System.Text.Json;
using FateLlm.Training.Data;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary><c>tokenizer train|encode|decode</c>: BPE tokenizers trained on a public corpus, and ids for any tokenizer FateLlm loads.</summary>
internal static class TokenizerCommands
{
    public static Command Build(Terminal t)
    {
        var data = Required<string>("--data", "Public corpus JSONL (every string field of every line is text)");
        var vocab = Required<int>("--vocab", "Vocabulary size");
        var kind = Opt("--kind", "gpt2-bpe (vocab.json + merges.txt, Ġ word marker) | sentencepiece-bpe (tokenizer.model, ▁ marker, byte fallback)", "gpt2-bpe");
        var outDir = Required<string>("--out", "Output folder");
        var train = new Command("train", "Train a byte-level BPE (GPT-2 files) or a SentencePiece BPE (LLaMA's tokenizer.model) on a corpus").With(p =>
        {
            var k = TrainingCommands.ParseEnum(() => TokenizerTraining.ParseKind(p.GetValue(kind)!));
            var texts = TokenizerTraining.ReadCorpus(p.GetValue(data)!);
            TrainingCommands.ParseEnum(() =>
            {
                TokenizerTraining.Train(k, texts, TrainingCommands.Positive(p.GetValue(vocab), "--vocab"), p.GetValue(outDir)!);
                return k;
            });
            var tok = TokenizerLoader.Load(p.GetValue(outDir)!, null);
            t.Out.WriteLine($"{p.GetValue(kind)} tokenizer of {tok.VocabSize:N0} tokens trained on {texts.Count:N0} texts, written to {p.GetValue(outDir)}");
        }, data, vocab, kind, outDir);

        var folder = Required<string>("--tokenizer", "A model or tokenizer folder (vocab.json + merges.txt, tokenizer.model, or FateLlm's byte tokenizer)");
        var text = Required<string>("--text", "Text to encode");
        var special = Opt("--special", "Add BOS/EOS where the tokenizer's HF configuration adds them", false);
        var encode = new Command("encode", "Print the ids of a text, space-separated on one line").With(p =>
        {
            var tok = Load(p.GetValue(folder)!);
            var input = p.GetValue(text)!;
            t.Out.WriteLine(string.Join(' ', p.GetValue(special) ? InstructionData.TextIds(input, tok) : tok.Encode(input)));
        }, folder, text, special);

        var ids = Required<string>("--ids", "Space-separated ids");
        var decode = new Command("decode", "Print the text of ids (special tokens skipped)").With(p =>
        {
            var tok = Load(p.GetValue(folder)!);
            int[] parsed;
            try { parsed = p.GetValue(ids)!.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray(); }
            catch (FormatException) { throw new UsageException($"--ids '{p.GetValue(ids)}' must be space-separated integers"); }
            foreach (var i in parsed)
                if (i < 0 || i >= tok.VocabSize) throw new UsageException($"--ids: {i} is not an id of this tokenizer (0..{tok.VocabSize - 1})");
            t.Out.WriteLine(tok.Decode(parsed));
        }, folder, ids);

        var cmd = new Command("tokenizer", "Train tokenizers; encode and decode with any tokenizer FateLlm loads");
        foreach (var c in new[] { train, encode, decode }) cmd.Subcommands.Add(c);
        return cmd;
    }

    /// <summary>A model folder's tokenizer (with its config.json for special ids), or a tokenizer-only folder's.</summary>
    static ITextTokenizer Load(string folder)
    {
        if (!Directory.Exists(folder)) throw new ModelFormatException($"{folder}: tokenizer folder not found");
        var config = Path.Combine(folder, "config.json");
        return TokenizerLoader.Load(folder, File.Exists(config) ? ModelConfig.Load(config) : null);
    }
}
