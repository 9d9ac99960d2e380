using Npgsql;

namespace FateLlm.Actors.Nodes;

/// <summary>The <c>--journal</c> URL of a shared PostgreSQL journal, as Npgsql's connection string.</summary>
public static class JournalLocation
{
    /// <summary><c>postgres[ql]://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=require]</c>; anything else is refused naming the part.</summary>
    public static string PostgresConnectionString(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var u) || u.Scheme is not ("postgres" or "postgresql"))
            throw new ArgumentException($"--journal '{Redacted(url)}' must be postgres://USER:PASSWORD@HOST:PORT/DATABASE");
        var database = u.AbsolutePath.Trim('/');
        if (database.Length == 0 || database.Contains('/')) throw new ArgumentException($"--journal '{Redacted(url)}' names no database (…/DATABASE)");
        var userInfo = u.UserInfo.Split(':', 2);
        var user = Uri.UnescapeDataString(userInfo[0]);
        if (user.Length == 0) throw new ArgumentException($"--journal '{Redacted(url)}' names no user (USER@HOST)");
        var b = new NpgsqlConnectionStringBuilder
        {
            Host = u.Host, Port = u.IsDefaultPort || u.Port < 0 ? 5432 : u.Port, Database = Uri.UnescapeDataString(database), Username = user,
        };
        if (userInfo is [_, var password]) b.Password = Uri.UnescapeDataString(password);
        foreach (var pair in u.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var kv = pair.Split('=', 2);
            if (kv is not [var key, var value] || !string.Equals(key, "sslmode", StringComparison.OrdinalIgnoreCase) || !Enum.TryParse<SslMode>(value, true, out var ssl))
                throw new ArgumentException($"--journal: only ?sslmode=disable|prefer|require|verify-ca|verify-full is understood, not '{pair}'");
            b.SslMode = ssl;
        }
        return b.ConnectionString.Replace("\\", "\\\\").Replace("\"", "\\\""); // it goes into a quoted HOCON string
    }

    /// <summary>The URL with its password blanked, for messages and logs.</summary>
    public static string Redacted(string url) => System.Text.RegularExpressions.Regex.Replace(url, @"(://[^:/@]*:)[^@]*@", "$1***@");
}
