using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Jobs;
using FateLlm.Actors.Parties;
using FateLlm.Actors.Rounds;
using FateLlm.Tests.Plugins;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;
using FateLlm.Training.IO;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The job entity alone: probes stand in for the round and party regions, an in-memory journal keeps its events, and
/// virtual time drives its watchdog and evaluation timers, so every timing below is exact and nothing sleeps.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class JobActorSpec : TestKit
{
    readonly BlobStore _store = new(TestSupport.TempDir());
    readonly TestProbe _rounds, _parties, _blobs;
    readonly ActorSpecs.ScriptedPresence _presence = new();
    static readonly TimeSpan Slack = TimeSpan.FromSeconds(5), Wait = TimeSpan.FromSeconds(10);

    public JobActorSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        _rounds = CreateTestProbe();
        _parties = CreateTestProbe();
        _blobs = CreateTestProbe();
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    IActorRef Job(string id, FaultInjection? faults = null, TimeSpan? startResend = null) => Sys.ActorOf(JobActor.Props(id,
        new JobSettings(_store, _blobs.Ref, _rounds.Ref, _parties.Ref, null)
        {
            Presence = _presence, WatchdogSlack = Slack, Faults = faults ?? FaultInjection.None, Algorithms = ActorSpecs.Algorithms, StartResend = startResend,
        }));

    IActorRef Submitted(JobSpec spec, FaultInjection? faults = null)
    {
        var job = Job(spec.JobId, faults);
        job.Tell(new SubmitJob(spec.JobId, spec));
        ExpectMsg<JobAccepted>(Wait);
        return job;
    }

    StartRound NextStart(int round, int attempt)
    {
        var s = _rounds.ExpectMsg<StartRound>(Wait);
        Assert.Equal((round, attempt), (s.Round, s.Attempt));
        return s;
    }

    RoundFinished Success(StartRound s, double total) => new(s.JobId, s.Round, s.Attempt, true, null,
        AlgorithmState.Of((EchoAlgorithm.Total, _store.Put(EchoAlgorithm.Write(total)))),
        new RoundSummary(s.Round, s.Attempt, null, 0.1, s.Participants.Select(o => new PartyRoundReport(o, true, null, 1, 1, 1, null, 10, 10, 0, 0.1)).ToArray()));

    JobStatus Status(IActorRef job)
    {
        job.Tell(new GetJobStatus("x"));
        return ExpectMsg<JobStatus>(Wait);
    }

    /// <summary>Answers the final evaluation of every party it is asked.</summary>
    void Evaluate(int parties)
    {
        for (int i = 0; i < parties; i++)
        {
            var e = _parties.ExpectMsg<EvaluateRequest>(Wait);
            _parties.Reply(new EvaluateReply(e.Org, e.JobId, new PartyEvaluation(e.Org, 1, Math.E, null, null, null, null, 1), null));
        }
    }

    JobStatus AwaitState(IActorRef job, JobState state)
    {
        JobStatus status = null!;
        AwaitAssert(() => Assert.Equal(state, (status = Status(job)).State), Wait);
        return status;
    }

    [Fact]
    public void A_job_runs_its_rounds_evaluates_exports_and_refuses_a_second_submission()
    {
        var spec = ActorSpecs.EchoJob("happy", rounds: 2);
        var job = Submitted(spec);
        var r1 = NextStart(1, 1);
        Assert.Equal(ActorSpecs.Orgs, r1.Participants);
        Assert.Null(r1.Resume);
        // The spec travels once, as a blob the parties fetch; the start names it.
        Assert.Equal(spec.JobId, JobSpec.FromJson(_store.Read(r1.SpecBlob.Digest), "spec").JobId);
        _rounds.Reply(Success(r1, 15));
        var r2 = NextStart(2, 1);
        Assert.Single(r1.State.Artifacts);
        Assert.NotEqual(r1.State.Get(EchoAlgorithm.Total), r2.State.Get(EchoAlgorithm.Total));
        _rounds.Reply(Success(r2, 30));
        Evaluate(3);
        var status = AwaitState(job, JobState.Completed);
        Assert.Equal(2, status.CompletedRounds);
        Assert.Equal(3, status.FinalEvaluation.Length);
        Assert.Equal("30", File.ReadAllText(Path.Combine(spec.OutputDir, "total.txt")));
        Assert.Equal(2 * 3, File.ReadAllLines(Path.Combine(spec.OutputDir, "rounds.jsonl")).Length);
        Assert.Contains("\"State\": \"Completed\"", File.ReadAllText(Path.Combine(spec.OutputDir, "status.json")));

        job.Tell(new SubmitJob(spec.JobId, spec));
        Assert.Contains("already exists (Completed)", ExpectMsg<JobRejected>(Wait).Reason);
    }

    [Fact]
    public void From_round_two_each_exchange_waits_a_multiple_of_round_ones_measured_time_within_the_floor_and_the_outer_bound()
    {
        var spec = ActorSpecs.EchoJob("derived", rounds: 3, deadlineSeconds: 3600);
        spec = spec with { Round = spec.Round with { DeadlineFactor = 3, DeadlineFloorSeconds = 60 } };
        var job = Submitted(spec);
        var r1 = NextStart(1, 1);
        Assert.Equal(TimeSpan.FromSeconds(3600), r1.ExchangeDeadline); // nothing measured yet: the outer bound
        _rounds.Reply(Success(r1, 15) with { Summary = Success(r1, 15).Summary! with { Seconds = 100 } });
        var r2 = NextStart(2, 1);
        Assert.Equal(TimeSpan.FromSeconds(300), r2.ExchangeDeadline);
        // Round 2's own time does not move it: round 1 (with its load) is the measure.
        _rounds.Reply(Success(r2, 30) with { Summary = Success(r2, 30).Summary! with { Seconds = 5 } });
        Assert.Equal(TimeSpan.FromSeconds(300), NextStart(3, 1).ExchangeDeadline);
    }

    [Theory]
    [InlineData(0, 100, null, 3600)] // factor 0 (a journal written before it): fixed
    [InlineData(3, 100, null, 3600)] // round 1 not measured yet
    [InlineData(3, 100, 100.0, 300)]
    [InlineData(3, 100, 10.0, 100)] // the floor
    [InlineData(3, 100, 2000.0, 3600)] // the outer bound
    [InlineData(3, 7200, 10.0, 3600)] // a floor above the bound gives the bound
    public void The_derived_deadline_is_the_factor_times_round_one_within_floor_and_bound(double factor, double floor, double? first, double expected)
    {
        var policy = ActorSpecs.EchoJob("x").Round with { DeadlineSeconds = 3600, DeadlineFactor = factor, DeadlineFloorSeconds = floor };
        Assert.Equal(TimeSpan.FromSeconds(expected), policy.DeadlineAfter(first));
    }

    [Fact]
    public void Duplicate_submissions_while_preparing_all_get_the_one_answer()
    {
        var spec = ActorSpecs.EchoJob("dup");
        var job = Job(spec.JobId);
        var first = CreateTestProbe();
        var second = CreateTestProbe();
        job.Tell(new SubmitJob(spec.JobId, spec), first.Ref);
        job.Tell(new SubmitJob(spec.JobId, spec), second.Ref);
        first.ExpectMsg<JobAccepted>(Wait);
        second.ExpectMsg<JobAccepted>(Wait);
        NextStart(1, 1);
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // one job, one round
    }

    [Fact]
    public void An_invalid_job_is_rejected_naming_the_field_and_leaves_no_entity_so_the_id_can_be_submitted_again()
    {
        var spec = ActorSpecs.EchoJob("invalid");
        var job = Watch(Job(spec.JobId));
        job.Tell(new SubmitJob(spec.JobId, spec with { Round = spec.Round with { Quorum = 9 } }));
        Assert.Contains("job.quorum must be between 1 and the 3 parties", ExpectMsg<JobRejected>(Wait).Reason);
        ExpectTerminated(job, Wait); // passivated: a remembered entity of a rejected job would restart on every arbiter start
        Job(spec.JobId).Tell(new SubmitJob(spec.JobId, spec));
        ExpectMsg<JobAccepted>(Wait);
    }

    [Fact]
    public void Asking_for_an_unknown_job_answers_unknown_and_leaves_no_entity_behind()
    {
        var status = Watch(Job("nobody"));
        status.Tell(new GetJobStatus("nobody"));
        Assert.Equal(JobState.Unknown, ExpectMsg<JobStatus>(Wait).State);
        ExpectTerminated(status, Wait);
        var cancel = Watch(Job("nobody"));
        cancel.Tell(new CancelJob("nobody"));
        Assert.Equal(JobState.Unknown, ExpectMsg<JobStatus>(Wait).State);
        ExpectTerminated(cancel, Wait);
    }

    [Fact]
    public void A_submission_sent_again_is_answered_as_accepted_while_another_submission_of_the_id_is_refused()
    {
        var spec = ActorSpecs.EchoJob("resent");
        var job = Job(spec.JobId);
        job.Tell(new SubmitJob(spec.JobId, spec) { Submission = "client-1" });
        job.Tell(new SubmitJob(spec.JobId, spec) { Submission = "client-1" }); // re-sent while the job is prepared
        ExpectMsg<JobAccepted>(Wait);
        ExpectMsg<JobAccepted>(Wait);
        NextStart(1, 1);
        job.Tell(new SubmitJob(spec.JobId, spec) { Submission = "client-1" }); // re-sent after its reply was lost
        ExpectMsg<JobAccepted>(Wait);
        job.Tell(new SubmitJob(spec.JobId, spec) { Submission = "client-2" });
        Assert.Equal("job 'resent' already exists (Running)", ExpectMsg<JobRejected>(Wait).Reason);
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // still one job, one round
    }

    [Fact]
    public void A_start_lost_on_the_way_to_the_round_is_retried_once_the_rounds_own_budget_is_spent()
    {
        var spec = ActorSpecs.EchoJob("lost", deadlineSeconds: 30);
        Submitted(spec);
        NextStart(1, 1); // lost: nobody answers
        Clock.Advance(TimeSpan.FromSeconds(30) + Slack - TimeSpan.FromSeconds(1));
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(TimeSpan.FromSeconds(1));
        var retry = NextStart(1, 2);
        Assert.Null(retry.Resume);
    }

    [Fact]
    public void A_start_is_sent_again_until_its_round_answers_and_never_after()
    {
        var spec = ActorSpecs.EchoJob("resend", deadlineSeconds: 30);
        var job = Job(spec.JobId, startResend: TimeSpan.FromSeconds(3));
        job.Tell(new SubmitJob(spec.JobId, spec));
        ExpectMsg<JobAccepted>(Wait);
        var first = NextStart(1, 1); // lost on the way to a shard that sat on a lost arbiter
        Clock.Advance(TimeSpan.FromSeconds(3));
        Assert.Equal(first, NextStart(1, 1));
        var round = CreateTestProbe();
        job.Tell(new RoundProgress(spec.JobId, 1, 1, 1, RoundStage.Collect, TimeSpan.FromSeconds(30)) { Asked = ActorSpecs.Orgs }, round.Ref);
        Status(job); // the answer has been handled
        Clock.Advance(TimeSpan.FromSeconds(9));
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void A_round_whose_actor_stops_before_it_reports_back_is_started_again_at_once_not_when_the_watchdog_fires()
    {
        var spec = ActorSpecs.EchoJob("round-lost", deadlineSeconds: 300);
        var job = Submitted(spec);
        NextStart(1, 1);
        var round = CreateTestProbe(); // the round's actor, on an arbiter that is about to be lost
        job.Tell(new RoundProgress(spec.JobId, 1, 1, 1, RoundStage.Collect, TimeSpan.FromSeconds(300)) { Asked = ActorSpecs.Orgs }, round.Ref);
        Status(job);
        Sys.Stop(round.Ref);
        NextStart(1, 2); // no virtual time passed: the watchdog (300 s + slack) has not fired
        var failure = Status(job).LastFailure!;
        Assert.Equal((1, 1), (failure.Round, failure.Attempt));
        Assert.Contains("the round's actor on this arbiter stopped before it reported back", failure.Reason);
    }

    [Fact]
    public void A_slow_secure_round_is_given_its_deadline_plus_every_secure_aggregation_step_before_the_watchdog_fires()
    {
        // Deadline 10 s, each of the 3 SecAgg steps up to 60 s: the round may legitimately take 190 s. The old watchdog
        // fired at deadline + 60 s and threw such a round away.
        var spec = FederationFixture.Secure(ActorSpecs.EchoJob("slow-secure", deadlineSeconds: 10), phaseTimeoutSeconds: 60);
        Submitted(spec);
        NextStart(1, 1);
        Clock.Advance(TimeSpan.FromSeconds(10 + 60 + 1));
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(TimeSpan.FromSeconds(10 + 3 * 60) + Slack - TimeSpan.FromSeconds(10 + 60 + 1));
        NextStart(1, 2);
    }

    [Fact]
    public void Progress_reports_move_the_watchdog_to_the_stage_in_flight()
    {
        var spec = ActorSpecs.EchoJob("progress", deadlineSeconds: 10);
        var job = Submitted(spec);
        var s = NextStart(1, 1);
        // The server step may train for a long time: the round says so.
        job.Tell(new RoundProgress(s.JobId, 1, 1, 1, RoundStage.Step, TimeSpan.FromSeconds(300)), _rounds.Ref);
        Status(job); // the report has been handled
        Clock.Advance(TimeSpan.FromSeconds(10) + Slack + TimeSpan.FromSeconds(1));
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        Clock.Advance(TimeSpan.FromSeconds(300));
        NextStart(1, 2);
    }

    [Fact]
    public void A_late_result_of_an_abandoned_attempt_and_a_duplicated_result_are_ignored()
    {
        var spec = ActorSpecs.EchoJob("late", rounds: 2, deadlineSeconds: 10);
        var job = Submitted(spec);
        var first = NextStart(1, 1);
        Clock.Advance(TimeSpan.FromSeconds(10) + Slack);
        var second = NextStart(1, 2);
        job.Tell(Success(first, 99), _rounds.Ref); // attempt 1 answers after the job moved on
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(300));
        Assert.Equal(0, Status(job).CompletedRounds);
        var result = Success(second, 15);
        job.Tell(result, _rounds.Ref);
        job.Tell(result, _rounds.Ref); // duplicated on the way
        NextStart(2, 1);
        var status = Status(job);
        Assert.Equal(1, status.CompletedRounds);
        Assert.Equal(2, status.Rounds.Single().Attempt);
    }

    [Fact]
    public void A_round_that_keeps_failing_is_retried_then_the_job_fails_naming_the_round_and_the_reason()
    {
        var spec = ActorSpecs.EchoJob("failing", attempts: 2);
        var job = Submitted(spec);
        var a1 = NextStart(1, 1);
        _rounds.Reply(new RoundFinished(a1.JobId, 1, 1, false, "quorum not met: food (no answer by the deadline)", null, null));
        var a2 = NextStart(1, 2);
        _rounds.Reply(new RoundFinished(a2.JobId, 1, 2, false, "quorum not met: food (no answer by the deadline)", null, null));
        var status = AwaitState(job, JobState.Failed);
        Assert.Equal("round 1 failed after 2 attempts: quorum not met: food (no answer by the deadline)", status.Reason);
        _parties.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // a failed job is not evaluated
    }

    [Theory]
    [InlineData("job.prepared")]
    [InlineData("job.round-started")]
    [InlineData("job.round-completed")]
    [InlineData("job.evaluating")]
    [InlineData("job.exporting")]
    public void A_crash_at_each_phase_recovers_from_the_journal_and_the_job_still_completes_without_recomputing_a_round(string point)
    {
        var spec = ActorSpecs.EchoJob("crash-" + point.Replace('.', '-'), rounds: 2);
        var faults = new FaultInjection([new FaultPoint(point, "", point == "job.round-started" || point == "job.round-completed" ? 1 : 0, 0, FaultAction.Throw, 1)]);
        var job = Submitted(spec, faults);
        var completed = new List<int>();
        var evaluated = 0;
        // Drive the job to the end whatever the crash made it resend: answer every start, every evaluation.
        AwaitAssert(() =>
        {
            var msg = _rounds.ReceiveOne(TimeSpan.FromMilliseconds(50)) ?? (object?)_parties.ReceiveOne(TimeSpan.FromMilliseconds(50));
            switch (msg)
            {
                case StartRound s:
                    Assert.DoesNotContain(s.Round, completed); // a completed round is never started again
                    job.Tell(Success(s, s.Round * 10), _rounds.Ref);
                    completed.Add(s.Round);
                    break;
                case EvaluateRequest e:
                    evaluated++;
                    job.Tell(new EvaluateReply(e.Org, e.JobId, new PartyEvaluation(e.Org, 1, Math.E, null, null, null, null, 1), null), _parties.Ref);
                    break;
            }
            Assert.Equal(JobState.Completed, Status(job).State);
        }, TimeSpan.FromSeconds(20), TimeSpan.FromMilliseconds(10));
        var status = Status(job);
        Assert.Equal([1, 2], status.Rounds.Select(r => r.Round));
        Assert.Equal([1, 2], completed);
        Assert.Equal("20", File.ReadAllText(Path.Combine(spec.OutputDir, "total.txt")));
        Assert.True(evaluated >= 3);
    }

    [Fact]
    public void An_exchange_recorded_before_the_arbiter_crashed_is_resumed_with_the_same_parties_not_recomputed()
    {
        var spec = ActorSpecs.EchoJob("resume", rounds: 1, exchanges: 2);
        var job = Submitted(spec);
        var start = NextStart(1, 1);
        var next = Exchange.Broadcast("e2", ["animal", "food"], PartyInstruction.Of(new Dictionary<string, string>()));
        var mid = AlgorithmState.Of((EchoAlgorithm.Total, _store.Put(EchoAlgorithm.Write(7))));
        job.Tell(new RoundPhaseDone(start.JobId, 1, 1, 1, mid, next), _rounds.Ref);
        Status(job); // persisted
        // The arbiter dies; a new incarnation of the entity (as sharding's remember-entities starts it) recovers from the journal.
        Watch(job);
        job.Tell(Kill.Instance);
        ExpectTerminated(job, Wait);
        Job(spec.JobId);
        var resumed = NextStart(1, 2);
        Assert.NotNull(resumed.Resume);
        Assert.Equal(2, resumed.Resume!.Phase);
        Assert.Equal("e2", resumed.Resume.Exchange.Name);
        Assert.Equal(mid.Artifacts, resumed.Resume.State.Artifacts);
        Assert.Equal(start.Participants, resumed.Participants);
    }

    [Fact]
    public void Cancelling_a_running_job_aborts_its_round_and_answers_cancelled()
    {
        var spec = ActorSpecs.EchoJob("cancel");
        var job = Submitted(spec);
        var s = NextStart(1, 1);
        job.Tell(new CancelJob(spec.JobId));
        Assert.Equal(JobState.Cancelled, ExpectMsg<JobStatus>(Wait).State);
        var abort = _rounds.ExpectMsg<AbortRound>(Wait);
        Assert.Equal(s.RoundId, abort.RoundId);
        job.Tell(Success(s, 1), _rounds.Ref); // the round's late answer changes nothing
        Assert.Equal(JobState.Cancelled, Status(job).State);
        Assert.Equal(0, Status(job).CompletedRounds);
    }

    [Fact]
    public void The_final_evaluation_skips_absent_parties_and_waits_for_silent_ones_only_until_the_deadline()
    {
        var spec = ActorSpecs.EchoJob("evaluation", rounds: 1, deadlineSeconds: 20);
        var job = Submitted(spec);
        _rounds.Reply(Success(NextStart(1, 1), 5));
        _presence.Absent.Add("food");
        var asked = new[] { _parties.ExpectMsg<EvaluateRequest>(Wait), _parties.ExpectMsg<EvaluateRequest>(Wait) };
        Assert.Equal(["animal", "artifact"], asked.Select(a => a.Org).Order());
        _parties.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        var animal = asked.Single(a => a.Org == "animal");
        job.Tell(new EvaluateReply("animal", spec.JobId, new PartyEvaluation("animal", 5, Math.Exp(5), null, null, null, null, 1), null), _parties.Ref);
        Assert.Equal(JobState.Running, Status(job).State); // artifact is silent
        Assert.Equal(EchoAlgorithm.Total, animal.Downloads.Keys.Single());
        Clock.Advance(TimeSpan.FromSeconds(20));
        var status = AwaitState(job, JobState.Completed);
        Assert.Equal(["animal"], status.FinalEvaluation.Select(e => e.Org));
        Assert.Equal(new Dictionary<string, string> { ["artifact"] = "no answer before the round deadline", ["food"] = "no node in the cluster" },
            status.EvaluationMissing.OrderBy(kv => kv.Key).ToDictionary());
    }

    [Fact]
    public void A_party_whose_node_leaves_during_the_final_evaluation_is_not_waited_for_and_is_reported_with_why()
    {
        var spec = ActorSpecs.EchoJob("evaluation-left", rounds: 1, deadlineSeconds: 600);
        var job = Submitted(spec);
        _rounds.Reply(Success(NextStart(1, 1), 5));
        var asked = Enumerable.Range(0, 3).Select(_ => _parties.ExpectMsg<EvaluateRequest>(Wait)).ToList();
        foreach (var org in new[] { "animal", "artifact" })
            job.Tell(new EvaluateReply(org, spec.JobId, new PartyEvaluation(org, 5, Math.Exp(5), null, null, null, null, 1), null), _parties.Ref);
        Assert.Equal(JobState.Running, Status(job).State);
        _presence.Leave("food"); // no clock advance: the 600 s deadline never comes
        var status = AwaitState(job, JobState.Completed);
        Assert.Equal(["animal", "artifact"], status.FinalEvaluation.Select(e => e.Org));
        Assert.Equal("its node left the cluster during the evaluation", status.EvaluationMissing["food"]);
    }

    [Fact]
    public void A_final_evaluation_that_cannot_be_planned_is_journaled_with_its_reason_and_the_job_still_exports()
    {
        var spec = ActorSpecs.EchoJob("no-plan", rounds: 1);
        EchoAlgorithm.FailEvaluationPlan(spec.JobId, "the evaluation model is gone");
        var job = Submitted(spec);
        _rounds.Reply(Success(NextStart(1, 1), 5));
        var status = AwaitState(job, JobState.Completed);
        _parties.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // nobody was asked to evaluate
        Assert.Equal("the final evaluation could not be planned: the evaluation model is gone", status.EvaluationProblem);
        Assert.Empty(status.FinalEvaluation);
        Assert.Contains("the evaluation model is gone", File.ReadAllText(Path.Combine(spec.OutputDir, "events.jsonl")));
        Assert.True(File.Exists(Path.Combine(spec.OutputDir, "total.txt")));
    }

    [Fact]
    public void A_cancelled_job_says_who_cancelled_it()
    {
        var spec = ActorSpecs.EchoJob("cancel-reason");
        var job = Submitted(spec);
        NextStart(1, 1);
        job.Tell(new CancelJob(spec.JobId));
        Assert.Equal(CancelJob.ByOperator, ExpectMsg<JobStatus>(Wait).Reason);
    }

    [Fact]
    public void A_finished_job_passivates_when_idle_and_its_status_is_recovered_from_the_journal_when_asked_again()
    {
        var spec = ActorSpecs.EchoJob("passivate", rounds: 1);
        var job = Submitted(spec);
        _rounds.Reply(Success(NextStart(1, 1), 5));
        Evaluate(3);
        AwaitState(job, JobState.Completed);
        Watch(job);
        Clock.Advance(TimeSpan.FromMinutes(10));
        ExpectTerminated(job, Wait);
        var again = Job(spec.JobId);
        var status = AwaitState(again, JobState.Completed);
        Assert.Equal(1, status.CompletedRounds);
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // nothing is run again
    }

    [Fact]
    public void A_sampled_job_asks_a_reproducible_sample_each_attempt_and_records_it()
    {
        var spec = ActorSpecs.EchoJob("sampled", rounds: 2, quorum: 2);
        spec = spec with { Round = spec.Round with { Sampling = new PartySampling(1.0, 2) } };
        var job = Submitted(spec);
        var r1 = NextStart(1, 1);
        Assert.Equal(PartySelection.Sample(spec, 1, 1), r1.Participants);
        Assert.Equal(2, r1.Participants.Length);
        _rounds.Reply(Success(r1, 1));
        var r2 = NextStart(2, 1);
        Assert.Equal(PartySelection.Sample(spec, 2, 1), r2.Participants);
        // The sample survives a crash: a resumed attempt of a round asks whom the journal says it asked.
        job.Tell(new RoundPhaseDone(r2.JobId, 2, 1, 1, r2.State, Exchange.Broadcast("e2", r2.Participants, PartyInstruction.Of(new Dictionary<string, string>()))), _rounds.Ref);
        Status(job);
        Watch(job);
        job.Tell(Kill.Instance);
        ExpectTerminated(job, Wait);
        Job(spec.JobId);
        Assert.Equal(r2.Participants, NextStart(2, 2).Participants);
    }

    [Fact]
    public void An_attempt_whose_quorum_needs_an_organization_without_a_node_waits_for_it_and_spends_no_attempt()
    {
        _presence.Absent.Add("food");
        var spec = ActorSpecs.EchoJob("waits", rounds: 1, quorum: 3);
        var job = Job(spec.JobId);
        job.Tell(new SubmitJob(spec.JobId, spec));
        var accepted = ExpectMsg<JobAccepted>(Wait);
        Assert.Equal(["food"], accepted.WaitingFor);
        Assert.Equal(TimeSpan.FromMinutes(2), accepted.WaitUpTo);
        Assert.Equal(["food"], Status(job).WaitingFor);
        Clock.Advance(TimeSpan.FromSeconds(30));
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        var waiting = Status(job);
        Assert.Equal(["food"], waiting.WaitingFor);
        Assert.Equal(0, waiting.CurrentAttempt);
        _presence.Absent.Clear(); // food's node joins
        Clock.Advance(TimeSpan.FromSeconds(1));
        NextStart(1, 1); // attempt 1, not a later one
        Assert.Empty(Status(job).WaitingFor);
    }

    [Fact]
    public void A_job_waits_for_a_missing_organization_only_so_long_then_fails_naming_it()
    {
        _presence.Absent.Add("food");
        var spec = ActorSpecs.EchoJob("gives-up", rounds: 1, quorum: 3);
        var job = Submitted(spec);
        Assert.Equal(["food"], Status(job).WaitingFor); // the wait has begun, its timer runs
        Clock.Advance(TimeSpan.FromMinutes(2));
        var status = AwaitState(job, JobState.Failed);
        Assert.Equal("round 1 cannot meet its quorum of 3: no node of food joined within 120 s", status.Reason);
        _rounds.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void The_status_shows_the_exchange_in_flight_and_who_has_answered()
    {
        var spec = ActorSpecs.EchoJob("live");
        var job = Submitted(spec);
        var s = NextStart(1, 1);
        job.Tell(new RoundProgress(s.JobId, 1, 1, 1, RoundStage.Collect, TimeSpan.FromSeconds(10)) { Asked = ActorSpecs.Orgs }, _rounds.Ref);
        job.Tell(new RoundPartyAnswered(s.JobId, 1, 1, 1, "animal", true, null), _rounds.Ref);
        job.Tell(new RoundPartyAnswered(s.JobId, 1, 1, 1, "food", false, "no answer by the deadline"), _rounds.Ref);
        var current = Status(job).Current!;
        Assert.Equal((1, 1, 1, RoundStage.Collect), (current.Round, current.Attempt, current.Exchange, current.Stage));
        Assert.Equal(ActorSpecs.Orgs, current.Asked);
        Assert.Equal("ok", current.Answers["animal"]);
        Assert.Equal("no answer by the deadline", current.Answers["food"]);
        Assert.False(current.Answers.ContainsKey("artifact"));
    }
}
