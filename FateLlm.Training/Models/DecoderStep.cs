using TorchSharp;
using static TorchSharp.torch;

namespace FateLlm.Training.Models;

/// <summary>What every layer of one forward pass shares: cache, prefix keys/values, mask, rotary tables.</summary>
internal sealed class DecoderStep
{
    public required Tensor Positions { get; init; }
    public required KvCache? Cache { get; init; }
    public required IReadOnlyList<(Tensor Key, Tensor Value)>? Prefix { get; init; }
    /// <summary>Boolean [b|1, 1, S, keys] mask (true = may attend) of global layers, or null for the plain causal case.</summary>
    public required Tensor? Mask { get; init; }
    /// <summary>The same with the sliding window, for layers that attend through it.</summary>
    public Tensor? LocalMask { get; init; }
    /// <summary>When set, the hidden state after this block is kept in <see cref="Captured"/> (emulator distillation).</summary>
    public int? CaptureAfter { get; init; }
    public Tensor? Captured { get; set; }

    public Tensor Capture(int block, Tensor x)
    {
        if (block == CaptureAfter) Captured = x;
        return x;
    }
    /// <summary>Rotary tables, filled by families that use RoPE; the local ones for sliding layers with their own base (Gemma 3).</summary>
    public Tensor? Cos { get; set; }
    public Tensor? Sin { get; set; }
    public Tensor? LocalCos { get; set; }
    public Tensor? LocalSin { get; set; }

    /// <summary>Joins prefix, cached and new keys/values, stores the real (non-prefix) part back into the cache.</summary>
    public (Tensor Key, Tensor Value) Extend(int layer, Tensor k, Tensor v)
    {
        if (Cache != null)
        {
            var (pk, pv) = Cache.Get(layer);
            if (pk is not null && pv is not null)
            {
                k = cat([pk, k], 2);
                v = cat([pv, v], 2);
            }
            Cache.Set(layer, k, v);
        }
        if (Prefix != null)
        {
            var (xk, xv) = Prefix[layer];
            k = cat([xk.dtype == k.dtype ? xk : xk.to_type(k.dtype), k], 2);
            v = cat([xv.dtype == v.dtype ? xv : xv.to_type(v.dtype), v], 2);
        }
        return (k, v);
    }

    /// <summary>
    /// Scaled dot-product attention; kv heads are repeated for grouped-query attention as HF's repeat_kv does.
    /// <paramref name="scale"/> replaces 1/√d (Gemma 2/3); <paramref name="softcap"/> caps scores as Gemma 2's eager
    /// attention does, which the fused kernel cannot.
    /// </summary>
    public Tensor Attend(Tensor q, Tensor k, Tensor v, bool local = false, double? scale = null, double? softcap = null)
    {
        var rep = q.shape[1] / k.shape[1];
        if (rep > 1)
        {
            k = k.repeat_interleave(rep, dim: 1);
            v = v.repeat_interleave(rep, dim: 1);
        }
        var mask = local ? LocalMask : Mask;
        if (softcap is double cap)
        {
            using Scalar scaled = (scale ?? 1 / Math.Sqrt(q.shape[^1])).ToScalar(), capped = cap.ToScalar();
            var scores = q.matmul(k.transpose(-1, -2)).mul(scaled);
            scores = scores.div(capped).tanh().mul(capped);
            // A null mask is the plain causal case: no cache and no prefix, so queries and keys are the same positions.
            var allowed = mask ?? ones(q.shape[2], k.shape[2], dtype: ScalarType.Bool, device: q.device).tril();
            scores = scores.masked_fill(allowed.logical_not(), float.MinValue);
            return nn.functional.softmax(scores, -1, ScalarType.Float32).to_type(q.dtype).matmul(v);
        }
        if (scale is double s) q = q.mul(s * Math.Sqrt(q.shape[^1])); // the kernel divides by √d
        return mask is null
            ? nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true)
            : nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: mask);
    }

    /// <summary>
    /// Query i (absolute position past+i) may see every prefix slot, every earlier real key that is not padding,
    /// and always itself (so a padding row never attends to nothing). With a sliding window W, only keys at most
    /// W − 1 positions back (HF: <c>kv_idx &gt; q_idx − W</c>); prefix slots stay visible.
    /// </summary>
    public static Tensor? BuildMask(long batch, long newLen, long pastLen, long prefixLen, Tensor? attentionMask, Device device, int? window = null)
    {
        var total = pastLen + newLen;
        var windowed = window is int w && total > w;
        if (prefixLen == 0 && pastLen == 0 && attentionMask is null && !windowed) return null;
        using var scope = NewDisposeScope();
        var qpos = arange(pastLen, total, device: device).unsqueeze(1);
        var kpos = arange(0, total, device: device).unsqueeze(0);
        var causal = kpos.le(qpos);
        if (windowed) causal = causal.logical_and(kpos.gt(qpos.sub(window!.Value)));
        var allowed = causal.unsqueeze(0).unsqueeze(0); // [1,1,S,T+S]
        if (attentionMask is not null)
        {
            if (attentionMask.shape[1] != total)
                throw new ArgumentException($"attention mask covers {attentionMask.shape[1]} tokens but the sequence has {total}");
            var keep = attentionMask.to_type(ScalarType.Bool).view(batch, 1, 1, total);
            allowed = allowed.logical_and(keep).logical_or(kpos.eq(qpos).unsqueeze(0).unsqueeze(0));
        }
        if (prefixLen > 0)
        {
            var b = allowed.shape[0];
            allowed = cat([ones(b, 1, newLen, prefixLen, dtype: ScalarType.Bool, device: device), allowed.expand(b, 1, newLen, total)], 3);
        }
        return allowed.MoveToOuterDisposeScope();
    }

    /// <summary>Position ids: past+arange, or, with a padding mask, the count of real tokens before each one.</summary>
    public static Tensor PositionIds(long batch, long newLen, long pastLen, Tensor? attentionMask, Device device)
    {
        if (attentionMask is null) return arange(pastLen, pastLen + newLen, device: device).unsqueeze(0).expand(batch, newLen);
        using var scope = NewDisposeScope();
        var pos = attentionMask.to_type(ScalarType.Int64).cumsum(1).sub(HeldScalars.One).clamp_min(HeldScalars.Zero);
        return pos.narrow(1, pastLen, newLen).MoveToOuterDisposeScope();
    }

    public static Tensor Activate(Tensor x, string activation) => activation switch
    {
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => nn.functional.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "gelu" => nn.functional.gelu(x),
        "relu" => nn.functional.relu(x),
        "silu" or "swish" => nn.functional.silu(x),
        _ => throw new ModelFormatException($"activation '{activation}' is not supported"),
    };
}
