namespace FateLlm.Training.Models;

/// <summary>Where a node finds a job's base model: the path as named, or a folder of the same name under its models root.</summary>
public static class ModelLocation
{
    public static string Resolve(string path, string? modelsRoot)
    {
        if (Directory.Exists(path) || string.IsNullOrEmpty(modelsRoot)) return path;
        var alt = Path.Combine(modelsRoot, Path.GetFileName(path.TrimEnd('/', '\\')));
        return Directory.Exists(alt) ? alt : path;
    }
}
