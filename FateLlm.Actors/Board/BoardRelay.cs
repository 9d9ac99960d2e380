using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using FateLlm.Actors.Rounds;

namespace FateLlm.Actors.Board;

/// <summary>
/// Runs on every arbiter: forwards what this node's jobs, rounds and secure aggregation publish for the board to the
/// cluster-wide board topic. Jobs and rounds are sharded across arbiters (and move when one is lost), so a board on any
/// one arbiter still shows every job and every round's parties.
/// </summary>
public sealed class BoardRelay : ReceiveActor
{
    public const string Name = "board-relay", Topic = "fate-llm-board";

    /// <summary>Everything the board follows besides cluster membership.</summary>
    internal static readonly Type[] Events = [typeof(JobObserved), typeof(PartyWorkStarted), typeof(Rounds.PartyProgressed), typeof(PartyUploadStarted), typeof(PartyAnswered),
        typeof(SecureAggregationStepStarted), typeof(SecureAggregationStepAnswered), typeof(SecureAggregationDropout)];

    readonly IActorRef _mediator = DistributedPubSub.Get(Context.System).Mediator;

    public BoardRelay() => ReceiveAny(e => _mediator.Tell(new Publish(Topic, e)));

    protected override void PreStart()
    {
        foreach (var t in Events) Context.System.EventStream.Subscribe(Self, t);
    }

    protected override void PostStop() => Context.System.EventStream.Unsubscribe(Self);

    public static Props Props() => Akka.Actor.Props.Create(() => new BoardRelay());
}
