namespace FateLlm.Actors;

/// <summary>Small control messages; bound to Hyperion (unsafe types disallowed) in reference.conf.</summary>
public interface IControlMessage;

/// <summary>Messages with bulk bytes; bound to <see cref="Serialization.FederationSerializer"/>.</summary>
public interface IBulkMessage;
