using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Parties;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Algorithms;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The trainer under a restarting supervisor (as the party entity supervises it): a failing fit is reported and the
/// trainer restarts, then backs off for min·2^n before serving again, keeping every request it received meanwhile.
/// Virtual time makes the backoff exact.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class TrainerSupervisionSpec : TestKit
{
    static readonly TimeSpan Min = TimeSpan.FromSeconds(1), Wait = TimeSpan.FromSeconds(10);
    readonly string _org = "t" + Guid.NewGuid().ToString("N")[..8];
    readonly string _total;

    public TrainerSupervisionSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        _total = Path.Combine(TestSupport.TempDir(), "total");
        File.WriteAllBytes(_total, EchoAlgorithm.Write(0));
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    RunFit Fit(int round)
    {
        var spec = ActorSpecs.EchoJob("trainer");
        var ctx = new ClientContext(spec, _org, round, 1, 1, "-", "-", null, TestSupport.TempDir());
        return new RunFit(new WorkId("trainer", round, 1, 1), ctx, "e1", PartyInstruction.Of(new Dictionary<string, string>()),
            new Dictionary<string, string> { [EchoAlgorithm.Total] = _total }, CancellationToken.None);
    }

    IActorRef Trainer() => ChildActorOf(FateLlm.Actors.Parties.Trainer.Props(new RestartBackoff(Min, TimeSpan.FromSeconds(30)), "fate-llm.training-dispatcher", ActorSpecs.Algorithms),
        "trainer", new OneForOneStrategy(_ => Directive.Restart));

    /// <summary>The failure is reported before the trainer rethrows, so the backoff timer may not exist yet when the
    /// report arrives; an Identify is answered only after the restart (whose PostRestart starts that timer), so virtual
    /// time advanced afterwards counts from the timer's start.</summary>
    void Restarted(IActorRef trainer)
    {
        trainer.Tell(new Identify("restarted"));
        ExpectMsg<ActorIdentity>(Wait);
    }

    [Fact]
    public void A_failed_fit_is_reported_and_requests_that_arrive_during_the_growing_backoff_are_served_after_it()
    {
        var trainer = Trainer();
        EchoAlgorithm.Fail(_org, 2);
        trainer.Tell(Fit(1));
        Assert.Equal($"trainer failed: scripted failure of {_org}", ExpectMsg<FitFailed>(Wait).Reason);
        trainer.Tell(Fit(2)); // arrives while the restarted trainer backs off
        Restarted(trainer);
        ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(Min);
        Assert.Equal(2, ExpectMsg<FitFailed>(Wait).Id.Round); // the second scripted failure: restart again, backoff doubles
        trainer.Tell(Fit(3));
        Restarted(trainer);
        Clock.Advance(Min);
        ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(Min);
        var done = ExpectMsg<FitDone>(Wait);
        Assert.Equal(3, done.Id.Round);
        Assert.Equal(_org.Length, EchoAlgorithm.Read(done.Update.Update));
        trainer.Tell(Fit(4)); // a success resets the backoff: served at once
        Assert.Equal(4, ExpectMsg<FitDone>(Wait).Id.Round);
    }

    [Fact]
    public void A_cancelled_fit_is_reported_as_such_without_restarting_the_trainer()
    {
        var trainer = Trainer();
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        trainer.Tell(Fit(1) with { Cancel = cancel.Token });
        Assert.Equal("superseded or cancelled", ExpectMsg<FitFailed>(Wait).Reason);
        trainer.Tell(Fit(2));
        Assert.Equal(2, ExpectMsg<FitDone>(Wait).Id.Round); // no backoff: nothing crashed
    }
}
