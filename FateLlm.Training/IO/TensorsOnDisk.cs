using System.Collections;
using static TorchSharp.torch;

namespace FateLlm.Training.IO;

/// <summary>
/// A safetensors file's tensors by name, read from disk each time one is asked for (the caller owns and frees it):
/// a rule that must see every party's update (median, trimmed mean, Krum, norm bounding) walks them one tensor at a
/// time, so it holds one tensor of each party instead of every party's whole update.
/// </summary>
public sealed class TensorsOnDisk : IReadOnlyDictionary<string, Tensor>
{
    readonly string _path;
    readonly Dictionary<string, SafeTensors.Entry> _entries;
    readonly long _dataStart;

    public TensorsOnDisk(string path)
    {
        _path = path;
        var (entries, start) = SafeTensors.ReadEntries(path);
        _entries = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
        _dataStart = start;
    }

    public Tensor this[string key]
    {
        get
        {
            var e = _entries.TryGetValue(key, out var found) ? found : throw new KeyNotFoundException($"{_path}: no tensor '{key}'");
            using var file = File.OpenHandle(_path);
            return SafeTensors.ReadStored(file, e, _dataStart, _path);
        }
    }

    /// <summary>A tensor's shape from the file's header, without reading it; null when the file has no such tensor.</summary>
    public long[]? ShapeOf(string key) => _entries.TryGetValue(key, out var e) ? e.Shape : null;

    public IEnumerable<string> Keys => _entries.Keys;
    public IEnumerable<Tensor> Values => Keys.Select(k => this[k]);
    public int Count => _entries.Count;
    public bool ContainsKey(string key) => _entries.ContainsKey(key);

    public bool TryGetValue(string key, out Tensor value)
    {
        value = ContainsKey(key) ? this[key] : null!;
        return value is not null;
    }

    public IEnumerator<KeyValuePair<string, Tensor>> GetEnumerator() => Keys.Select(k => new KeyValuePair<string, Tensor>(k, this[k])).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
