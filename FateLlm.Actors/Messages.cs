namespace FateLlm.Actors;

/// <summary>Small control messages; each has a manifest in <see cref="Serialization.WireSchema"/> (JSON on the wire).</summary>
public interface IControlMessage;

/// <summary>Messages with bulk bytes; bound to <see cref="Serialization.FederationSerializer"/>.</summary>
public interface IBulkMessage;
