using System.Reflection;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The suite's tiers, one per test class: <c>fast</c> (no cluster: pure functions, single actors on TestKit, one local
/// actor system), <c>cluster</c> (an in-process federation) and <c>process</c> (real child processes or a browser).
/// A developer runs the fast tier with <c>dotnet test --filter tier=fast</c>. Two test collections, run side by side:
/// <see cref="InProcess"/> (fast and cluster classes and any class hosting a federation, one after another, as before)
/// and <see cref="Process"/> (classes whose work is in child processes). Torch work of two classes never overlaps in the
/// test process: TorchSharp frees a temporary Scalar from the finalizer thread, possibly while a native call still reads
/// it, and concurrent training in one process made that race fail a run (docs/operations.md).
/// </summary>
public static class Tier
{
    public const string Key = "tier", Fast = "fast", Cluster = "cluster", Process = "process";
    public const string InProcess = "in-process";
}

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class TierSpec
{
    [Fact]
    public void Every_test_class_names_exactly_one_tier_so_a_new_one_cannot_drop_out_of_every_filter()
    {
        var untiered = typeof(TierSpec).Assembly.GetTypes()
            .Where(t => t.GetMethods().Any(m => m.GetCustomAttributes<FactAttribute>(inherit: true).Any()))
            .Where(t => t.GetCustomAttributes<TraitAttribute>().Count() != 1 || !HasTier(t))
            .Select(t => t.Name).Order().ToList();
        Assert.True(untiered.Count == 0, "without [Trait(Tier.Key, Tier.Fast | Cluster | Process)]: " + string.Join(", ", untiered));
    }

    [Fact]
    public void Every_class_runs_in_its_tiers_collection_so_only_child_process_work_overlaps_the_in_process_tiers()
    {
        var stray = typeof(TierSpec).Assembly.GetTypes()
            .Select(t => (Type: t, Tier: TierOf(t)))
            .Where(x => x.Tier is not null)
            .Where(x => x.Type.GetCustomAttributesData().SingleOrDefault(a => a.AttributeType == typeof(CollectionAttribute))?.ConstructorArguments[0].Value as string
                is not { } c || !(c == Tier.InProcess || (c == Tier.Process && x.Tier == Tier.Process)))
            .Select(x => x.Type.Name).Order().ToList();
        // A process class whose own process trains (a federation hosted in the test) belongs to the in-process collection.
        Assert.True(stray.Count == 0, "without [Collection(Tier.InProcess)], or [Collection(Tier.Process)] for a process class: " + string.Join(", ", stray));
    }

    static string? TierOf(Type t) =>
        t.GetCustomAttributesData().Where(a => a.AttributeType == typeof(TraitAttribute) && (string?)a.ConstructorArguments[0].Value == Tier.Key)
            .Select(a => (string?)a.ConstructorArguments[1].Value).FirstOrDefault();

    static bool HasTier(Type t) => TierOf(t) is Tier.Fast or Tier.Cluster or Tier.Process;
}
