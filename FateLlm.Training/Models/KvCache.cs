using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>
/// Keys and values of tokens already processed, per layer ([batch, kv_heads, length, head_dim]); excludes
/// P-Tuning prefixes, which are re-attached each step, so <see cref="Length"/> counts real tokens only.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _keys;
    readonly Tensor?[] _values;
    public int Length { get; private set; }

    public KvCache(int layers)
    {
        _keys = new Tensor?[layers];
        _values = new Tensor?[layers];
    }

    public (Tensor? Key, Tensor? Value) Get(int layer) => (_keys[layer], _values[layer]);

    internal void Set(int layer, Tensor key, Tensor value)
    {
        _keys[layer]?.Dispose();
        _values[layer]?.Dispose();
        _keys[layer] = key.detach().MoveToOuterDisposeScope();
        _values[layer] = value.detach().MoveToOuterDisposeScope();
        if (layer == _keys.Length - 1) Length = (int)key.shape[2];
    }

    public void Dispose()
    {
        foreach (var t in _keys) t?.Dispose();
        foreach (var t in _values) t?.Dispose();
    }
}
