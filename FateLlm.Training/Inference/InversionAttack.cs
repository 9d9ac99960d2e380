namespace FateLlm.Training.Inference;

/// <summary>
/// The attack InferDPT's privacy is measured against: the remote side sees the perturbed tokens and maps each back to
/// its k nearest tokens (by cosine) among the whole vocabulary of its own embedding space; an original token is
/// recovered when it is among them. Tokens are paired by position, which a real attacker re-tokenizing the text
/// would have to guess, so the rate is an upper bound on this attacker's success. Masked tokens are never recovered.
/// </summary>
public static class InversionAttack
{
    public sealed record Recovery(int Tokens, int RecoveredTop1, int RecoveredTopK, int K)
    {
        public double RateTop1 => Tokens == 0 ? 0 : RecoveredTop1 / (double)Tokens;
        public double RateTopK => Tokens == 0 ? 0 : RecoveredTopK / (double)Tokens;
        public static Recovery operator +(Recovery a, Recovery b) => new(a.Tokens + b.Tokens, a.RecoveredTop1 + b.RecoveredTop1, a.RecoveredTopK + b.RecoveredTopK, a.K);
    }

    public static Recovery Run(TokenPerturbation m, IReadOnlyList<TokenOutcome> outcomes, int k)
    {
        int top1 = 0, topK = 0;
        var nearest = new Dictionary<int, int[]>();
        foreach (var t in outcomes)
        {
            if (t.Replacement is not int y) continue;
            if (!nearest.TryGetValue(y, out var guess)) nearest[y] = guess = m.Nearest(y, k);
            if (guess[0] == t.Original) top1++;
            if (guess.Contains(t.Original)) topK++;
        }
        return new Recovery(outcomes.Count, top1, topK, k);
    }
}
