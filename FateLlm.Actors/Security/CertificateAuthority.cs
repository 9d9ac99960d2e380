using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;

namespace FateLlm.Actors.Security;

/// <summary>Raised for missing or unusable certificate material; the message names the file.</summary>
public sealed class TlsConfigurationException(string message) : Exception(message);

/// <summary>
/// The federation's own certificate authority: a self-signed CA whose key stays with the federation operator, and
/// per-organization node certificates whose common name is the organization id. That name is what a node's peers
/// check its claimed organization against. Files: <c>ca.pfx</c> (CA with key), <c>ca.crt</c> (PEM, public),
/// <c>node.pfx</c> (node certificate with key), written without a password so file permissions protect them.
/// </summary>
public static class CertificateAuthority
{
    public const string CaKeyFile = "ca.pfx", CaCertFile = "ca.crt", NodeFile = "node.pfx";
    const string OrgOu = "FateLlm organization";

    public static void InitCa(string dir, string name = "FateLlm federation CA", int years = 5)
    {
        Directory.CreateDirectory(dir);
        var keyPath = Path.Combine(dir, CaKeyFile);
        if (File.Exists(keyPath)) throw new TlsConfigurationException($"{keyPath}: a CA already exists here; refusing to overwrite it");
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest(new X500DistinguishedName($"CN={name}"), key, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        req.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(req.PublicKey, false));
        using var ca = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddYears(years));
        File.WriteAllBytes(keyPath, ca.Export(X509ContentType.Pfx));
        File.WriteAllText(Path.Combine(dir, CaCertFile), ca.ExportCertificatePem());
        Restrict(keyPath);
    }

    /// <summary>Issues a node certificate for <paramref name="org"/> (CN = org; server and client auth) into <paramref name="outDir"/>, with the CA's public certificate beside it.</summary>
    public static X509Certificate2 Issue(string caDir, string org, string outDir, int days = 365)
    {
        if (!Regex.IsMatch(org, "^[A-Za-z0-9_-]+$")) throw new TlsConfigurationException($"--org '{org}' may use letters, digits, '-' and '_' only");
        var caPath = Path.Combine(caDir, CaKeyFile);
        if (!File.Exists(caPath)) throw new TlsConfigurationException($"{caPath}: no CA here (run 'fate-llm certs init-ca --out {caDir}' first)");
        using var ca = X509CertificateLoader.LoadPkcs12FromFile(caPath, null);
        if (!ca.HasPrivateKey) throw new TlsConfigurationException($"{caPath}: the CA file has no private key");
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest(new X500DistinguishedName($"CN={org}, OU={OrgOu}"), key, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(org);
        req.CertificateExtensions.Add(san.Build());
        var notAfter = DateTimeOffset.UtcNow.AddDays(days);
        if (notAfter > ca.NotAfter) notAfter = ca.NotAfter;
        using var signed = req.Create(ca, DateTimeOffset.UtcNow.AddMinutes(-5), notAfter, RandomNumberGenerator.GetBytes(16));
        var withKey = signed.CopyWithPrivateKey(key);
        Directory.CreateDirectory(outDir);
        var nodePath = Path.Combine(outDir, NodeFile);
        File.WriteAllBytes(nodePath, withKey.Export(X509ContentType.Pfx));
        File.WriteAllText(Path.Combine(outDir, CaCertFile), ca.ExportCertificatePem());
        Restrict(nodePath);
        return withKey;
    }

    /// <summary>The organization a node certificate speaks for (its common name).</summary>
    public static string? OrganizationOf(X509Certificate2 cert) => cert.GetNameInfo(X509NameType.SimpleName, false) is { Length: > 0 } cn ? cn : null;

    static void Restrict(string path)
    {
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }
}
