using System.Text.Json;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Data;
using FateLlm.Training.Federation;

namespace FateLlm.Tests.Plugins;

/// <summary>
/// A spec-only plug-in that proves the seam: no model, no tensors, two exchanges per round. Exchange 1 ("count"):
/// each party sends how many responses it holds and the sum of their lengths; the arbiter computes the federation's
/// mean. Exchange 2 ("spread"): the arbiter broadcasts the mean, each party sends the sum of squared deviations from
/// it; the arbiter computes the variance. Parties reveal only sums. Its own block: <c>unit = chars | words</c>.
/// </summary>
public sealed class ResponseStatistics : IFederatedAlgorithm
{
    public const string AlgorithmName = "response-stats";
    public const string Result = "stats";

    public string Name => AlgorithmName;
    public bool Summable => false;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new JsonCodec();

    public void Validate(JobSpec spec)
    {
        var settings = spec.Algorithm.Read();
        settings.RefuseUnknown(["unit"]);
        var unit = settings.GetString("unit");
        if (unit is not ("chars" or "words")) throw new JobSpecException($"job.algorithm.unit: '{unit}' is not chars or words");
    }

    /// <summary>What a party sends: in exchange 1 the count and sum, in exchange 2 the count and the squared deviations.</summary>
    public sealed record PartySums(long N, double Sum);

    /// <summary>The state after a round: the federation's statistics and who they cover.</summary>
    public sealed record Statistics(long N, double Mean, double Variance, string[] MeanOver, string[] VarianceOver);

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx) => new(ctx.Spec, new AlgorithmState(new Dictionary<string, string>()));

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state) =>
            Exchange.Broadcast("count", ctx.Participants, PartyInstruction.Of(new Dictionary<string, string>()));

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            var sums = result.Updates.ToDictionary(u => u.Party, u => (PartySums)u.Parsed!);
            if (result.Exchange.Name == "count")
            {
                var n = sums.Values.Sum(s => s.N);
                var mean = sums.Values.Sum(s => s.Sum) / n;
                // The mean travels as a download: exchanges carry artifacts, and the arbiter's store keeps what it broadcast.
                var meanDigest = ctx.Store.Put(JsonSerializer.SerializeToUtf8Bytes(new Statistics(n, mean, 0, sums.Keys.Order().ToArray(), [])));
                var next = Exchange.Broadcast("spread", sums.Keys, PartyInstruction.Of(new Dictionary<string, string> { ["mean"] = meanDigest }));
                return new StepResult(state.With("mean", meanDigest), next) { Metrics = new Dictionary<string, double> { ["stats.mean"] = mean } };
            }
            var partial = JsonSerializer.Deserialize<Statistics>(ctx.Store.Read(state.Get("mean")))!;
            var variance = sums.Values.Sum(s => s.Sum) / sums.Values.Sum(s => s.N);
            var stats = partial with { Variance = variance, VarianceOver = sums.Keys.Order().ToArray() };
            return new StepResult(state.With(Result, ctx.Store.Put(JsonSerializer.SerializeToUtf8Bytes(stats))), Next: null)
            {
                Metrics = new Dictionary<string, double> { ["stats.mean"] = stats.Mean, ["stats.variance"] = variance },
            };
        }

        public PartyInstruction? Evaluation(ServerContext ctx, AlgorithmState state) => null;

        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir) =>
            File.WriteAllBytes(Path.Combine(outputDir, "stats.json"), ctx.Store.Read(state.Get(Result)));
    }

    sealed class ClientSide : IClientAlgorithm
    {
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var lengths = Lengths(ctx.Spec, ctx.TrainData);
            double sum = exchange == "count" ? lengths.Sum() : Squares(lengths, JsonSerializer.Deserialize<Statistics>(File.ReadAllBytes(files["mean"]))!.Mean);
            return new ClientUpdate(JsonSerializer.SerializeToUtf8Bytes(new PartySums(lengths.Count, sum)), lengths.Count, new Dictionary<string, double>());
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct) =>
            throw new InvalidOperationException("response-stats has no party evaluation");
    }

    static double Squares(IEnumerable<double> xs, double mean) => xs.Sum(x => (x - mean) * (x - mean));

    public static List<double> Lengths(JobSpec spec, string data)
    {
        var words = spec.Algorithm.Read().GetString("unit") == "words";
        return InstructionData.ReadJsonl(data, spec.Data)
            .Select(e => (double)(words ? e.Response.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length : e.Response.Length)).ToList();
    }

    /// <summary>Parses and bounds what a party sent: a JSON object with a non-negative count and a finite sum.</summary>
    sealed class JsonCodec : IUpdateCodec
    {
        public long MaxBytes(Exchange exchange, UpdateLimits limits) => Math.Min(limits.MaxBytes, 4096);

        public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
        {
            PartySums? sums;
            try { sums = JsonSerializer.Deserialize<PartySums>(update); }
            catch (JsonException e) { return UpdateCheck.Refused($"not a JSON count and sum ({e.Message})"); }
            if (sums is null || sums.N < 0 || !double.IsFinite(sums.Sum) || sums.Sum < 0) return UpdateCheck.Refused("count must be ≥ 0 and the sum finite and ≥ 0");
            return UpdateCheck.Accepted(sums);
        }
    }
}
