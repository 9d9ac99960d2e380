using System.Diagnostics;
using System.Security.Cryptography;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using FateLlm.Actors.Security;
using FateLlm.Actors.Transfer;
using FateLlm.Training.Evaluation;
using FateLlm.Training.Inference;
using FateLlm.Training.IO;
using FateLlm.Training.Runtime;

namespace FateLlm.Actors.Services;

/// <summary>A model a node serves (<c>--serve NAME=MODEL_DIR</c>), and to whom ("*": every organization of the federation).</summary>
public sealed record ServedModelOptions(string Name, string ModelDir, IReadOnlySet<string> Allowed)
{
    public bool Allows(string org) => Allowed.Contains("*") || Allowed.Contains(org);
}

public sealed record ModelServiceSettings(ServedModelOptions Model, BlobStore Store, IActorRef BlobServer)
{
    public int QueueCapacity { get; init; } = 8;
    public int MaxPrompts { get; init; } = 64;
    public int MaxPromptChars { get; init; } = 4000;
    public int MaxNewTokens { get; init; } = 256;
    public int BatchSize { get; init; } = 8;
    public int Threads { get; init; } = 2;
    public KitCoverage KitCoverage { get; init; } = KitCoverage.All;
    /// <summary>Under TLS every request must carry a proof of its organization signed with a federation certificate.</summary>
    public NodeTls? Tls { get; init; }
    /// <summary>Specs hold the work here to see the queue fill; null in production.</summary>
    public Func<Task>? WorkGate { get; init; }

    public static ModelServiceSettings FromConfig(Config c, ServedModelOptions model, BlobStore store, IActorRef blobServer, NodeTls? tls) => new(model, store, blobServer)
    {
        QueueCapacity = c.GetInt("fate-llm.services.queue-capacity"),
        MaxPrompts = c.GetInt("fate-llm.services.max-prompts"),
        MaxPromptChars = c.GetInt("fate-llm.services.max-prompt-chars"),
        MaxNewTokens = c.GetInt("fate-llm.services.max-new-tokens"),
        BatchSize = c.GetInt("fate-llm.services.batch-size"),
        Threads = c.GetInt("fate-llm.services.threads"),
        KitCoverage = Enum.Parse<KitCoverage>(c.GetString("fate-llm.services.kit-coverage"), ignoreCase: true),
        Tls = tls,
    };
}

/// <summary>
/// Serves one model to authorised organizations over the cluster: generation for prompts, and the model's InferDPT
/// perturbation kit (built once, served as a blob). Idle or serving: one piece of work runs at a time, off the actor
/// thread; requests wait in a bounded queue, and one that finds it full is refused at once (back-pressure the caller
/// sees), as is a caller that is not allowed or cannot prove its organization under TLS, or a request out of bounds.
/// </summary>
public sealed class ModelService : ReceiveActor
{
    public static string RoleOf(string org, string service) => $"service-{org}.{service}";
    public static string ActorName(string service) => "service-" + service;

    readonly ModelServiceSettings _s;
    readonly ILoggingAdapter _log = Context.GetLogger();
    readonly Queue<(IServiceRequest Request, IActorRef ReplyTo)> _queue = new();
    ServedModel? _model;
    KitReply? _kit;
    IDisposable? _queueGauge;
    /// <summary>The queue's length for the metrics gauge, read from the exporter's thread.</summary>
    volatile int _waiting;

    sealed record WorkDone(IServiceRequest Request, IActorRef ReplyTo, object Answer);

    public ModelService(ModelServiceSettings settings)
    {
        _s = settings;
        Idle();
    }

    string Name => _s.Model.Name;

    void Idle()
    {
        Receive<IServiceRequest>(r => { if (Admit(r)) StartNext(); });
    }

    void Serving()
    {
        Receive<IServiceRequest>(r => Admit(r));
        Receive<WorkDone>(d =>
        {
            if (d.Answer is KitReply k) _kit = k;
            d.ReplyTo.Tell(d.Answer);
            if (_queue.Count > 0) StartNext();
            else Become(Idle);
        });
    }

    /// <summary>Refuses what may not or cannot be served, else queues it; true when queued.</summary>
    bool Admit(IServiceRequest r)
    {
        var refusal = Authorize(r) ?? Check(r);
        if (refusal is null && _queue.Count >= _s.QueueCapacity)
            refusal = (RefusalKind.Overloaded, $"service '{Name}' is busy: {_queue.Count} requests already wait (queue capacity {_s.QueueCapacity}); retry later");
        if (refusal is { } why)
        {
            _log.Info("service {0}: refused {1} of {2} ({3})", Name, r.RequestId, r.Org, why.Reason);
            Sender.Tell(new ServiceRefused(r.RequestId, Name, why.Kind, why.Reason));
            return false;
        }
        _queue.Enqueue((r, Sender));
        _waiting = _queue.Count;
        return true;
    }

