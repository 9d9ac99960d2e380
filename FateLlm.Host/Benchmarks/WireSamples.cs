using System.Collections;
using System.Reflection;
using Akka.Actor;
using FateLlm.Actors.Jobs;
using FateLlm.Training.Algorithms;
using FateLlm.Training.Federation;

namespace FateLlm.Host.Benchmarks;

/// <summary>
/// A deterministic instance of any wire message with every field set to a non-default value (built by reflection, so a
/// new field is covered without touching the specs): `bench wire`, the fuzzer, the round-trip spec and the committed fixtures start here.
/// </summary>
public static class WireSamples
{
    /// <summary>An actor on another node: its path must survive the wire as it is.</summary>
    public const string RemotePath = "akka.tcp://fate-llm@10.1.2.3:4053/user/blob-server";

    /// <param name="items">Elements in every array, list and dictionary (the bench's larger messages: rounds, parties, shares).</param>
    public static object Of(Type type, ExtendedActorSystem system, int items = 1) => new Sampler(system, items).Value(type, type.Name, depth: 0);

    sealed class Sampler(ExtendedActorSystem system, int items)
    {
        public object Value(Type type, string name, int depth)
        {
            if (depth > 8) throw new InvalidOperationException($"sample of {type} nests too deep");
            if (Nullable.GetUnderlyingType(type) is { } inner) return Value(inner, name, depth);
            if (type == typeof(string)) return $"{name}-é✓";
            if (type == typeof(int)) return 3;
            if (type == typeof(long)) return 5_000_000_000L;
            if (type == typeof(double)) return 0.375;
            if (type == typeof(float)) return 0.5f;
            if (type == typeof(bool)) return true;
            if (type == typeof(byte[])) return new byte[] { 0, 1, 254, 255 };
            if (type == typeof(DateTime)) return new DateTime(2026, 12, 6, 23, 59, 0, DateTimeKind.Utc);
            if (type == typeof(TimeSpan)) return TimeSpan.FromSeconds(90.5);
            if (type.IsEnum) return Enum.GetValues(type).Cast<object>().Last();
            if (type == typeof(IActorRef)) return system.Provider.ResolveActorRef(RemotePath);
            if (type == typeof(JobSpec)) return Spec();
            if (type.IsArray)
            {
                var array = Array.CreateInstance(type.GetElementType()!, items);
                for (var i = 0; i < items; i++) array.SetValue(Value(type.GetElementType()!, $"{name}{i}", depth + 1), i);
                return array;
            }
            if (type.IsGenericType && type.GetGenericArguments() is [var key, var item] && key == typeof(string)
                && typeof(IEnumerable).IsAssignableFrom(type))
            {
                var dictionary = (IDictionary)Activator.CreateInstance(typeof(Dictionary<,>).MakeGenericType(key, item))!;
                for (var i = 0; i < items; i++) dictionary[$"{name}-key{i}"] = Value(item, $"{name}{i}", depth + 1);
                return dictionary;
            }
            if (type.IsGenericType && type.GetGenericArguments() is [var element] && typeof(IEnumerable).IsAssignableFrom(type))
            {
                var list = (IList)Activator.CreateInstance(typeof(List<>).MakeGenericType(element))!;
                for (var i = 0; i < items; i++) list.Add(Value(element, $"{name}{i}", depth + 1));
                return list;
            }
            var constructor = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).FirstOrDefault()
                ?? throw new InvalidOperationException($"{type} has no public constructor to sample");
            var instance = constructor.Invoke([.. constructor.GetParameters().Select(p => Value(p.ParameterType, p.Name!, depth + 1))]);
            var set = constructor.GetParameters().Select(p => p.Name).ToHashSet(StringComparer.OrdinalIgnoreCase);
            foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
                if (property.SetMethod is { IsPublic: true } && !set.Contains(property.Name))
                    property.SetValue(instance, Value(property.PropertyType, property.Name, depth + 1));
            return instance;
        }
    }

    /// <summary>A job specification with a non-default algorithm block (its own serializer is covered by JobFileSpec).</summary>
    static JobSpec Spec() => JobFile.Default("wire-job", "/models/base", [new PartySpec("food", "train.jsonl", "dev.jsonl")], "/out") with
    {
        Algorithm = new AlgorithmSpec("homo-peft", new Dictionary<string, string> { ["server.learning-rate"] = "0.5" }),
        ModelDigest = new string('a', 64),
    };
}
