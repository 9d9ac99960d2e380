using System.Text.Json;
using FateLlm.Actors.Nodes;
using FateLlm.Actors.Services;
using FateLlm.Host.Cli;
using FateLlm.Training.Inference;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// `fate-llm infer` against a model another organization's node serves in a real in-process cluster: the kit is
/// fetched and checked, only perturbed prompts travel, the local model answers; a caller that is not allowed, or a
/// service nobody serves, ends with exit code 1 and the reason.
/// </summary>
[Trait(Tier.Key, Tier.Cluster)]
[Collection(Tier.InProcess)]
public class InferCommandSpec
{
    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        var code = CliApp.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    static string Model(string root, string name, long seed)
    {
        var dir = Path.Combine(root, name);
        using var m = TestSupport.TinyModel(seed: seed);
        HfCheckpoint.Save(m, dir);
        ByteTokenizer.Save(dir);
        return dir;
    }

    [Fact]
    public async Task A_party_asks_a_served_model_with_perturbed_prompts_and_answers_locally_and_a_stranger_is_refused()
    {
        var root = TestSupport.TempDir();
        var (remote, local) = (Model(root, "remote", 3), Model(root, "local", 4));
        var port = LocalFederation.FreePort();
        var seedAddress = $"akka.tcp://fate-llm@127.0.0.1:{port}";
        await using var seed = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Seed, Port = port, Seeds = [seedAddress], DataDir = Path.Combine(root, "seed"), Overrides = FederationFixture.FastCluster,
        });
        await using var owner = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = "acme", Seeds = [seedAddress], DataDir = Path.Combine(root, "acme"),
            Overrides = Akka.Configuration.ConfigurationFactory.ParseString("akka.loglevel = INFO").WithFallback(FederationFixture.FastCluster),
            Services = [new ServedModelOptions("big", remote, new HashSet<string> { "globex" })],
        });
        await Task.WhenAll(seed.WhenUp(TimeSpan.FromSeconds(60)), owner.WhenUp(TimeSpan.FromSeconds(60)));

        var prompts = Path.Combine(root, "prompts.jsonl");
        File.WriteAllLines(prompts, ["""{"content": "what is a cat", "summary": ""}""", """{"content": "define a dog", "summary": ""}"""]);
        var answers = Path.Combine(root, "answers.jsonl");
        var (code, output, error) = await Task.Run(() => Run("infer", "--model", local, "--remote", "acme/big", "--epsilon", "2", "--input", prompts,
            "--output", answers, "--org", "globex", "--max-new-tokens", "6", "--seed", seedAddress));
        Assert.True(code == 0, error + output);
        Assert.Contains("2 answers in", output);
        var rows = File.ReadAllLines(answers).Select(l => JsonSerializer.Deserialize<InferDptAnswer>(l)!).ToList();
        Assert.Equal(["what is a cat", "define a dog"], rows.Select(r => r.Prompt));
        // Every byte of these prompts is in a byte-level kit: each token spent ε = 2 and nothing was masked.
        Assert.All(rows, r => Assert.Equal((2.0 * r.Tokens, 0), (r.Epsilon, r.Masked)));
        Assert.All(rows, r => Assert.NotEqual(r.Prompt, r.Perturbed));
        // The owner's node logged what it answered, and its kit was built once from its model.
        var log = File.ReadAllText(Path.Combine(root, "acme", "node.log"));
        Assert.Contains("service big: answered 2 prompts of globex", log);
        Assert.Contains("service big: perturbation kit built (259 tokens", log);
        Assert.DoesNotContain("what is a cat", log);

        // PDSS: rationales for private training prompts, through the same perturbation.
        var withRationales = Path.Combine(root, "with-rationales.jsonl");
        (code, output, error) = await Task.Run(() => Run("pdss", "rationales", "--remote", "acme/big", "--epsilon", "4", "--input", prompts, "--output", withRationales,
            "--org", "globex", "--max-new-tokens", "5", "--seed", seedAddress));
        Assert.True(code == 0, error + output);
        Assert.StartsWith("2 rationales in", output);
        var rationale = RationaleData.Read(withRationales, new Training.Data.DataOptions(), "rationale");
        Assert.Equal(["what is a cat", "define a dog"], rationale.Select(r => r.Prompt));

        (code, _, error) = await Task.Run(() => Run("infer", "--model", local, "--remote", "acme/big", "--prompt", "hello", "--org", "initech", "--seed", seedAddress));
        Assert.Equal(1, code);
        Assert.Contains("acme/big refused request", error);
        Assert.Contains("(NotAllowed): organization 'initech' is not allowed to use service 'big'", error);

        (code, _, error) = await Task.Run(() => Run("infer", "--model", local, "--remote", "acme/small", "--prompt", "hello", "--org", "globex", "--seed", seedAddress));
        Assert.Equal(1, code);
        Assert.Contains("no member of the cluster serves acme/small", error);
        (code, _, error) = Run("infer", "--model", local, "--remote", "acme", "--prompt", "hello", "--org", "globex", "--seed", seedAddress);
        Assert.Equal((2, "error: --remote 'acme' must be ORG/SERVICE (e.g. acme/server)"), (code, error.Trim()));
    }

    [Fact]
    public async Task Over_mutual_tls_the_caller_proves_its_organization_with_each_request_and_cannot_claim_another()
    {
        var root = TestSupport.TempDir();
        var remote = Model(root, "remote", 3);
        await using var fed = await LocalFederation.StartAsync(Path.Combine(root, "nodes"), new Dictionary<string, IReadOnlyDictionary<string, string>>(),
            FederationFixture.FastCluster, tls: true);
        await using var owner = FederationNode.Start(new NodeOptions
        {
            Role = NodeRole.Party, Org = "acme", Seeds = [fed.SeedAddress], DataDir = Path.Combine(root, "acme"), Overrides = FederationFixture.FastCluster,
            Tls = LocalFederation.IssuedTls(Path.Combine(root, "nodes"), fed.CaDir!, "acme"),
            Services = [new ServedModelOptions("big", remote, new HashSet<string> { "operator" })],
        });
        await owner.WhenUp(TimeSpan.FromSeconds(60));
        // The client node holds an operator certificate: its proof makes it "operator", whatever a request claims.
        var reply = await ModelServiceClient.Call<GenerateReply>(fed.Client, "acme", new GenerateRequest("ok", "operator", "big", ["hello"], 4, 0, 0), TimeSpan.FromSeconds(60));
        Assert.Equal(("ok", 1), (reply.RequestId, reply.Answers.Length));
        var refused = await Assert.ThrowsAsync<ServiceRefusedException>(() =>
            ModelServiceClient.Call<GenerateReply>(fed.Client, "acme", new GenerateRequest("claim", "globex", "big", ["hello"], 4, 0, 0), TimeSpan.FromSeconds(60)));
        Assert.Equal(RefusalKind.NotAllowed, refused.Kind);
        Assert.Contains("the request claims organization 'globex' but its certificate is for 'operator'", refused.Message);
    }
}
