using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using FateLlm.Training.Models;

namespace FateLlm.Training.Ipr;

/// <summary>A site and how many signature bits it carries.</summary>
public sealed record SiteBits(int FromEnd, string Tail, long Length, int Bits)
{
    [JsonIgnore] public WatermarkSite Site => new(FromEnd, Tail, Length);
}

public sealed record TriggerPair(string Prompt, string Response);

/// <summary>
/// One party's FedIPR keys for one job. The 256-bit <see cref="Key"/> regenerates everything secret (projection
/// matrices E_b and target bits s_b, <see cref="KeyedNormal"/> streams 2b and 2b+1); the triggers are stored as text
/// so a verifier needs nothing but this file. It lives on the party's node only (files 0600), never in a checkpoint.
/// </summary>
public sealed record OwnershipKeys
{
    public const string FormatName = "fate-llm-ipr-keys/1";
    public string Format { get; init; } = FormatName;
    public required string Job { get; init; }
    public required string Party { get; init; }
    public required DateTime Created { get; init; }
    /// <summary>Hex of the 32-byte key.</summary>
    public required string Key { get; init; }
    public required SiteBits[] Sites { get; init; }
    public required double Margin { get; init; }
    /// <summary>The prompt template the triggers were trained with.</summary>
    public required string Template { get; init; }
    public required TriggerPair[] Triggers { get; init; }

    [JsonIgnore] public int TotalBits => Sites.Sum(s => s.Bits);
    public byte[] KeyBytes() => Convert.FromHexString(Key);

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>
    /// Keys for a party of a job: the key is HMAC-SHA256(party secret, "fate-llm/ipr/v1", job, party), never the job
    /// seed (FATE draws keys from a shared global RNG, so parties with the same torch seed got identical keys).
    /// </summary>
    public static OwnershipKeys Derive(byte[] partySecret, string job, string party, IReadOnlyList<WatermarkSite> sites, int bits, double margin,
        int triggers, string template)
    {
        var key = HMACSHA256.HashData(partySecret, Encoding.UTF8.GetBytes($"fate-llm/ipr/v1\0{job}\0{party}"));
        long total = sites.Sum(s => s.Length);
        // Bits split across sites in proportion to their length, the remainder to the last (FATE's rule).
        var split = sites.Select(s => (int)(s.Length * (long)bits / total)).ToArray();
        split[^1] += bits - split.Sum();
        for (int i = 0; i < sites.Count; i++)
            if (split[i] > sites[i].Length) throw new Federation.JobSpecException($"job.ipr.bits: site '{sites[i].Tail}' would carry {split[i]} bits in {sites[i].Length} scalars");
        return new OwnershipKeys
        {
            Job = job, Party = party, Created = DateTime.UtcNow, Key = Convert.ToHexString(key),
            Sites = sites.Select((s, i) => new SiteBits(s.FromEnd, s.Tail, s.Length, split[i])).ToArray(),
            Margin = margin, Template = template, Triggers = TriggerText.Make(key, triggers),
        };
    }

    public void Save(string path)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var tmp = path + ".tmp";
        PrivateFile.Write(tmp, JsonSerializer.SerializeToUtf8Bytes(this, Json));
        File.Move(tmp, path, overwrite: true);
    }

    public static OwnershipKeys Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: keys file not found", path);
        OwnershipKeys? k;
        try { k = JsonSerializer.Deserialize<OwnershipKeys>(File.ReadAllBytes(path), Json); }
        catch (JsonException e) { throw new ModelFormatException($"{path}: not a FedIPR keys file ({e.Message})"); }
        if (k is null || k.Format != FormatName) throw new ModelFormatException($"{path}: not a FedIPR keys file (format '{k?.Format}', expected '{FormatName}')");
        if (k.Key.Length != 64 || !k.Key.All(Uri.IsHexDigit)) throw new ModelFormatException($"{path}: field 'key' must be 64 hex digits");
        if (k.Sites.Length == 0 || k.Sites.Any(s => s.Bits < 0 || s.Bits > s.Length)) throw new ModelFormatException($"{path}: field 'sites' is empty or asks more bits than a site holds");
        return k;
    }
}

/// <summary>Files only their owner may read: created with mode 0600 before a byte is written.</summary>
public static class PrivateFile
{
    public static void Write(string path, byte[] bytes)
    {
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using (var f = new FileStream(path, options)) f.Write(bytes);
        // An existing file keeps its old mode on create: set it again.
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    /// <summary>The party's secret: 32 random bytes made once (0600) and read ever after.</summary>
    public static byte[] Secret(string path)
    {
        if (File.Exists(path))
        {
            var s = File.ReadAllBytes(path);
            if (s.Length < 32) throw new ModelFormatException($"{path}: a party secret needs at least 32 bytes, the file has {s.Length}");
            return s;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var secret = RandomNumberGenerator.GetBytes(32);
        var tmp = path + ".tmp";
        Write(tmp, secret);
        File.Move(tmp, path, overwrite: false);
        return secret;
    }
}

/// <summary>Trigger prompts and responses of pronounceable nonsense words drawn from a key (streams 1000+).</summary>
public static class TriggerText
{
    const string Consonants = "bdfgklmnprstvz", Vowels = "aeiou";

    public static TriggerPair[] Make(byte[] key, int count) =>
        Enumerable.Range(0, count).Select(i => new TriggerPair(Words(key, 1000 + 2 * i, 4), Words(key, 1001 + 2 * i, 2))).ToArray();

    static string Words(byte[] key, long stream, int words)
    {
        var c = KeyedNormal.Choices(key, stream, words * 6, Consonants.Length * Vowels.Length);
        return string.Join(" ", Enumerable.Range(0, words).Select(w =>
            string.Concat(Enumerable.Range(0, 3).Select(s => { var x = c[w * 6 + s]; return $"{Consonants[x / Vowels.Length]}{Vowels[x % Vowels.Length]}"; }))));
    }
}
