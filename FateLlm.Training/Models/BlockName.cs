using System.Text.RegularExpressions;

namespace FateLlm.Training.Models;

/// <summary>HF names of decoder-block tensors and modules: <c>model.layers.{i}.…</c> (LLaMA family) or <c>transformer.h.{i}.…</c> (GPT-2).</summary>
public static class BlockName
{
    static readonly Regex Block = new(@"^(model\.layers|transformer\.h)\.(\d+)\.(.+)$", RegexOptions.Compiled);

    /// <summary>(prefix, block, rest) of a name inside a block, or null for names outside the blocks.</summary>
    public static (string Prefix, int Block, string Tail)? Parse(string name) =>
        Block.Match(name) is { Success: true } m ? (m.Groups[1].Value, int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture), m.Groups[3].Value) : null;

    public static string Format(string prefix, int block, string tail) => $"{prefix}.{block}.{tail}";
}
