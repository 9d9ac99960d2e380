using System.CommandLine;
using System.Globalization;
using FateLlm.Actors.Nodes;
using FateLlm.Training.Ipr;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary><c>fate-llm ipr verify</c>: does a model carry a party's FedIPR watermark? Exit 0 verified, 3 not.</summary>
internal static class IprCommands
{
    public const int NotVerified = 3;

    public static Command Build(Terminal t)
    {
        var model = new Option<string?>("--model") { Description = "The model folder (HF checkpoint), or the base model of --adapter" };
        var adapter = new Option<string?>("--adapter") { Description = "A PEFT adapter folder to apply to --model" };
        var keys = Required<string>("--keys", "The party's keys file (<data-dir>/ipr/<job>/<party>.keys.json on its node)");
        var defaults = DefaultThresholds();
        var maxP = Opt("--max-p-value", "Sign watermark found when chance would match as many bits with at most this probability", defaults.MaxPValue);
        var minTriggers = Opt("--min-trigger-accuracy", "Backdoor found when at least this share of triggers gives its response", defaults.MinTriggerAccuracy);
        var verify = new Command("verify", "Check a model against one party's watermark keys: bit-match rate, p-value, trigger accuracy; exit 0 verified, 3 not");
        foreach (var o in new Option[] { model, adapter, keys, maxP, minTriggers }) verify.Options.Add(o);
        verify.SetAction(p =>
        {
            var thresholds = new VerifyThresholds(p.GetValue(maxP), p.GetValue(minTriggers));
            if (thresholds.MaxPValue is <= 0 or > 1) throw new UsageException($"--max-p-value {thresholds.MaxPValue} must be in (0, 1]");
            if (thresholds.MinTriggerAccuracy is <= 0 or > 1) throw new UsageException($"--min-trigger-accuracy {thresholds.MinTriggerAccuracy} must be in (0, 1]");
            var k = OwnershipKeys.Load(p.GetValue(keys)!);
            using var loaded = LoadedModel.Open(p.GetValue(model), p.GetValue(adapter), TorchSharp.torch.CPU);
            var r = IprVerification.Verify(loaded.Model, loaded.Tokenizer, k, thresholds, p.GetValue(adapter) ?? p.GetValue(model)!);
            foreach (var line in Describe(r)) t.Out.WriteLine(line);
            return r.Verified ? Ok : NotVerified;
        });
        var cmd = new Command("ipr", "FedIPR ownership watermarks");
        cmd.Subcommands.Add(verify);
        return cmd;
    }

    /// <summary>The verdict's thresholds of reference.conf (<c>fate-llm.ipr.verify</c>).</summary>
    public static VerifyThresholds DefaultThresholds()
    {
        var reference = FederationNode.Reference();
        return new VerifyThresholds(reference.GetDouble("fate-llm.ipr.verify.max-p-value"), reference.GetDouble("fate-llm.ipr.verify.min-trigger-accuracy"));
    }

    public static IEnumerable<string> Describe(IprReport r)
    {
        var t = r.Thresholds;
        yield return $"keys: party '{r.Party}' of job '{r.Job}'";
        yield return $"sign watermark: {r.Matched}/{r.Bits} bits match ({100 * r.BitRate:F1} %); chance of as many without it p = {P(r.Log10P)} " +
            $"→ {(r.SignVerified ? "found" : "not found")} (threshold p ≤ {t.MaxPValue.ToString("G3", CultureInfo.InvariantCulture)})";
        yield return r.Triggers == 0 ? "backdoor: the keys hold no triggers"
            : $"backdoor: {r.TriggerHits}/{r.Triggers} triggers give their response ({100 * r.TriggerAccuracy:F0} %) → {(r.TriggersVerified ? "found" : "not found")} (threshold ≥ {100 * t.MinTriggerAccuracy:F0} %)";
        yield return r.Verified ? $"verdict: VERIFIED — the model carries party '{r.Party}''s watermark" : $"verdict: NOT VERIFIED — no watermark of party '{r.Party}' found";
    }

    static string P(double log10) => log10 > -300 ? Math.Pow(10, log10).ToString("G3", CultureInfo.InvariantCulture) : $"10^{log10:F0}";
}
