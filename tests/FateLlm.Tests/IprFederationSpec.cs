using System.Text;
using FateLlm.Training.Federation;
using FateLlm.Training.Ipr;
using FateLlm.Training.Models;
using FateLlm.Training.Peft;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>FedIPR through a real (in-process) federation: keys stay on their parties, and every party verifies its own watermark.</summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class IprFederationSpec
{
    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public async Task Each_party_verifies_its_own_watermark_and_no_key_leaves_its_node()
    {
        var g = FederationFixture.Prepare();
        // Four rounds of six epochs keep the parties busy on two cores: the production failure detector and split-brain
        // timing keep a slow heartbeat from downing a member (a clean-clone CI run lost the job's status that way).
        await using var fed = await FederationFixture.Start(g, FederationFixture.LoadTolerant);
        var spec = FederationFixture.Job(g, "wm", rounds: 4, epochs: 6) with
        {
            Ipr = new IprOptions { Enabled = true, Blocks = 1, Bits = 48, Triggers = 2 },
        };
        await FederationFixture.RunToCompletion(fed, spec, TimeSpan.FromSeconds(240));

        var thresholds = new VerifyThresholds(1e-9, 0.5);
        using var merged = HfCheckpoint.Load(Path.Combine(spec.OutputDir, "merged"));
        var (withAdapter, peft, _) = AdapterFolder.Load(Path.Combine(spec.OutputDir, "adapter"), g.Model);
        using var _ = withAdapter;
        Assert.Equal(["model.layers.3.input_layernorm", "model.layers.3.post_attention_layernorm"], peft.ModulesToSave);
        using var plain = HfCheckpoint.Load(g.Model);
        var tok = new ByteTokenizer();
        var secrets = new List<string>();
        foreach (var org in FederationFixture.Orgs)
        {
            var ipr = Path.Combine(fed.Root, "party-" + org, "ipr");
            var path = PartyWatermark.KeysPath(ipr, spec.JobId, org);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(ipr, PartyWatermark.SecretFile)));
            var keys = OwnershipKeys.Load(path);
            foreach (var model in new[] { merged, withAdapter })
            {
                var r = IprVerification.Verify(model, tok, keys, thresholds, org);
                Assert.True(r.Matched == r.Bits && r.SignVerified, $"{org}: {r.Matched}/{r.Bits} bits");
            }
            Assert.False(IprVerification.Verify(plain, tok, keys, thresholds, "base").Verified, $"{org}'s keys verify on the base model");
            secrets.Add(keys.Key);
            secrets.Add(Convert.ToHexString(File.ReadAllBytes(Path.Combine(ipr, PartyWatermark.SecretFile))));
            secrets.AddRange(keys.Triggers.Select(t => t.Prompt));
        }
        // A key of the same shape from another secret does not verify on the federation's model.
        var stranger = OwnershipKeys.Derive(new byte[32], spec.JobId, "animal", OwnershipKeys.Load(PartyWatermark.KeysPath(Path.Combine(fed.Root, "party-animal", "ipr"), spec.JobId, "animal"))
            .Sites.Select(s => s.Site).ToList(), 48, 0.25, 2, "{prompt}\n");
        Assert.False(IprVerification.Verify(merged, tok, stranger, thresholds, "stranger").Verified);

        // Nothing about any key is in any file outside the parties' own keys folders: arbiter store and journal, seed,
        // other nodes, the job's outputs (adapter, merged model, reports), and every party's workspace and store.
        await fed.DisposeAsync();
        var files = Directory.EnumerateFiles(fed.Root, "*", SearchOption.AllDirectories).Concat(Directory.EnumerateFiles(spec.OutputDir, "*", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}ipr{Path.DirectorySeparatorChar}")).ToList();
        Assert.NotEmpty(files);
        foreach (var file in files)
        {
            var bytes = File.ReadAllBytes(file);
            var text = Encoding.UTF8.GetString(bytes);
            var hex = Convert.ToHexString(bytes);
            foreach (var s in secrets) Assert.False(text.Contains(s, StringComparison.OrdinalIgnoreCase) || hex.Contains(s, StringComparison.OrdinalIgnoreCase), $"{file} holds key material");
        }
    }
}
