using FateLlm.Training.IO;
using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class SafeTensorsSpec
{
    [Fact]
    public void Tensors_round_trip_through_a_file_and_through_bytes()
    {
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.weight"] = randn(3, 4),
            ["b"] = arange(10, dtype: ScalarType.Int64),
            ["c.half"] = randn(5).to_type(ScalarType.Float16),
        };
        var path = Path.Combine(TestSupport.TempDir(), "x.safetensors");
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["round"] = "3" });
        var back = SafeTensors.Load(path);
        Assert.Equal(tensors.Keys.Order(), back.Keys.Order());
        Assert.Equal(0, TestSupport.MaxAbsDiff(back["a.weight"], tensors["a.weight"]));
        Assert.Equal(tensors["b"].data<long>().ToArray(), back["b"].data<long>().ToArray());
        Assert.True(TestSupport.MaxAbsDiff(back["c.half"], tensors["c.half"].to_type(ScalarType.Float32)) == 0);
        Assert.Equal("pt", SafeTensors.ReadMetadata(path)["format"]);
        Assert.Equal("3", SafeTensors.ReadMetadata(path)["round"]);
        var fromBytes = SafeTensors.FromBytes(SafeTensors.ToBytes(tensors));
        Assert.Equal(0, TestSupport.MaxAbsDiff(fromBytes["a.weight"], tensors["a.weight"]));
    }

    [Fact]
    public void Equal_content_gives_identical_bytes_whatever_the_insertion_order()
    {
        var x = randn(2, 2);
        var y = randn(3);
        var a = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["x"] = x, ["y"] = y });
        var b = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["y"] = y, ["x"] = x });
        Assert.Equal(a, b);
    }

    [Fact]
    public void Bfloat16_tensors_are_widened_to_float32()
    {
        var t = tensor(new float[] { 1.5f, -2.25f, 3.0f }).to_type(ScalarType.BFloat16);
        var back = SafeTensors.FromBytes(SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["t"] = t }));
        Assert.Equal(ScalarType.Float32, back["t"].dtype);
        Assert.Equal(new float[] { 1.5f, -2.25f, 3.0f }, back["t"].data<float>().ToArray());
    }

    [Fact]
    public void A_truncated_or_garbled_buffer_is_rejected_with_the_reason()
    {
        var good = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["w"] = randn(16) });
        var e1 = Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.FromBytes(good.AsSpan(0, good.Length - 8), "upload"));
        Assert.Contains("upload", e1.Message);
        Assert.Contains("'w'", e1.Message);
        var garbled = (byte[])good.Clone();
        garbled[10] = (byte)'#';
        Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.FromBytes(garbled));
        Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.FromBytes(new byte[] { 1, 2, 3 }));
    }
}
