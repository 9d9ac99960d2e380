namespace FateLlm.Training.Privacy;

/// <summary>
/// Privacy evidence for a trained model: the loss-threshold membership-inference attack (Yeom et al. 2018), which
/// guesses "member" when the model's loss on an example is low. Its AUC over members (training examples) and
/// non-members (held out) is 0.5 when the model reveals nothing of membership and 1 when its losses separate them.
/// </summary>
public static class MembershipInference
{
    /// <summary>
    /// The attack's ROC AUC: P(loss of a member &lt; loss of a non-member), ties counting one half — the Mann–Whitney U
    /// statistic over m·n, computed by ranks in O((m + n) log(m + n)).
    /// </summary>
    public static double LossThresholdAuc(IReadOnlyList<double> memberLosses, IReadOnlyList<double> nonMemberLosses)
    {
        if (memberLosses.Count == 0 || nonMemberLosses.Count == 0) throw new ArgumentException("the attack needs members and non-members");
        if (memberLosses.Concat(nonMemberLosses).Any(double.IsNaN)) throw new ArgumentException("a loss is NaN");
        // Rank by descending loss, so a member (low loss) ranks high; average ranks over ties.
        var all = memberLosses.Select(l => (Loss: l, Member: true)).Concat(nonMemberLosses.Select(l => (Loss: l, Member: false)))
            .OrderByDescending(x => x.Loss).ToList();
        double memberRanks = 0;
        for (int i = 0; i < all.Count;)
        {
            var j = i;
            while (j < all.Count && all[j].Loss == all[i].Loss) j++;
            var rank = (i + 1 + j) / 2.0; // ranks i+1 … j, averaged
            for (int k = i; k < j; k++) if (all[k].Member) memberRanks += rank;
            i = j;
        }
        double m = memberLosses.Count, n = nonMemberLosses.Count;
        return (memberRanks - m * (m + 1) / 2) / (m * n);
    }

    /// <summary>The attack's best advantage over thresholds: max over t of TPR(t) − FPR(t) (members guessed with loss ≤ t).</summary>
    public static double Advantage(IReadOnlyList<double> memberLosses, IReadOnlyList<double> nonMemberLosses)
    {
        if (memberLosses.Count == 0 || nonMemberLosses.Count == 0) throw new ArgumentException("the attack needs members and non-members");
        var thresholds = memberLosses.Concat(nonMemberLosses).Distinct().Order().ToList();
        return thresholds.Max(t => memberLosses.Count(l => l <= t) / (double)memberLosses.Count - nonMemberLosses.Count(l => l <= t) / (double)nonMemberLosses.Count);
    }
}
