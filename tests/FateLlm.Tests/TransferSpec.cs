using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Faults;
using FateLlm.Actors.Transfer;
using FateLlm.Training.IO;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The chunked transfer alone. A probe plays the serving node for the fetcher (answers chunks late, twice, out of order,
/// corrupted, or never), with virtual time for the chunk timeout; the blob server is checked against a probe client.
/// </summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class TransferSpec : TestKit
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(10), ChunkTimeout = TimeSpan.FromSeconds(5);
    static readonly TransferSettings Small = new(ChunkSize: 4, Window: 2, ChunkTimeout, MaxAttemptsPerChunk: 3);
    readonly BlobStore _store = new(TestSupport.TempDir());
    readonly byte[] _blob = Enumerable.Range(0, 10).Select(i => (byte)(i * 7)).ToArray(); // 3 chunks of 4, 4, 2 bytes
    readonly string _digest;
    readonly TestProbe _server;

    public TransferSpec() : base(ActorSpecs.Config(virtualTime: true))
    {
        _digest = BlobStore.Digest(_blob);
        _server = CreateTestProbe();
    }

    TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    IActorRef Fetch(string correlation = "global") =>
        ChildActorOf(BlobFetcher.Props(_store, new BlobLocation(_digest, _blob.Length, _server.Ref), Small, correlation));

    FetchChunk Asked(int index)
    {
        var r = _server.ExpectMsg<FetchChunk>(Wait);
        Assert.Equal((_digest, index, 4), (r.Digest, r.Index, r.ChunkSize));
        return r;
    }

    ChunkData Chunk(int index, byte[]? data = null) =>
        new(_digest, index, _blob.Length, data ?? _blob.Skip(index * 4).Take(4).ToArray());

    [Fact]
    public void Chunks_answered_out_of_order_and_twice_assemble_the_blob_within_the_window_and_the_parent_hears_its_correlation_id()
    {
        var fetcher = Fetch("adapter-of-food");
        Asked(0);
        _server.Reply(Chunk(0));
        Asked(1);
        Asked(2); // the window (2) keeps two requests in flight, never more
        _server.ExpectNoMsg(TimeSpan.FromMilliseconds(100));
        fetcher.Tell(Chunk(2), _server.Ref);
        fetcher.Tell(Chunk(2), _server.Ref); // duplicated
        fetcher.Tell(Chunk(1), _server.Ref);
        var done = ExpectMsg<FetchCompleted>(Wait);
        Assert.Equal(("adapter-of-food", _digest, 10L, 3, 0), (done.Correlation, done.Digest, done.Bytes, done.Chunks, done.Retransmissions));
        Assert.Equal(_blob, _store.Read(_digest));
    }

    [Fact]
    public void A_large_blob_reports_its_progress_and_completion_in_megabytes()
    {
        // "Large" lowered to the 10-byte blob; the interval of zero reports every chunk.
        var settings = Small with { ProgressMinBytes = 8, ProgressInterval = TimeSpan.Zero };
        Sys.EventStream.SetLogLevel(Akka.Event.LogLevel.InfoLevel); // actor specs log warnings and up
        var fetcher = ChildActorOf(BlobFetcher.Props(_store, new BlobLocation(_digest, _blob.Length, _server.Ref), settings, "big"));
        Asked(0);
        EventFilter.Info(contains: "0.0 of 0.0 MB (40").ExpectOne(() => _server.Reply(Chunk(0)));
        Asked(1);
        Asked(2);
        fetcher.Tell(Chunk(1), _server.Ref);
        EventFilter.Info(contains: "(100 %)").ExpectOne(() => fetcher.Tell(Chunk(2), _server.Ref));
        ExpectMsg<FetchCompleted>(Wait);
    }

    [Fact]
    public void A_fetch_asked_for_progress_tells_its_parent_how_far_it_is_and_ends_with_its_completion()
    {
        var settings = Small with { ProgressInterval = TimeSpan.Zero };
        var fetcher = ChildActorOf(BlobFetcher.Props(_store, new BlobLocation(_digest, _blob.Length, _server.Ref), settings, "global", progress: true));
        Asked(0);
        _server.Reply(Chunk(0));
        Assert.Equal(("global", 4L, 10L), ExpectMsg<FetchProgress>(Wait) is var p ? (p.Correlation, p.Received, p.Total) : default);
        Asked(1);
        Asked(2);
        fetcher.Tell(Chunk(1), _server.Ref);
        Assert.Equal(8L, ExpectMsg<FetchProgress>(Wait).Received);
        fetcher.Tell(Chunk(2), _server.Ref);
        ExpectMsg<FetchCompleted>(Wait); // no progress message for the whole: the completion says it
    }

    [Fact]
    public void A_lost_chunk_is_asked_for_again_after_the_chunk_timeout_and_counted()
    {
        var fetcher = Fetch();
        Asked(0);
        _server.Reply(Chunk(0));
        Asked(1);
        Asked(2);
        fetcher.Tell(Chunk(2), _server.Ref); // chunk 1 is lost
        Clock.Advance(ChunkTimeout);
        Asked(1);
        fetcher.Tell(Chunk(1), _server.Ref);
        Assert.Equal(1, ExpectMsg<FetchCompleted>(Wait).Retransmissions);
    }

    [Fact]
    public void A_chunk_that_never_arrives_fails_the_transfer_naming_it_once_its_attempts_are_spent()
    {
        Fetch();
        Asked(0);
        for (int attempt = 2; attempt <= 3; attempt++)
        {
            Clock.Advance(ChunkTimeout);
            Asked(0);
        }
        Clock.Advance(ChunkTimeout);
        var failed = ExpectMsg<FetchFailed>(Wait);
        Assert.Equal($"chunk 0 of blob {_digest[..12]}… did not arrive after 3 attempts", failed.Reason);
        Assert.False(_store.Has(_digest));
    }

    [Fact]
    public void Bytes_that_do_not_hash_to_the_digest_are_refused_and_never_enter_the_store()
    {
        var fetcher = Fetch();
        Asked(0);
        _server.Reply(Chunk(0, [9, 9, 9, 9]));
        Asked(1);
        Asked(2);
        fetcher.Tell(Chunk(1), _server.Ref);
        fetcher.Tell(Chunk(2), _server.Ref);
        Assert.Equal($"blob {_digest[..12]}… arrived but its digest does not match", ExpectMsg<FetchFailed>(Wait).Reason);
        Assert.False(_store.Has(_digest));
        Assert.Empty(Directory.GetFiles(_store.Root, "*.part"));
    }

    /// <summary>Sends the whole blob, chunk by chunk as the fetcher asks (a window of 2 over 3 chunks).</summary>
    void Serve(IActorRef fetcher)
    {
        Asked(0);
        fetcher.Tell(Chunk(0), _server.Ref);
        Asked(1);
        Asked(2);
        fetcher.Tell(Chunk(1), _server.Ref);
        fetcher.Tell(Chunk(2), _server.Ref);
    }

    IActorRef FetchFailingCommits(int times) => ChildActorOf(BlobFetcher.Props(_store, new BlobLocation(_digest, _blob.Length, _server.Ref),
        Small with { Faults = new FaultInjection([new FaultPoint(FaultPoints.TransferCommit, "", 0, 0, FaultAction.Throw, times)]) }, "commit"));

    [Fact]
    public void A_blob_that_cannot_be_stored_is_fetched_again_at_once_and_counted_as_a_retransmission()
    {
        var fetcher = FetchFailingCommits(times: 1);
        EventFilter.Warning(contains: "could not be stored").ExpectOne(() => Serve(fetcher));
        Serve(fetcher); // no clock advance: the second fetch starts on the failure, not on a timeout
        var done = ExpectMsg<FetchCompleted>(Wait);
        Assert.Equal(("commit", 1), (done.Correlation, done.Retransmissions));
        Assert.Equal(_blob, _store.Read(_digest));
        Assert.Empty(Directory.GetFiles(_store.Root, "*.part"));
    }

    [Fact]
    public void A_blob_that_never_can_be_stored_fails_the_fetch_naming_the_error_once_its_attempts_are_spent()
    {
        var fetcher = FetchFailingCommits(times: 100);
        for (int attempt = 1; attempt <= 3; attempt++) Serve(fetcher);
        var failed = ExpectMsg<FetchFailed>(Wait);
        Assert.Equal("commit", failed.Correlation);
        Assert.StartsWith($"blob {_digest[..12]}… arrived but could not be stored (3 times): fault injection at transfer.commit", failed.Reason);
        _server.ExpectNoMsg(TimeSpan.FromMilliseconds(100));
        Assert.False(_store.Has(_digest));
        Assert.Empty(Directory.GetFiles(_store.Root, "*.part"));
    }

    [Fact]
    public void A_source_that_lost_the_blob_fails_the_transfer_at_once_and_a_blob_already_held_needs_no_request()
    {
        Fetch("lost");
        Asked(0);
        _server.Reply(new BlobNotFound(_digest));
        Assert.Equal("lost", ExpectMsg<FetchFailed>(Wait).Correlation);

        _store.Put(_blob);
        Fetch("cached");
        var done = ExpectMsg<FetchCompleted>(Wait);
        Assert.Equal(("cached", 0), (done.Correlation, done.Chunks));
        _server.ExpectNoMsg(TimeSpan.FromMilliseconds(100));
    }

    [Fact]
    public void The_blob_server_serves_chunks_and_answers_unknown_blobs_and_chunks_past_the_end_with_not_found()
    {
        _store.Put(_blob);
        var server = Sys.ActorOf(BlobServer.Props(_store));
        server.Tell(new FetchChunk(_digest, 2, 4));
        var last = ExpectMsg<ChunkData>(Wait);
        Assert.Equal([(byte)56, 63], last.Data);
        Assert.Equal(10L, last.TotalSize);
        server.Tell(new FetchChunk(_digest, 3, 4));
        ExpectMsg<BlobNotFound>(Wait);
        server.Tell(new FetchChunk(new string('f', 64), 0, 4));
        ExpectMsg<BlobNotFound>(Wait);
    }

    [Fact]
    public void A_lossy_blob_server_drops_some_replies_which_the_fetcher_recovers_by_retransmission()
    {
        _store.Put(_blob);
        var lossy = Sys.ActorOf(BlobServer.Props(_store, dropRate: 0.5, seed: 3));
        var target = new BlobStore(TestSupport.TempDir());
        ChildActorOf(BlobFetcher.Props(target, new BlobLocation(_digest, _blob.Length, lossy), Small with { MaxAttemptsPerChunk = 50 }, "lossy"));
        FetchCompleted? done = null;
        AwaitAssert(() =>
        {
            Clock.Advance(ChunkTimeout);
            done = ExpectMsg<FetchCompleted>(TimeSpan.FromMilliseconds(100));
        }, Wait);
        Assert.True(done!.Retransmissions > 0);
        Assert.Equal(_blob, target.Read(_digest));
    }
}
