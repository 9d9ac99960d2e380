using System.CommandLine;
using FateLlm.Actors.Security;
using static FateLlm.Host.Cli.CliApp;

namespace FateLlm.Host.Cli;

/// <summary>certs init-ca / certs issue: the federation's own certificate authority for mutual TLS.</summary>
internal static class CertCommands
{
    public static Command Build(Terminal t)
    {
        var certs = new Command("certs", "Create the federation CA and issue node certificates for --tls");
        var caOut = Required<string>("--out", "Folder for ca.pfx (keep private) and ca.crt");
        var caName = Opt("--name", "CA common name", "FateLlm federation CA");
        var init = new Command("init-ca", "Create a federation certificate authority");
        init.With(p =>
        {
            var dir = p.GetValue(caOut)!;
            CertificateAuthority.InitCa(dir, p.GetValue(caName)!);
            t.Out.WriteLine($"CA created: {Path.Combine(dir, CertificateAuthority.CaKeyFile)} (private: keep it off the nodes), {Path.Combine(dir, CertificateAuthority.CaCertFile)}");
        }, caOut, caName);

        var ca = Required<string>("--ca", "The CA folder made by init-ca");
        var org = Required<string>("--org", "Organization id the certificate speaks for (operator nodes: 'operator')");
        var outDir = Required<string>("--out", "Folder for node.pfx and ca.crt: pass it to the node as --tls");
        var days = Opt("--days", "Validity in days", 365);
        var issue = new Command("issue", "Issue a node certificate for an organization");
        issue.With(p =>
        {
            if (p.GetValue(days) < 1) throw new UsageException("--days must be ≥ 1");
            using var cert = CertificateAuthority.Issue(p.GetValue(ca)!, p.GetValue(org)!, p.GetValue(outDir)!, p.GetValue(days));
            t.Out.WriteLine($"issued {cert.Subject}, valid until {cert.NotAfter:yyyy-MM-dd}, into {p.GetValue(outDir)} (start the node with --tls {p.GetValue(outDir)})");
        }, ca, org, outDir, days);
        certs.Subcommands.Add(init);
        certs.Subcommands.Add(issue);
        return certs;
    }
}
