using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Security;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The organization guard alone, with real certificates from a federation CA: a probe plays the member's guard (it
/// answers challenges, or not, with the certificate the spec chooses) and another records whom the guard downs.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class OrganizationGuardSpec : TestKit
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    static readonly string Root = TestSupport.TempDir();
    static readonly string CaDir = MakeCa();
    readonly TestProbe _member, _downed;
    readonly NodeTls _self = Issued("operator");
    readonly Address _selfAddress = Address.Parse("akka.tcp://fate-llm@10.0.0.1:4053");

    public OrganizationGuardSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        _member = CreateTestProbe();
        _downed = CreateTestProbe();
    }

    static string MakeCa()
    {
        var dir = Path.Combine(Root, "ca");
        CertificateAuthority.InitCa(dir);
        return dir;
    }

    static NodeTls Issued(string org)
    {
        var dir = Path.Combine(Root, org + "-" + Guid.NewGuid().ToString("N")[..6]);
        CertificateAuthority.Issue(CaDir, org, dir);
        return NodeTls.Load(dir);
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    IActorRef Guard() => Sys.ActorOf(OrganizationGuard.Props(_self, new HashSet<string> { "operator" },
        new OrganizationGuard.Membership(_selfAddress, _ => _member.Ref, a => _downed.Ref.Tell(a), WatchCluster: false)));

    /// <summary>The member's address as the guard sees the proof's sender.</summary>
    Address MemberAddress => _member.Ref.Path.Address;

    IdentityProof Proof(NodeTls tls, byte[] nonce, string? address = null) =>
        new(address ?? MemberAddress.ToString(), tls.Certificate.RawData, tls.Sign(nonce, address ?? MemberAddress.ToString()));

    [Fact]
    public void A_member_that_proves_the_organization_its_role_claims_is_recorded_and_not_downed()
    {
        var guard = Guard();
        guard.Tell(new MemberClaim(MemberAddress, ["party", "org-acme"]));
        var challenge = _member.ExpectMsg<ProveIdentity>(Wait);
        _member.Reply(Proof(Issued("acme"), challenge.Nonce));
        AwaitCondition(() => _self.Identities.OrganizationOf(MemberAddress) == "acme", Wait);
        _downed.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        guard.Tell(new MemberClaim(MemberAddress, ["party", "org-acme"])); // seen again (joined, then up): not challenged twice
        _member.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void A_member_whose_certificate_is_for_another_organization_is_downed()
    {
        var guard = Guard();
        guard.Tell(new MemberClaim(MemberAddress, ["party", "org-food"]));
        var challenge = _member.ExpectMsg<ProveIdentity>(Wait);
        _member.Reply(Proof(Issued("acme"), challenge.Nonce));
        Assert.Equal(MemberAddress, _downed.ExpectMsg<Address>(Wait));
        Assert.Null(_self.Identities.OrganizationOf(MemberAddress));
    }

    [Fact]
    public void A_proof_signed_for_another_address_or_by_a_stranger_is_refused_and_the_member_downed()
    {
        var guard = Guard();
        guard.Tell(new MemberClaim(MemberAddress, ["arbiter"]));
        var challenge = _member.ExpectMsg<ProveIdentity>(Wait);
        _member.Reply(Proof(Issued("operator"), challenge.Nonce, address: "akka.tcp://fate-llm@10.9.9.9:1"));
        Assert.Equal(MemberAddress, _downed.ExpectMsg<Address>(Wait));
    }

    [Fact]
    public void A_silent_member_is_challenged_again_each_second_then_given_up_on_without_being_recorded()
    {
        var guard = Guard();
        guard.Tell(new MemberClaim(MemberAddress, ["seed"]));
        var first = _member.ExpectMsg<ProveIdentity>(Wait);
        for (int attempt = 1; attempt < 60; attempt++)
        {
            Clock.Advance(TimeSpan.FromSeconds(1));
            Assert.Equal(first.Nonce, _member.ExpectMsg<ProveIdentity>(Wait).Nonce); // the same challenge, re-sent
        }
        Clock.Advance(TimeSpan.FromSeconds(1));
        _member.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        _downed.ExpectNoMsg(TimeSpan.FromMilliseconds(100));
        Assert.Null(_self.Identities.OrganizationOf(MemberAddress));
    }

    [Fact]
    public void A_member_that_leaves_mid_challenge_is_no_longer_challenged_and_members_without_claims_never_are()
    {
        var guard = Guard();
        guard.Tell(new MemberClaim(MemberAddress, ["client"]));
        _member.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        guard.Tell(new MemberClaim(MemberAddress, ["party", "org-acme"]));
        _member.ExpectMsg<ProveIdentity>(Wait);
        guard.Tell(new MemberGone(MemberAddress));
        Clock.Advance(TimeSpan.FromSeconds(5));
        _member.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void The_guard_answers_a_challenge_with_its_own_address_signed_by_its_certificate()
    {
        var guard = Guard();
        var nonce = new byte[] { 1, 2, 3 };
        guard.Tell(new ProveIdentity(nonce));
        var proof = ExpectMsg<IdentityProof>(Wait);
        Assert.Equal(_selfAddress.ToString(), proof.Address);
        Assert.Equal("operator", _self.Verify(proof.Certificate, proof.Signature, nonce, proof.Address, out _));
        Assert.Null(_self.Verify(proof.Certificate, proof.Signature, [9], proof.Address, out var why)); // bound to the nonce
        Assert.NotEmpty(why);
    }
}
