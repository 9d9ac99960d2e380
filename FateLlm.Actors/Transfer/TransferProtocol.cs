using Akka.Actor;

namespace FateLlm.Actors.Transfer;

/// <summary>Asks a node's blob server for one chunk of a content-addressed blob.</summary>
public sealed record FetchChunk(string Digest, int Index, int ChunkSize) : IControlMessage;

/// <summary>One chunk; <see cref="TotalSize"/> tells the fetcher how many chunks to expect.</summary>
public sealed record ChunkData(string Digest, int Index, long TotalSize, byte[] Data) : IBulkMessage;

public sealed record BlobNotFound(string Digest) : IControlMessage;

/// <summary>Reply of a <see cref="BlobFetcher"/> to its parent, echoing the correlation id the parent gave it.</summary>
public sealed record FetchCompleted(string Correlation, string Digest, long Bytes, int Chunks, int Retransmissions, TimeSpan Elapsed);

public sealed record FetchFailed(string Correlation, string Digest, string Reason);

/// <summary>How far a fetch is, to its parent every progress interval: a long transfer is work moving on, not a hang.</summary>
public sealed record FetchProgress(string Correlation, long Received, long Total);

/// <summary>Where a blob can be pulled from: its digest, size and the serving node's blob server.</summary>
public sealed record BlobLocation(string Digest, long Size, IActorRef Server) : IControlMessage;

/// <summary>Asks a node's blob server whether it holds a blob; it answers <see cref="BlobHeld"/> if it does, and nothing otherwise.</summary>
public sealed record LocateBlob(string Digest) : IControlMessage;

public sealed record BlobHeld(string Digest, long Size) : IControlMessage;

/// <summary>
/// From the arbiter running a job to the other arbiters' blob servers: pull this blob of the job's state (the global
/// adapter, the server's optimizer state) so that whichever arbiter takes the job over finds it. Refused from non-arbiters.
/// </summary>
public sealed record ReplicateBlob(BlobLocation Source) : IControlMessage;

/// <summary>A fetcher asks the blob server for a stream of the blob (the data plane) instead of chunks over Akka.Remote.</summary>
public sealed record OpenStream(string Digest) : IControlMessage;

/// <summary>Where to read the blob from, with a single-use ticket only this offer's reader can redeem.</summary>
public sealed record StreamOffered(string Digest, string Host, int Port, byte[] Ticket, bool Tls) : IControlMessage;

/// <summary>This server streams nothing (disabled, or the blob is gone): the fetcher uses chunks.</summary>
public sealed record StreamRefused(string Digest, string Reason) : IControlMessage;
