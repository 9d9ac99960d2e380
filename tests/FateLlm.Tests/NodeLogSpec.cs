using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.TestKit.Xunit2;
using FateLlm.Actors.Logging;
using Xunit;

namespace FateLlm.Tests;

[Trait(Tier.Key, Tier.Fast)]
[Collection(Tier.InProcess)]
public class NodeLogSpec : TestKit
{
    static readonly string File = Path.Combine(TestSupport.TempDir(), "node.log");

    public NodeLogSpec() : base(ConfigurationFactory.ParseString($$"""
        akka.loggers = ["FateLlm.Actors.Logging.NodeLog, FateLlm.Actors"]
        fate-llm.logging { file = "{{File.Replace("\\", "/")}}", console-level = off, verbose = off }
        """))
    {
    }

    [Fact]
    public void The_supervisor_echo_of_a_peer_disassociating_is_info_without_a_stack_trace_and_other_errors_keep_theirs()
    {
        // What Akka.Remote's endpoint supervisor logs when a peer goes away (a node that left gracefully included), after
        // the WARNING that gates the address, which stays as it is.
        var type = typeof(Akka.Remote.RemoteTransport).Assembly.GetType(NodeLog.Disassociated, throwOnError: true)!;
        Exception disassociated;
        try { throw (Exception)Activator.CreateInstance(type, "Disassociated")!; }
        catch (Exception e) { disassociated = e; }
        Sys.EventStream.Publish(new Error(disassociated, "endpoint-writer", typeof(NodeLogSpec), "Disassociated"));
        Sys.EventStream.Publish(new Error(new InvalidOperationException("the journal is gone"), "job", typeof(NodeLogSpec), "recovery failed"));

        AwaitAssert(() =>
        {
            var log = System.IO.File.ReadAllText(File);
            Assert.Contains("INFO    [endpoint-writer] Disassociated" + Environment.NewLine, log);
            Assert.DoesNotContain("ERROR   [endpoint-writer]", log);
            // Any other error keeps its level and its stack trace.
            Assert.Contains("ERROR   [job] recovery failed" + Environment.NewLine + "System.InvalidOperationException: the journal is gone", log);
        }, TimeSpan.FromSeconds(10));
    }
}
