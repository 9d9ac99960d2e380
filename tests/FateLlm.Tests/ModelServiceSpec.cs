using Akka.Actor;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Security;
using FateLlm.Actors.Services;
using FateLlm.Training.Inference;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using FateLlm.Training.Tokenization;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The model service alone: who may call it, what it refuses, its bounded queue, and the kit it serves.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class ModelServiceSpec : TestKit
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);
    static readonly string Root = TestSupport.TempDir();
    static readonly string Model = TinyByteModel();
    static readonly string CaDir = Ca("ca", "FateLlm federation CA");
    readonly BlobStore _store = new(Path.Combine(TestSupport.TempDir(), "blobs"));

    public ModelServiceSpec() : base(ActorSpecs.Config()) { }

    static string TinyByteModel()
    {
        var dir = Path.Combine(Root, "remote");
        using var m = TestSupport.TinyModel();
        HfCheckpoint.Save(m, dir);
        ByteTokenizer.Save(dir);
        return dir;
    }

    static string Ca(string name, string title)
    {
        var dir = Path.Combine(Root, name);
        CertificateAuthority.InitCa(dir, title);
        return dir;
    }

    /// <summary>A certificate for <paramref name="org"/> from the CA in <paramref name="caDir"/>, kept beside that CA.</summary>
    static NodeTls Issued(string caDir, string org) => Actors.Nodes.LocalFederation.IssuedTls(caDir + "-issued", caDir, org);

    IActorRef Service(int capacity = 8, NodeTls? tls = null, Func<Task>? gate = null, params string[] allowed) =>
        Sys.ActorOf(ModelService.Props(new ModelServiceSettings(new ServedModelOptions("remote", Model, allowed.Length > 0 ? allowed.ToHashSet() : ["acme"]), _store, TestActor)
        {
            QueueCapacity = capacity, Tls = tls, WorkGate = gate, MaxPromptChars = 100,
        }));

    static GenerateRequest Ask(string id, string org = "acme", params string[] prompts) =>
        new(id, org, "remote", prompts.Length > 0 ? prompts : ["hello there"], 8, 0, 1);

    [Fact]
    public void An_allowed_organization_gets_its_answers_and_others_are_refused_by_name()
    {
        var service = Service();
        service.Tell(Ask("r1", "acme", "one", "two"));
        var reply = ExpectMsg<GenerateReply>(Wait);
        Assert.Equal(("r1", 2), (reply.RequestId, reply.Answers.Length));
        service.Tell(Ask("r2", "globex"));
        var refused = ExpectMsg<ServiceRefused>(Wait);
        Assert.Equal((RefusalKind.NotAllowed, "organization 'globex' is not allowed to use service 'remote'"), (refused.Kind, refused.Reason));
        service.Tell(Ask("r3", "acme", new string('x', 101)));
        Assert.Equal("prompt 1 has 101 characters; at most 100", ExpectMsg<ServiceRefused>(Wait).Reason);
        service.Tell(Ask("r4", "acme", []) with { Prompts = [] });
        Assert.Equal(RefusalKind.BadRequest, ExpectMsg<ServiceRefused>(Wait).Kind);
    }

    [Fact]
    public void Under_tls_a_request_needs_a_valid_proof_of_the_organization_it_claims()
    {
        var service = Service(tls: Issued(CaDir, "operator"));
        var acme = Issued(CaDir, "acme");
        service.Tell(Ask("none"));
        Assert.Equal("organization 'acme' sent no proof of its identity (this federation runs TLS)", ExpectMsg<ServiceRefused>(Wait).Reason);
        // globex's certificate cannot speak for acme.
        var globex = Issued(CaDir, "globex");
        var forged = Ask("forged");
        service.Tell(forged with { Proof = ModelService.Prove(globex, forged) });
        Assert.Equal("the request claims organization 'acme' but its certificate is for 'globex'", ExpectMsg<ServiceRefused>(Wait).Reason);
        // A certificate of another CA proves nothing here.
        var rogue = Issued(Ca("rogue-ca", "Rogue CA"), "acme");
        var outsider = Ask("rogue");
        service.Tell(outsider with { Proof = ModelService.Prove(rogue, outsider) });
        Assert.StartsWith("the proof of organization 'acme' does not hold", ExpectMsg<ServiceRefused>(Wait).Reason);
        // A proof moved to another request does not hold either: it signs the request's content.
        var signed = Ask("signed");
        var moved = Ask("moved", "acme", "something else");
        service.Tell(moved with { Proof = ModelService.Prove(acme, signed) });
        Assert.Equal("the proof of organization 'acme' does not hold: the signature does not match the certificate", ExpectMsg<ServiceRefused>(Wait).Reason);
        service.Tell(signed with { Proof = ModelService.Prove(acme, signed) });
        Assert.Equal("signed", ExpectMsg<GenerateReply>(Wait).RequestId);
    }

    [Fact]
    public void A_full_queue_answers_with_an_error_at_once_and_the_queued_requests_are_still_served()
    {
        var gate = new TaskCompletionSource();
        var service = Service(capacity: 1, gate: () => gate.Task);
        service.Tell(Ask("running"));  // held at the gate
        service.Tell(Ask("waiting"));  // fills the queue
        service.Tell(Ask("refused"));
        var refused = ExpectMsg<ServiceRefused>(Wait);
        Assert.Equal((RefusalKind.Overloaded, "refused"), (refused.Kind, refused.RequestId));
        Assert.Contains("1 requests already wait (queue capacity 1)", refused.Reason);
        gate.SetResult();
        Assert.Equal(["running", "waiting"], new[] { ExpectMsg<GenerateReply>(Wait).RequestId, ExpectMsg<GenerateReply>(Wait).RequestId });
    }

    [Fact]
    public void The_kit_is_built_once_and_served_as_a_blob_of_the_model_it_was_made_from()
    {
        var service = Service();
        service.Tell(new KitRequest("k1", "acme", "remote"));
        var first = ExpectMsg<KitReply>(Wait);
        service.Tell(new KitRequest("k2", "acme", "remote"));
        var second = ExpectMsg<KitReply>(Wait);
        Assert.Equal(("k2", first.Kit.Digest), (second.RequestId, second.Kit.Digest));
        Assert.Equal(HfCheckpoint.WeightsDigest(Model), first.ModelDigest);
        var kit = PerturbationKit.Parse(_store.Read(first.Kit.Digest));
        Assert.Equal(first.Kit.Digest, kit.Digest);
        Assert.Equal(ByteTokenizer.VocabularySize, kit.Vocabulary);
        service.Tell(new KitRequest("k3", "globex", "remote"));
        Assert.Equal(RefusalKind.NotAllowed, ExpectMsg<ServiceRefused>(Wait).Kind);
    }
}
