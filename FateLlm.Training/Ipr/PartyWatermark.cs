using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Trainer;

namespace FateLlm.Training.Ipr;

/// <summary>
/// A party's side of FedIPR for one local round: its keys (derived once from its private secret, kept under its keys
/// folder with mode 0600, never sent), the sign watermark's own hinge step on the trainable norm scales after every
/// optimizer step, and the trigger examples cycled into every batch. Nothing here reaches the update but
/// the trained tensors themselves.
/// </summary>
public sealed class PartyWatermark : IDisposable
{
    public const string SecretFile = "party.secret";
    public OwnershipKeys Keys { get; }
    readonly SignWatermark _sign;
    readonly IprOptions _options;
    readonly IReadOnlyList<string> _scaleNames;

    PartyWatermark(OwnershipKeys keys, SignWatermark sign, IprOptions options, IReadOnlyList<string> scaleNames)
    {
        Keys = keys;
        _sign = sign;
        _options = options;
        _scaleNames = scaleNames;
    }

    /// <summary>Where a party keeps its keys for a job.</summary>
    public static string KeysPath(string keysDir, string job, string party) =>
        Path.Combine(keysDir, Uri.EscapeDataString(job), Uri.EscapeDataString(party) + ".keys.json");

    /// <summary>The party's watermark for this job, or null when the job has none.</summary>
    public static PartyWatermark? Open(ClientContext ctx, FineTuning run)
    {
        var ipr = ctx.Spec.Ipr;
        if (!ipr.Enabled) return null;
        if (string.IsNullOrEmpty(ctx.KeysDir)) throw new InvalidOperationException($"party '{ctx.Party}': job.ipr is on but this node has no keys folder");
        var sites = WatermarkSites.Of(run.Model, ipr.Blocks);
        var path = KeysPath(ctx.KeysDir, ctx.Spec.JobId, ctx.Party);
        OwnershipKeys keys;
        if (File.Exists(path))
        {
            keys = OwnershipKeys.Load(path);
            if (!keys.Sites.Select(s => s.Site).SequenceEqual(sites.Select(s => s.Site)))
                throw new Models.ModelFormatException($"{path}: the keys were made for other norm scales than this job's model has");
        }
        else
        {
            keys = OwnershipKeys.Derive(PrivateFile.Secret(Path.Combine(ctx.KeysDir, SecretFile)), ctx.Spec.JobId, ctx.Party,
                sites.Select(s => s.Site).ToList(), WatermarkSites.BitsPerParty(sites, ctx.Spec), ipr.Margin, ipr.Triggers, ctx.Spec.Data.Template);
            keys.Save(path);
        }
        return new PartyWatermark(keys, SignWatermark.Bind(run.Model, keys, path), ipr, sites.Select(s => s.Name).ToList());
    }

    /// <summary>
    /// The round's training options with the watermark's hinge step and triggers added; call it once the global state
    /// is loaded, which anchors the hinge there (a party's share of FedAvg taken as 1 / the round's cohort).
    /// </summary>
    public TrainOptions Apply(TrainOptions o, FineTuning run, JobSpec spec)
    {
        _sign.Anchor(1.0 / spec.CohortSize);
        return o with
        {
            // Under LoRA the scales were frozen: they move only to carry the watermark, so the task's drift never walks
            // the bits (a party's own or another's) across the boundary. When whole blocks train, the task moves them too.
            OwnUpdate = run.Peft.Method == Peft.PeftMethod.Full ? null : _scaleNames.ToHashSet(),
            AfterStep = () => _sign.Step(_options.Margin, _options.LearningRate),
            MixIn = Keys.Triggers.Select(t => InstructionData.Tokenize(new Example(t.Prompt, t.Response, "trigger"), run.Tokenizer, spec.Data)).ToList(),
            MixInPerBatch = _options.TriggersPerBatch,
        };
    }

    public void Dispose() => _sign.Dispose();
}
