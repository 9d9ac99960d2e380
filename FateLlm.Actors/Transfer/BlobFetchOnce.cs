using Akka.Actor;

namespace FateLlm.Actors.Transfer;

/// <summary>Pulls one blob into a store for code outside an actor (a CLI command, a benchmark) and completes with the
/// fetcher's <see cref="FetchCompleted"/> or <see cref="FetchFailed"/>, then stops.</summary>
internal sealed class BlobFetchOnce : UntypedActor
{
    readonly Training.IO.BlobStore _store;
    readonly BlobLocation _source;
    readonly TransferSettings _transfer;
    readonly TaskCompletionSource<object> _done;

    public BlobFetchOnce(Training.IO.BlobStore store, BlobLocation source, TransferSettings transfer, TaskCompletionSource<object> done) =>
        (_store, _source, _transfer, _done) = (store, source, transfer, done);

    protected override void PreStart() => Context.ActorOf(BlobFetcher.Props(_store, _source, _transfer, correlation: _source.Digest));

    protected override void OnReceive(object message)
    {
        _done.TrySetResult(message);
        Context.Stop(Self);
    }
}

public static class BlobDownload
{
    public static Task<object> Run(ActorSystem system, Training.IO.BlobStore store, BlobLocation source, TransferSettings transfer)
    {
        var done = new TaskCompletionSource<object>(TaskCreationOptions.RunContinuationsAsynchronously);
        system.ActorOf(Props.Create(() => new BlobFetchOnce(store, source, transfer, done)));
        return done.Task;
    }
}
