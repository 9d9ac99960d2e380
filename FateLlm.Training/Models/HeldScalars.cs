using TorchSharp;

namespace FateLlm.Training.Models;

/// <summary>
/// Constants the forward passes hand libtorch, held for the process's life. A number passed as such becomes a temporary
/// Scalar that TorchSharp 0.107 may finalize while libtorch still reads it (docs/operations.md, Known defect); values
/// that vary are held with <c>using var s = x.ToScalar()</c> around the call instead.
/// </summary>
public static class HeldScalars
{
    public static readonly Scalar Zero = 0.ToScalar(), One = 1.ToScalar(), Two = 2.ToScalar();
}
