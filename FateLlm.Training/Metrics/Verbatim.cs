namespace FateLlm.Training.Metrics;

/// <summary>
/// Whether generated text copies private text: a synthetic example reproduces a training example when their longest
/// common substring covers at least a share (by default half) of the training example's characters.
/// </summary>
public static class Verbatim
{
    public const double DefaultShare = 0.5;

    /// <summary>The length of the longest common substring (characters), by dynamic programming in O(|a|·|b|) time and O(|b|) memory.</summary>
    public static int LongestCommonSubstring(string a, string b)
    {
        if (a.Length == 0 || b.Length == 0) return 0;
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        int best = 0;
        foreach (var ca in a)
        {
            for (int j = 1; j <= b.Length; j++)
            {
                current[j] = ca == b[j - 1] ? previous[j - 1] + 1 : 0;
                if (current[j] > best) best = current[j];
            }
            (previous, current) = (current, previous);
        }
        return best;
    }

    /// <summary>Whether <paramref name="synthetic"/> holds at least <paramref name="share"/> of <paramref name="example"/> verbatim, in one piece.</summary>
    public static bool Reproduces(string synthetic, string example, double share = DefaultShare) =>
        example.Length > 0 && LongestCommonSubstring(synthetic, example) >= share * example.Length;

    /// <summary>The fraction of synthetic examples that reproduce some training example.</summary>
    public static double Rate(IReadOnlyList<string> synthetic, IReadOnlyList<string> training, double share = DefaultShare) =>
        synthetic.Count == 0 ? 0 : synthetic.Count(s => training.Any(t => Reproduces(s, t, share))) / (double)synthetic.Count;
}
