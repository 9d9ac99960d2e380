using FateLlm.Training.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FateLlm.Training.Trainer;

/// <summary>
/// AdamW (Loshchilov and Hutter), the same operations in the same order as torch's and TorchSharp's, so the same numbers
/// bit for bit. Ours because every number it hands libtorch is a <see cref="Scalar"/> held until the call returns:
/// TorchSharp 0.107's AdamW converts each to a temporary whose finalizer may free it while libtorch still reads it, which
/// failed a party's fit now and then (docs/operations.md, Known defect). State is saved as safetensors.
/// </summary>
public sealed class AdamW : IDisposable
{
    readonly Parameter[] _parameters;
    readonly Tensor[] _expAvg, _expAvgSq;
    readonly long[] _steps;
    readonly double _beta1, _beta2, _eps, _weightDecay;

    public double LearningRate { get; set; }

    /// <summary>Defaults as torch.optim.AdamW's.</summary>
    public AdamW(IEnumerable<Parameter> parameters, double learningRate, double weightDecay = 0.01, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
    {
        _parameters = parameters.ToArray();
        (LearningRate, _weightDecay, _beta1, _beta2, _eps) = (learningRate, weightDecay, beta1, beta2, eps);
        using var _ = no_grad();
        _expAvg = [.. _parameters.Select(p => zeros_like(p).DetachFromDisposeScope())];
        _expAvgSq = [.. _parameters.Select(p => zeros_like(p).DetachFromDisposeScope())];
        _steps = new long[_parameters.Length];
    }

    /// <summary>One update of every parameter that has a gradient.</summary>
    public void Step()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using Scalar decay = (1.0 - LearningRate * _weightDecay).ToScalar(), beta1 = _beta1.ToScalar(), oneMinusBeta1 = (1.0 - _beta1).ToScalar(),
            beta2 = _beta2.ToScalar(), oneMinusBeta2 = (1.0 - _beta2).ToScalar(), eps = _eps.ToScalar();
        for (var i = 0; i < _parameters.Length; i++)
        {
            var p = _parameters[i];
            using var grad = p.grad;
            if (grad is null) continue;
            var step = ++_steps[i];
            p.mul_(decay);
            var biasCorrection1 = 1.0 - Math.Pow(_beta1, step);
            var biasCorrection2 = 1.0 - Math.Pow(_beta2, step);
            _expAvg[i].mul_(beta1).add_(grad, oneMinusBeta1);
            _expAvgSq[i].mul_(beta2).addcmul_(grad, grad, oneMinusBeta2);
            using Scalar root = Math.Sqrt(biasCorrection2).ToScalar(), stepSize = (0.0 - LearningRate / biasCorrection1).ToScalar();
            using var denominator = _expAvgSq[i].sqrt().div_(root).add_(eps);
            p.addcdiv_(_expAvg[i], denominator, stepSize);
        }
    }

    /// <summary>Zeroes every gradient (kept allocated, as torch's zero_grad(set_to_none=False)).</summary>
    public void ZeroGrad()
    {
        foreach (var p in _parameters)
        {
            using var grad = p.grad;
            grad?.zero_();
        }
    }

    /// <summary>Moments and step counts, in parameter order, for a checkpoint.</summary>
    public void Save(string path)
    {
        using var steps = tensor(_steps);
        var tensors = new Dictionary<string, Tensor> { ["steps"] = steps };
        for (var i = 0; i < _parameters.Length; i++)
        {
            tensors[$"exp_avg.{i}"] = _expAvg[i];
            tensors[$"exp_avg_sq.{i}"] = _expAvgSq[i];
        }
        SafeTensors.Save(path, tensors);
    }

    /// <summary>Restores what <see cref="Save"/> wrote for the same parameters; refuses a file of other shapes.</summary>
    public void Load(string path)
    {
        var saved = SafeTensors.Load(path);
        try
        {
            if (!saved.TryGetValue("steps", out var steps) || steps.numel() != _parameters.Length)
                throw new InvalidDataException($"{path}: optimizer state for {(steps is null ? "no" : steps.numel())} parameters, this run has {_parameters.Length}");
            var counts = steps.data<long>().ToArray();
            using var _ = no_grad();
            for (var i = 0; i < _parameters.Length; i++)
            {
                foreach (var (name, into) in new[] { ($"exp_avg.{i}", _expAvg[i]), ($"exp_avg_sq.{i}", _expAvgSq[i]) })
                {
                    if (!saved.TryGetValue(name, out var t) || !t.shape.SequenceEqual(into.shape))
                        throw new InvalidDataException($"{path}: {name} is missing or not of shape [{string.Join(", ", into.shape)}]");
                    into.copy_(t);
                }
                _steps[i] = counts[i];
            }
        }
        finally
        {
            foreach (var t in saved.Values) t.Dispose();
        }
    }

    public void Dispose()
    {
        foreach (var t in _expAvg.Concat(_expAvgSq)) t.Dispose();
    }
}
