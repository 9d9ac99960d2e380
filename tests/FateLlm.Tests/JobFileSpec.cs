using Akka.Configuration;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Aggregation;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;
using FateLlm.Training.Peft;
using FateLlm.Training.Privacy;
using Xunit;

namespace FateLlm.Tests;

/// <summary>The typed job specification: one place for defaults, values exactly as written, the algorithm block.</summary>
[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class JobFileSpec
{
    static JobSpec Parse(string job) => JobFile.FromConfig(ConfigurationFactory.ParseString(job), "job.conf", TestSupport.TempDir(), AlgorithmCatalog.BuiltIn);

    const string Minimal = "job { model = m, parties = [{ org = a }, { org = b }, { org = c }]\n";

    [Fact]
    public void The_reference_job_defaults_agree_with_the_library_defaults_of_every_typed_section()
    {
        var spec = Parse(Minimal + "}");
        var peft = new PeftConfig();
        Assert.Equal((peft.Method, peft.LoraR, peft.LoraAlpha, peft.LoraDropout, peft.NumVirtualTokens, peft.PrefixProjection),
            (spec.Peft.Method, spec.Peft.LoraR, spec.Peft.LoraAlpha, spec.Peft.LoraDropout, spec.Peft.NumVirtualTokens, spec.Peft.PrefixProjection));
        Assert.Empty(spec.Peft.LoraTargets);
        Assert.Equal(peft.BaseDtype, spec.Peft.BaseDtype);
        Assert.Equal(new DataOptions(), spec.Data);
        Assert.Equal(new ServerOptimizerOptions(), spec.Aggregation.Server);
        Assert.Equal(new DpOptions(), spec.Dp);
        Assert.Equal("{prompt}\n", spec.Data.Template);
        Assert.Equal(3, spec.Round.Quorum); // quorum = all
        Assert.Equal("homo-peft", spec.Algorithm.Name);
        Assert.Empty(spec.Algorithm.Settings);
    }

    [Fact]
    public void A_bf16_base_is_carried_by_the_job_and_a_wrong_dtype_names_the_field()
    {
        var spec = Parse(Minimal + "peft { base-dtype = bf16 } }");
        Assert.Equal(TorchSharp.torch.ScalarType.BFloat16, spec.Peft.BaseDtype);
        Assert.Equal(TorchSharp.torch.ScalarType.BFloat16, JobSpec.FromJson(spec.ToJson(), "round trip").Peft.BaseDtype);
        var e = Assert.ThrowsAny<Exception>(() => Parse(Minimal + "peft { base-dtype = fp8 } }"));
        Assert.Contains("peft.base-dtype", e.Message);
        Assert.Contains("fp8", e.Message);
    }

    [Fact]
    public void Parties_written_side_by_side_without_a_comma_are_refused_not_merged_into_one()
    {
        // HOCON reads `{ org = a } { org = b }` on one line as one object (b over a): a job would silently lose party a.
        const string text = "job {\n  model = m\n  parties = [ { org = a, data = train } { org = b, data = train } ]\n}\n";
        var e = Assert.Throws<JobSpecException>(() => JobFile.Parse(text, "side.conf", TestSupport.TempDir()));
        Assert.StartsWith("side.conf:3:", e.Message);
        Assert.Contains("two objects side by side in a list are merged into one", e.Message);
        Assert.Equal(["a", "b"], JobFile.Parse(text.Replace("} {", "}, {"), "side.conf", TestSupport.TempDir()).Parties.Select(p => p.Org));
    }

    [Fact]
    public void Values_reach_the_job_exactly_as_written_escapes_and_trailing_newlines_included()
    {
        var spec = Parse(Minimal + """
              data { template = "Q: {prompt}\n\tA:\n", prompt-column = " spaced " }
            }
            """);
        Assert.Equal("Q: {prompt}\n\tA:\n", spec.Data.Template);
        var back = JobSpec.FromJson(spec.ToJson(), "round trip");
        Assert.Equal("Q: {prompt}\n\tA:\n", back.Data.Template);
    }

    [Fact]
    public void The_algorithm_block_is_flattened_over_its_reference_defaults_and_sampling_and_quorum_follow_the_cohort()
    {
        var spec = Parse(Minimal + """
              algorithm { name = homo-peft }
              sampling { count = 2 }
            }
            """);
        Assert.Equal(2, spec.CohortSize);
        Assert.Equal(2, spec.Round.Quorum);
        Assert.Equal(PartySelection.Sample(spec, 4, 1), PartySelection.Sample(spec, 4, 1)); // reproducible
        var draws = Enumerable.Range(1, 30).Select(r => string.Join(",", PartySelection.Sample(spec, r, 1))).ToHashSet();
        Assert.True(draws.Count > 1, "rounds draw different samples");
        Assert.All(Enumerable.Range(1, 30), r => Assert.Equal(2, PartySelection.Sample(spec, r, 1).Count));
        var flat = JobFile.FromConfig(ConfigurationFactory.ParseString(Minimal + "algorithm { name = homo-peft, extra { depth = 3, names = [x, y] } } }"), "job.conf",
            TestSupport.TempDir(), algorithms: null).Algorithm.Settings;
        Assert.Equal("3", flat["extra.depth"]);
        Assert.Equal("[\"x\",\"y\"]", flat["extra.names"]);
        var e = Assert.Throws<JobSpecException>(() => Parse(Minimal + "algorithm { name = homo-peft, extra = 1 } }"));
        Assert.Equal("job.conf: job.algorithm.extra is not a setting of algorithm 'homo-peft' (it takes none)", e.Message);
    }

    [Fact]
    public void Dp_population_is_refused_because_rounds_now_sample_parties_for_real()
    {
        var e = Assert.Throws<JobSpecException>(() => Parse(Minimal + "dp { mode = central, population = 1000 } }"));
        Assert.Contains("job.dp.population was removed", e.Message);
        Assert.Contains("job.sampling", e.Message);
        var q = Parse(Minimal + "sampling { fraction = 0.34 } }");
        Assert.Equal(2, q.CohortSize); // ⌈0.34 · 3⌉
    }
}
