using System.Collections.Concurrent;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport.DotNetty;

namespace FateLlm.Actors.Security;

/// <summary>
/// Which organization each cluster member has proved to be (by signing a challenge with its certificate's key),
/// written by <see cref="OrganizationGuard"/>, read by party placement.
/// </summary>
public sealed class PeerIdentities
{
    readonly ConcurrentDictionary<Address, string> _byAddress = new();

    public void Record(Address member, string org) => _byAddress[member] = org;

    public string? OrganizationOf(Address member) => _byAddress.TryGetValue(member, out var org) ? org : null;
}

/// <summary>
/// A node's TLS material (<c>node.pfx</c> and the federation's <c>ca.crt</c> from one folder) and the Akka.Remote
/// setup it implies: TLS on every connection, mutual authentication, and peers validated against the federation CA
/// only (never the system trust store). TLS proves a peer belongs to the federation; which organization a cluster
/// member is, is proved separately to <see cref="OrganizationGuard"/> and kept in <see cref="Identities"/>.
/// </summary>
public sealed class NodeTls
{
    public X509Certificate2 Certificate { get; }
    public X509Certificate2 Authority { get; }
    public string Organization { get; }
    public PeerIdentities Identities { get; } = new();

    NodeTls(X509Certificate2 certificate, X509Certificate2 authority, string org)
    {
        Certificate = certificate;
        Authority = authority;
        Organization = org;
    }

    public static NodeTls Load(string dir)
    {
        var nodePath = Path.Combine(dir, CertificateAuthority.NodeFile);
        var caPath = Path.Combine(dir, CertificateAuthority.CaCertFile);
        if (!File.Exists(nodePath)) throw new TlsConfigurationException($"{nodePath}: node certificate not found (create it with 'fate-llm certs issue')");
        if (!File.Exists(caPath)) throw new TlsConfigurationException($"{caPath}: federation CA certificate not found");
        X509Certificate2 cert, ca;
        try { cert = X509CertificateLoader.LoadPkcs12FromFile(nodePath, null, X509KeyStorageFlags.Exportable); }
        catch (CryptographicException e) { throw new TlsConfigurationException($"{nodePath}: not a readable PKCS#12 certificate ({e.Message})"); }
        try { ca = X509Certificate2.CreateFromPem(File.ReadAllText(caPath)); }
        catch (CryptographicException e) { throw new TlsConfigurationException($"{caPath}: not a PEM certificate ({e.Message})"); }
        if (!cert.HasPrivateKey) throw new TlsConfigurationException($"{nodePath}: the certificate has no private key");
        var tls = new NodeTls(cert, ca, CertificateAuthority.OrganizationOf(cert) ?? throw new TlsConfigurationException($"{nodePath}: the certificate names no organization"));
        if (!tls.IsFromFederation(cert, out var why)) throw new TlsConfigurationException($"{nodePath}: not issued by the CA in {caPath} ({why})");
        return tls;
    }

    public static readonly Config EnableSsl = ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.enable-ssl = true");

    /// <summary>Signs a challenge (nonce and the claimed address) with this node's certificate key.</summary>
    public byte[] Sign(byte[] nonce, string address)
    {
        using var key = Certificate.GetECDsaPrivateKey() ?? throw new TlsConfigurationException("the node certificate's key is not ECDSA");
        return key.SignData(Challenge(nonce, address), HashAlgorithmName.SHA256);
    }

    /// <summary>The organization a proof establishes: the certificate chains to our CA and signed this challenge; else null.</summary>
    public string? Verify(byte[] certificate, byte[] signature, byte[] nonce, string address, out string why)
    {
        X509Certificate2 cert;
        try { cert = X509CertificateLoader.LoadCertificate(certificate); }
        catch (CryptographicException e) { why = $"unreadable certificate ({e.Message})"; return null; }
        using (cert)
        {
            if (!IsFromFederation(cert, out why)) return null;
            using var key = cert.GetECDsaPublicKey();
            if (key is null || !key.VerifyData(Challenge(nonce, address), signature, HashAlgorithmName.SHA256))
            {
                why = "the signature does not match the certificate";
                return null;
            }
            return CertificateAuthority.OrganizationOf(cert);
        }
    }

    static byte[] Challenge(byte[] nonce, string address) => [.. nonce, .. System.Text.Encoding.UTF8.GetBytes("fate-llm identity|" + address)];

    public DotNettySslSetup Setup() => new(Certificate, suppressValidation: false, requireMutualAuthentication: true, validateCertificateHostname: false,
        customValidator: Validate);

    bool Validate(X509Certificate2? certificate, X509Chain? chain, string remotePeer, SslPolicyErrors errors, ILoggingAdapter log)
    {
        if (certificate is null)
        {
            log.Warning("TLS: peer {0} presented no certificate; refused", remotePeer);
            return false;
        }
        if (!IsFromFederation(certificate, out var why))
        {
            log.Warning("TLS: peer {0} presented '{1}', not issued by this federation's CA ({2}); refused", remotePeer, certificate.Subject, why);
            return false;
        }
        var org = CertificateAuthority.OrganizationOf(certificate);
        if (org is null)
        {
            log.Warning("TLS: peer {0} certificate names no organization; refused", remotePeer);
            return false;
        }
        return true;
    }

    /// <summary>Builds the chain against the federation CA alone; revocation is not checked (no CRL service in a federation).</summary>
    public bool IsFromFederation(X509Certificate2 cert, out string why)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(Authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        var ok = chain.Build(cert);
        why = ok ? "" : string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).DefaultIfEmpty("untrusted chain"));
        return ok;
    }
}
