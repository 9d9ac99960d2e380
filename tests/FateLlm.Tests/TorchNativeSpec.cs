using Xunit;
using static TorchSharp.torch;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class TorchNativeSpec
{
    [Fact]
    public void Native_runtime_loads_and_autograd_computes_gradients()
    {
        var x = tensor(new float[] { 1, 2, 3 }, requires_grad: true);
        var y = x.mul(x).sum();
        y.backward();
        Assert.Equal(new float[] { 2, 4, 6 }, x.grad!.data<float>().ToArray());
    }
}
