using System.Text.Json.Nodes;
using FateLlm.Training.IO;
using FateLlm.Training.Models;
using static TorchSharp.torch;

namespace FateLlm.Training.Peft;

/// <summary>
/// A base checkpoint with an adapter merged in, written one tensor at a time: memory stays bounded by one tensor (plus
/// the adapter), however large the base. Each tensor keeps the dtype it is stored in (a bf16 base gives a bf16 merge, as
/// config.json says). Each weight W with LoRA becomes W + (alpha/r)·B·A, computed in fp32 and stored in W's own dtype, as
/// an in-memory merge followed by a save in the base's dtype gives; base tensors the adapter trains (FedIPR's norm
/// scales) take the adapter's values.
/// </summary>
public static class MergedCheckpoint
{
    /// <param name="adapted">The job's model with the adapter loaded: its weights need not be (a skeleton does).</param>
    public static void Write(CausalLm adapted, string baseFolder, string folder)
    {
        Directory.CreateDirectory(folder);
        using var _ = no_grad();
        var lora = adapted.Projections().Where(p => p.Module.HasLora).ToDictionary(p => p.Path + ".weight", p => p.Module, StringComparer.Ordinal);
        var trained = adapted.BaseParameters().Where(p => p.Param.requires_grad).ToDictionary(p => p.Name, p => (Tensor)p.Param, StringComparer.Ordinal);
        var files = HfCheckpoint.WeightFiles(baseFolder);
        HfCheckpoint.RemoveWeights(folder);
        foreach (var file in files)
        {
            var (entries, dataStart) = SafeTensors.ReadEntries(file);
            var byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
            using var handle = File.OpenHandle(file);
            // A bare GPT2Model checkpoint names its tensors without the "transformer." of the model's.
            string Name(string stored) => lora.ContainsKey(stored) || trained.ContainsKey(stored) || adapted.Config.Family != ModelFamily.Gpt2 ? stored : "transformer." + stored;
            // Tensors the adapter changes are read, changed and written; every other one is copied byte for byte.
            Tensor? Produce(string name)
            {
                var key = Name(name);
                var projection = lora.GetValueOrDefault(key);
                var value = trained.GetValueOrDefault(key);
                if (projection is null && value is null) return null;
                var t = SafeTensors.ReadStored(handle, byName[name], dataStart, file);
                if (projection is not null)
                {
                    using var scope = NewDisposeScope();
                    t.copy_(t.to_type(ScalarType.Float32).add(projection.LoraDelta()));
                }
                else t.copy_(value!.detach());
                return t;
            }
            SafeTensors.WriteStreaming(Path.Combine(folder, Path.GetFileName(file)),
                entries.OrderBy(e => e.Begin).Select(e => (e.Name, SafeTensors.StoredType(e, file), e.Shape)).ToList(), Produce,
                (name, to) => SafeTensors.CopyStored(handle, byName[name], dataStart, to, file));
        }
        var index = Path.Combine(baseFolder, HfCheckpoint.IndexFile);
        if (files.Count > 1 || File.Exists(index)) File.Copy(index, Path.Combine(folder, HfCheckpoint.IndexFile), overwrite: true);
        adapted.Config.Save(Path.Combine(folder, HfCheckpoint.ConfigFile), HfCheckpoint.TorchDtypeName(HfCheckpoint.StoredDtype(baseFolder)));
        Tokenization.TokenizerLoader.CopyFiles(baseFolder, folder);
    }
}
