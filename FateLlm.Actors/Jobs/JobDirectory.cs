using Akka.Actor;
using Akka.Persistence.Query;
using Akka.Persistence.Sql.Query;
using Akka.Streams;
using Akka.Streams.Dsl;

namespace FateLlm.Actors.Jobs;

/// <summary>Asks an arbiter which jobs its journal holds.</summary>
public sealed record ListJobs : IControlMessage;

/// <param name="JobIds">Every job with at least one persisted event, in ordinal order (a job only ever queried is none).</param>
public sealed record JobList(string[] JobIds, string? Problem) : IControlMessage;

/// <summary>
/// The jobs an arbiter's journal holds, read from the journal itself (its persistence ids), so a listing shows every job
/// ever submitted there — finished and passivated ones included — and never an id that was only queried or refused.
/// With a shared journal every arbiter answers the same; with one journal each, the client unions the answers.
/// </summary>
public sealed class JobDirectory : ReceiveActor
{
    public const string Name = "job-directory";
    const string Prefix = "job-";

    public JobDirectory()
    {
        var materializer = Context.System.Materializer();
        ReceiveAsync<ListJobs>(async _ =>
        {
            var replyTo = Sender;
            try
            {
                var journal = PersistenceQuery.Get(Context.System).ReadJournalFor<SqlReadJournal>(SqlReadJournal.Identifier);
                var ids = await journal.CurrentPersistenceIds().Where(id => id.StartsWith(Prefix, StringComparison.Ordinal))
                    .Select(id => id[Prefix.Length..]).RunWith(Sink.Seq<string>(), materializer);
                replyTo.Tell(new JobList(ids.Distinct().Order(StringComparer.Ordinal).ToArray(), null));
            }
            catch (Exception e)
            {
                replyTo.Tell(new JobList([], $"the journal could not be read: {e.GetBaseException().Message}"));
            }
        });
    }

    public static Props Props() => Akka.Actor.Props.Create(() => new JobDirectory());
}
