using FateLlm.Training.Aggregation;

namespace FateLlm.Training.Algorithms;

/// <summary>
/// The codec of tensor deltas in an exchange's vector layout: the update must parse as safetensors, carry exactly the
/// layout's tensor names and shapes, hold only finite values, and stay within the job's norm bound. The round then
/// folds accepted updates into a running mean or reads them back from the store a tensor at a time (RoundStep).
/// </summary>
public sealed class TensorUpdateCodec : IUpdateCodec
{
    public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
    {
        var layout = ctx.Layout ?? throw new InvalidOperationException($"exchange '{ctx.Exchange.Name}' declares no vector layout for its tensor updates");
        var (tensors, problem) = UpdateValidation.Parse(update);
        problem ??= UpdateValidation.Check(layout, tensors!, ctx.Limits.MaxNorm);
        return problem is null ? UpdateCheck.Accepted(tensors) : UpdateCheck.Refused(problem);
    }
}
