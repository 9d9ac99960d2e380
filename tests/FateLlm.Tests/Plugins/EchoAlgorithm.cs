using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Tests.Plugins;

/// <summary>
/// An instant, fully scripted plug-in for actor specs. State: <c>total</c>, a number. Each round holds
/// <c>exchanges</c> exchanges (its own setting, default 1); in each, every party sends its <c>value</c> (the length of
/// its organization's name unless a parameter says otherwise) and the arbiter adds them to the total. A spec can hold a
/// party's fit at a gate, or make it throw, to make "the party is busy" and "the trainer crashes" deterministic. It can run
/// buffered: a flush adds each update's value times its staleness weight.
/// </summary>
public sealed class EchoAlgorithm : IFederatedAlgorithm
{
    public const string AlgorithmName = "echo";
    public const string Total = "total";

    public string Name => AlgorithmName;
    public bool Summable => true;
    public bool Buffered => true;
    public IServerAlgorithm Server { get; } = new ServerSide();
    public IClientAlgorithm Client { get; } = new ClientSide();
    public IUpdateCodec Codec { get; } = new NumberCodec();

    public void Validate(JobSpec spec) => spec.Algorithm.Read().RefuseUnknown(["exchanges"]);

    static readonly ConcurrentDictionary<string, SemaphoreSlim> Gates = new();
    static readonly ConcurrentDictionary<string, int> Failures = new();
    static readonly ConcurrentDictionary<string, int> Fits = new();
    static readonly ConcurrentDictionary<string, int> Cancelled = new();
    static readonly ConcurrentDictionary<string, string> FailingPlans = new();

    /// <summary>The party's next fits wait until <see cref="Release"/> (or their cancellation).</summary>
    public static void Hold(string party) => Gates[party] = new SemaphoreSlim(0);
    public static void Release(string party) { if (Gates.TryRemove(party, out var g)) g.Release(int.MaxValue / 2); }
    /// <summary>The party's next <paramref name="times"/> fits throw.</summary>
    public static void Fail(string party, int times) => Failures[party] = times;
    public static int FitsOf(string party) => Fits.GetValueOrDefault(party);
    /// <summary>How many of the party's fits were cancelled while held at the gate.</summary>
    public static int CancelledOf(string party) => Cancelled.GetValueOrDefault(party);
    /// <summary>The job's final evaluation cannot be planned: the server side throws with <paramref name="reason"/>.</summary>
    public static void FailEvaluationPlan(string job, string reason) => FailingPlans[job] = reason;

    public static double Read(byte[] bytes) => double.Parse(Encoding.UTF8.GetString(bytes), CultureInfo.InvariantCulture);
    public static byte[] Write(double value) => Encoding.UTF8.GetBytes(value.ToString("R", CultureInfo.InvariantCulture));

    sealed class ServerSide : IServerAlgorithm
    {
        public Preparation Prepare(ServerContext ctx) => new(ctx.Spec, AlgorithmState.Of((Total, ctx.Store.Put(Write(0)))));

        static Exchange Ask(string name, IEnumerable<string> parties, string total) =>
            Exchange.Broadcast(name, parties, PartyInstruction.Of(new Dictionary<string, string> { [Total] = total }));

        public Exchange BeginRound(RoundContext ctx, AlgorithmState state) => Ask("e1", ctx.Participants, state.Get(Total));

        public StepResult Step(RoundContext ctx, AlgorithmState state, ExchangeResult result)
        {
            // Each value counts its weight (a buffered update's staleness weight; 1 in synchronous rounds).
            var total = Read(ctx.Store.Read(state.Get(Total))) + result.Updates.Sum(u => u.Weight * (double)u.Parsed!);
            var next = state.With(Total, ctx.Store.Put(Write(total)));
            var exchanges = ctx.Spec.Algorithm.Read().GetInt("exchanges");
            return result.Phase < exchanges
                ? new StepResult(next, Ask($"e{result.Phase + 1}", result.Updates.Select(u => u.Party), next.Get(Total)))
                : new StepResult(next, null) { Metrics = new Dictionary<string, double> { ["echo.total"] = total } };
        }

        public PartyInstruction Evaluation(ServerContext ctx, AlgorithmState state) =>
            FailingPlans.TryGetValue(ctx.Spec.JobId, out var reason) ? throw new InvalidOperationException(reason)
                : PartyInstruction.Of(new Dictionary<string, string> { [Total] = state.Get(Total) });

        public void Finalize(ServerContext ctx, AlgorithmState state, string outputDir) =>
            File.WriteAllBytes(Path.Combine(outputDir, "total.txt"), ctx.Store.Read(state.Get(Total)));
    }

    sealed class ClientSide : IClientAlgorithm
    {
        public ClientUpdate Fit(ClientContext ctx, string exchange, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            Fits.AddOrUpdate(ctx.Party, 1, (_, n) => n + 1);
            if (Gates.TryGetValue(ctx.Party, out var gate))
            {
                try { gate.Wait(ct); }
                catch (OperationCanceledException)
                {
                    Cancelled.AddOrUpdate(ctx.Party, 1, (_, n) => n + 1);
                    throw;
                }
            }
            ct.ThrowIfCancellationRequested();
            if (Failures.TryGetValue(ctx.Party, out var left) && left > 0)
            {
                Failures[ctx.Party] = left - 1;
                throw new InvalidOperationException($"scripted failure of {ctx.Party}");
            }
            var value = instruction.Parameters.TryGetValue("value", out var v) ? double.Parse(v, CultureInfo.InvariantCulture) : ctx.Party.Length;
            _ = Read(File.ReadAllBytes(files[Total])); // a party reads what it was sent
            return new ClientUpdate(Write(value), 1, new Dictionary<string, double> { [ClientUpdate.FirstLoss] = value, [ClientUpdate.LastLoss] = value });
        }

        public EvaluationResult Evaluate(ClientContext ctx, PartyInstruction instruction, IReadOnlyDictionary<string, string> files, CancellationToken ct)
        {
            var total = Read(File.ReadAllBytes(files[Total]));
            return new EvaluationResult(total, Math.Exp(total), null, null, null, null, 1);
        }
    }

    sealed class NumberCodec : IUpdateCodec
    {
        public UpdateCheck Check(UpdateCheckContext ctx, byte[] update)
        {
            try
            {
                var v = Read(update);
                return double.IsFinite(v) ? UpdateCheck.Accepted(v) : UpdateCheck.Refused("not a finite number");
            }
            catch (FormatException) { return UpdateCheck.Refused("not a number"); }
        }
    }
}
