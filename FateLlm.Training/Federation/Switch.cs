namespace FateLlm.Training.Federation;

/// <summary>The one reading of an on/off setting, wherever a job or a node is configured.</summary>
public static class Switch
{
    public const string Accepted = "on/off, true/false, yes/no";

    public static bool TryParse(string text, out bool value)
    {
        switch (text.Trim().ToLowerInvariant())
        {
            case "on" or "true" or "yes":
                value = true;
                return true;
            case "off" or "false" or "no":
                value = false;
                return true;
            default:
                value = false;
                return false;
        }
    }
}
