using System.Reflection;
using Xunit;

namespace FateLlm.Tests;

/// <summary>
/// The suite's tiers, one per test class: <c>fast</c> (no cluster: pure functions, single actors on TestKit, one local
/// actor system), <c>cluster</c> (an in-process federation) and <c>process</c> (real child processes or a browser).
/// A developer runs the fast tier with <c>dotnet test --filter tier=fast</c>. The cluster and the process tier are one
/// test collection each: xUnit runs a collection's classes one after another, so at most one in-process federation and
/// one set of child processes run at a time, beside fast classes (xunit.runner.json caps the threads at the cores).
/// </summary>
public static class Tier
{
    public const string Key = "tier", Fast = "fast", Cluster = "cluster", Process = "process";
}

[Trait(Tier.Key, Tier.Fast)]
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
    public void Cluster_and_process_classes_run_in_their_tier_collection_so_no_two_federations_of_a_tier_overlap()
    {
        var stray = typeof(TierSpec).Assembly.GetTypes()
            .Select(t => (Type: t, Tier: TierOf(t)))
            .Where(x => x.Tier is Tier.Cluster or Tier.Process)
            .Where(x => x.Type.GetCustomAttributesData().SingleOrDefault(a => a.AttributeType == typeof(CollectionAttribute))?.ConstructorArguments[0].Value as string != x.Tier)
            .Select(x => x.Type.Name).Order().ToList();
        Assert.True(stray.Count == 0, "without [Collection(Tier.Cluster | Tier.Process)] matching their tier: " + string.Join(", ", stray));
    }

    static string? TierOf(Type t) =>
        t.GetCustomAttributesData().Where(a => a.AttributeType == typeof(TraitAttribute) && (string?)a.ConstructorArguments[0].Value == Tier.Key)
            .Select(a => (string?)a.ConstructorArguments[1].Value).FirstOrDefault();

    static bool HasTier(Type t) =>
        t.GetCustomAttributesData().Where(a => a.AttributeType == typeof(TraitAttribute))
            .Any(a => (string?)a.ConstructorArguments[0].Value == Tier.Key && (string?)a.ConstructorArguments[1].Value is Tier.Fast or Tier.Cluster or Tier.Process);
}