    (RefusalKind Kind, string Reason)? Authorize(IServiceRequest r)
    {
        if (r.Service != Name) return (RefusalKind.BadRequest, $"this is service '{Name}', not '{r.Service}'");
        if (_s.Tls is { } tls)
        {
            if (r.Proof is not { } proof) return (RefusalKind.NotAllowed, $"organization '{r.Org}' sent no proof of its identity (this federation runs TLS)");
            var org = tls.Verify(proof.Certificate, proof.Signature, SHA256.HashData(r.Content()), ProofLabel(Name), out var why);
            if (org is null) return (RefusalKind.NotAllowed, $"the proof of organization '{r.Org}' does not hold: {why}");
            if (org != r.Org) return (RefusalKind.NotAllowed, $"the request claims organization '{r.Org}' but its certificate is for '{org}'");
        }
        return _s.Model.Allows(r.Org) ? null : (RefusalKind.NotAllowed, $"organization '{r.Org}' is not allowed to use service '{Name}'");
    }

    (RefusalKind, string)? Check(IServiceRequest r)
    {
        if (r is not GenerateRequest g) return null;
        if (g.Prompts.Length is 0 || g.Prompts.Length > _s.MaxPrompts) return (RefusalKind.BadRequest, $"{g.Prompts.Length} prompts; between 1 and {_s.MaxPrompts} per request");
        var longest = g.Prompts.Select((p, i) => (p.Length, i)).Max();
        if (longest.Length > _s.MaxPromptChars) return (RefusalKind.BadRequest, $"prompt {longest.i + 1} has {longest.Length} characters; at most {_s.MaxPromptChars}");
        if (g.MaxNewTokens < 1 || g.MaxNewTokens > _s.MaxNewTokens) return (RefusalKind.BadRequest, $"max-new-tokens = {g.MaxNewTokens}; between 1 and {_s.MaxNewTokens}");
        if (!double.IsFinite(g.Temperature) || g.Temperature < 0) return (RefusalKind.BadRequest, $"temperature = {g.Temperature} must be finite and ≥ 0");
        return null;
    }

    /// <summary>What a caller signs: the request's digest under a label naming the service.</summary>
    public static string ProofLabel(string service) => "model-service:" + service;

    public static OrganizationProof Prove(NodeTls tls, IServiceRequest r) =>
        new(tls.Certificate.RawData, tls.Sign(SHA256.HashData(r.Content()), ProofLabel(r.Service)));

    void StartNext()
    {
        var (request, replyTo) = _queue.Dequeue();
        _waiting = _queue.Count;
        Become(Serving);
        if (request is KitRequest && _kit is { } cached)
        {
            Self.Tell(new WorkDone(request, replyTo, cached with { RequestId = request.RequestId }));
            return;
        }
        var (s, log) = (_s, _log);
        Task.Run(async () =>
        {
            if (s.WorkGate is { } gate) await gate();
            return Serve(request, s, log);
        }).PipeTo(Self, success: answer => new WorkDone(request, replyTo, answer),
            failure: e => new WorkDone(request, replyTo, new ServiceRefused(request.RequestId, Name, RefusalKind.Failed, e.GetBaseException().Message)));
    }

    /// <summary>Runs on a pool thread, one at a time: the model is loaded on first use and kept.</summary>
    object Serve(IServiceRequest request, ModelServiceSettings s, ILoggingAdapter log)
    {
        TorchRuntime.SetThreads(s.Threads);
        var clock = Stopwatch.StartNew();
        if (request is KitRequest)
        {
            var kit = PerturbationKit.Build(s.Model.ModelDir, s.KitCoverage);
            var bytes = kit.ToBytes();
            var digest = s.Store.Put(bytes);
            log.Info("service {0}: perturbation kit built ({1} tokens, {2} covered, {3:N0} bytes) in {4:F1} s", s.Model.Name, kit.Vocabulary,
                kit.Covered.Count(c => c), bytes.Length, clock.Elapsed.TotalSeconds);
            return new KitReply(request.RequestId, new BlobLocation(digest, bytes.Length, s.BlobServer), kit.ModelDigest);
        }
        var g = (GenerateRequest)request;
        _model ??= ServedModel.Open(s.Model.ModelDir);
        var answers = _model.Generate(g.Prompts, new SamplingOptions { MaxNewTokens = g.MaxNewTokens, Temperature = g.Temperature, Seed = g.Seed }, s.BatchSize);
        log.Info("service {0}: answered {1} prompts of {2} in {3:F1} s", s.Model.Name, g.Prompts.Length, g.Org, clock.Elapsed.TotalSeconds);
        return new GenerateReply(g.RequestId, answers, clock.Elapsed.TotalSeconds);
    }

    protected override void PreStart() => _queueGauge = Telemetry.FederationMetrics.TrackQueue(Name, () => _waiting);

    protected override void PostStop()
    {
        _queueGauge?.Dispose();
        _model?.Dispose();
    }

    public static Props Props(ModelServiceSettings settings) => Akka.Actor.Props.Create(() => new ModelService(settings));
}
