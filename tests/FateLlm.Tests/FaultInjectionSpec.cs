using Akka.Configuration;
using FateLlm.Actors.Faults;
using Xunit;

namespace FateLlm.Tests;

/// <summary>Fault points are a closed set: a misspelt point or field is refused when the node's config is loaded, not silently never fired.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public sealed class FaultInjectionSpec
{
    static FaultInjection Load(string points) => FaultInjection.FromConfig(ConfigurationFactory.ParseString($"fate-llm.fault-injection.points = [{points}]"));

    [Fact]
    public void Every_documented_point_loads_with_its_fields()
    {
        var loaded = Load(string.Join(", ", FaultPoints.All.Select(p => $"{{ at = {p}, org = food, job = j, round = 2, phase = 1, action = terminate, times = 3 }}")));
        Assert.Equal(FaultPoints.All, loaded.Points.Select(p => p.At));
        Assert.All(loaded.Points, p => Assert.Equal(("food", "j", 2, 1, FaultAction.Terminate, 3), (p.Org, p.Job, p.Round, p.Phase, p.Action, p.Times)));
    }

    [Theory]
    [InlineData("{ at = party.fitt }", "fate-llm.fault-injection.points[0].at: 'party.fitt' is not a fault point (did you mean 'party.fit'?")]
    [InlineData("{ at = round.colected, round = 1 }", "did you mean 'round.collected'?")]
    [InlineData("{ at = party.fit, rounds = 2 }", "fate-llm.fault-injection.points[0].rounds is not a field of a fault point (did you mean 'round'?)")]
    [InlineData("{ at = party.fit, round = two }", "fate-llm.fault-injection.points[0].round = 'two' is not a whole number ≥ 0")]
    [InlineData("{ at = party.fit, action = explode }", "fate-llm.fault-injection.points[0].action 'explode' is not throw or terminate")]
    [InlineData("{ org = food }", "fate-llm.fault-injection.points[0].at is required")]
    public void A_misspelt_or_malformed_point_is_refused_naming_the_entry_and_the_nearest_known_name(string point, string message)
    {
        var e = Assert.Throws<ConfigurationException>(() => Load(point));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void A_point_built_in_code_is_checked_as_well()
    {
        var e = Assert.Throws<ArgumentException>(() => new FaultInjection([new FaultPoint("party.unmsk", "", 0, 0, FaultAction.Throw, 1)]));
        Assert.Contains("did you mean 'party.unmask'?", e.Message);
    }
}
