using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FateLlm.Training.Tokenization;

/// <summary>A template that cannot be parsed or rendered; names the construct, the template's line, or the template's own message.</summary>
public sealed class ChatTemplateException(string message) : Exception(message);

public sealed record ChatMessage(string Role, string Content);

/// <summary>The Jinja environment switches in which transformers' chat templates and lm-eval's document templates differ.</summary>
public sealed record JinjaEnvironment(bool TrimBlocks, bool LstripBlocks, bool KeepTrailingNewline)
{
    /// <summary>transformers' apply_chat_template: trim_blocks and lstrip_blocks on.</summary>
    public static readonly JinjaEnvironment Transformers = new(true, true, false);
    /// <summary>lm-eval's utils.apply_template: Jinja's defaults, keep_trailing_newline on.</summary>
    public static readonly JinjaEnvironment LmEval = new(false, false, true);
}

/// <summary>
/// The Jinja subset that instruction models' <c>chat_template</c>s use (Llama 3.x, Qwen2.5, Mistral, Phi-3, Gemma and
/// their tool-calling branches), rendered as transformers does: <c>trim_blocks</c> and <c>lstrip_blocks</c> on,
/// loop controls, <c>raise_exception</c>, <c>namespace</c>, <c>tojson</c> with Python's separators. Statements:
/// if/elif/else, for (with <c>loop</c>, an <c>if</c> filter and else), set (names and namespace attributes),
/// break/continue. Anything else (macro, call, include, block set, …) is refused naming the construct and line.
/// </summary>
public sealed class ChatTemplate
{
    readonly List<Node> _body;

    public string Source { get; }

    public ChatTemplate(string source) : this(source, JinjaEnvironment.Transformers) { }

    public ChatTemplate(string source, JinjaEnvironment environment)
    {
        Source = source;
        _body = new Parser(Lexer.Tokenize(source, environment)).ParseBody(out _);
    }

    /// <summary>The chat template of a folder's tokenizer_config.json (a string, or the list's "default" entry), or null.</summary>
    public static ChatTemplate? FromTokenizerConfig(JsonObject? tokenizerConfig, string origin)
    {
        var node = tokenizerConfig?["chat_template"];
        string? text = node switch
        {
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonArray a => a.OfType<JsonObject>().FirstOrDefault(t => t["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
            _ => null,
        };
        if (text is null) return null;
        try { return new ChatTemplate(text); }
        catch (ChatTemplateException e) { throw new ChatTemplateException($"{origin}: field 'chat_template': {e.Message}"); }
    }

    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? bosToken, string? eosToken) =>
        Render(new JsonArray(messages.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray()),
            addGenerationPrompt, new Dictionary<string, object?> { ["bos_token"] = bosToken, ["eos_token"] = eosToken });

    /// <summary>Renders with messages (and tools, …) given as JSON, as transformers' apply_chat_template receives them.</summary>
    public string Render(JsonArray messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?> extra) =>
        RenderWith(new Dictionary<string, object?> { ["messages"] = messages, ["add_generation_prompt"] = addGenerationPrompt }.Concat(extra));

    /// <summary>Renders with a document's fields as variables, as lm-eval's doc_to_text and friends are rendered.</summary>
    public string RenderDocument(JsonObject doc) => RenderWith(doc.Select(kv => new KeyValuePair<string, object?>(kv.Key, kv.Value)));

    string RenderWith(IEnumerable<KeyValuePair<string, object?>> variables)
    {
        var globals = new Dictionary<string, object?>
        {
            ["raise_exception"] = new Callable((args, _) => throw new ChatTemplateException(Value.Str(args.FirstOrDefault()))),
            ["namespace"] = new Callable((_, kw) => new Namespace(new Dictionary<string, object?>(kw))),
            ["range"] = new Callable((args, _) => Value.Range(args)),
            ["strftime_now"] = new Callable((args, _) => DateTime.Now.ToString(Value.StrftimeToNet(Value.Str(args[0])), CultureInfo.InvariantCulture)),
        };
        foreach (var (k, v) in variables) globals[k] = v is JsonNode j ? Value.FromJson(j) : v;
        var sb = new StringBuilder();
        var scope = new Scope(null, globals);
        Exec(_body, scope, sb);
        return sb.ToString();
    }

    // ---- evaluation -------------------------------------------------------------------------------------------

    sealed class BreakSignal : Exception;
    sealed class ContinueSignal : Exception;

    sealed class Scope(Scope? parent, Dictionary<string, object?> vars)
    {
        public Dictionary<string, object?> Vars { get; } = vars;
        public object? Get(string name)
        {
            for (var s = this; s != null; s = s.Parent) if (s.Vars.TryGetValue(name, out var v)) return v;
            return Undefined.Instance;
        }
        public Scope? Parent { get; } = parent;
    }

    static void Exec(List<Node> body, Scope scope, StringBuilder sb)
    {
        foreach (var node in body)
        {
            switch (node)
            {
                case TextNode t: sb.Append(t.Text); break;
                case OutputNode o: sb.Append(Value.Render(Eval(o.Expr, scope))); break;
                case IfNode i:
                    var branch = i.Branches.FirstOrDefault(b => b.Cond is null || Value.Truthy(Eval(b.Cond, scope)));
                    if (branch.Body != null) Exec(branch.Body, scope, sb);
                    break;
                case ForNode f: ExecFor(f, scope, sb); break;
                case SetNode s:
                    var value = Eval(s.Value, scope);
                    if (s.Attr is null) scope.Vars[s.Target] = value;
                    else if (scope.Get(s.Target) is Namespace ns) ns.Vars[s.Attr] = value;
                    else throw new ChatTemplateException($"line {s.Line}: set {s.Target}.{s.Attr}: '{s.Target}' is not a namespace");
                    break;
                case BreakNode: throw new BreakSignal();
                case ContinueNode: throw new ContinueSignal();
            }
        }
    }

    static void ExecFor(ForNode f, Scope scope, StringBuilder sb)
    {
        var items = Value.Iterate(Eval(f.Iterable, scope), f.Line).ToList();
        if (f.Filter != null)
            items = items.Where(item => Value.Truthy(Eval(f.Filter, new Scope(scope, Bind(f.Targets, item, f.Line))))).ToList();
        if (items.Count == 0)
        {
            if (f.Else != null) Exec(f.Else, scope, sb);
            return;
        }
        for (int i = 0; i < items.Count; i++)
        {
            var vars = Bind(f.Targets, items[i], f.Line);
            vars["loop"] = new Dictionary<string, object?>
            {
                ["index"] = (long)i + 1, ["index0"] = (long)i, ["revindex"] = (long)(items.Count - i), ["revindex0"] = (long)(items.Count - i - 1),
                ["first"] = i == 0, ["last"] = i == items.Count - 1, ["length"] = (long)items.Count,
                ["previtem"] = i > 0 ? items[i - 1] : Undefined.Instance, ["nextitem"] = i + 1 < items.Count ? items[i + 1] : Undefined.Instance,
            };
            try { Exec(f.Body, new Scope(scope, vars), sb); }
            catch (BreakSignal) { break; }
            catch (ContinueSignal) { }
        }
    }

    static Dictionary<string, object?> Bind(List<string> targets, object? item, int line)
    {
        if (targets.Count == 1) return new() { [targets[0]] = item };
        var parts = Value.Iterate(item, line).ToList();
        if (parts.Count != targets.Count) throw new ChatTemplateException($"line {line}: cannot unpack {parts.Count} values into {targets.Count} names");
        return targets.Select((t, i) => (t, parts[i])).ToDictionary(p => p.t, p => p.Item2);
    }

    static object? Eval(Expr e, Scope scope) => e switch
    {
        Literal l => l.Value,
        Name n => scope.Get(n.Id),
        ListExpr l => l.Items.Select(x => Eval(x, scope)).ToList(),
        DictExpr d => d.Pairs.ToDictionary(p => Value.Str(Eval(p.Key, scope)), p => Eval(p.Value, scope)),
        Attr a => Value.GetAttr(Eval(a.Target, scope), a.Name),
        Index i => Value.GetItem(Eval(i.Target, scope), Eval(i.Key, scope)),
        Slice s => Value.Slice(Eval(s.Target, scope), s.Start is null ? null : Eval(s.Start, scope), s.Stop is null ? null : Eval(s.Stop, scope),
            s.Step is null ? null : Eval(s.Step, scope)),
        Call c => Value.Call(c.Target is Attr m ? Value.Method(Eval(m.Target, scope), m.Name, c.Line) : Eval(c.Target, scope),
            c.Args.Select(x => Eval(x, scope)).ToList(), c.Kwargs.ToDictionary(k => k.Key, k => Eval(k.Value, scope)), c.Line),
        Unary u => u.Op switch
        {
            "not" => !Value.Truthy(Eval(u.Operand, scope)),
            "-" => Value.Arith("-", 0L, Eval(u.Operand, scope), u.Line),
            _ => Eval(u.Operand, scope),
        },
        Binary b => b.Op switch
        {
            "and" => Eval(b.Left, scope) is var l && !Value.Truthy(l) ? l : Eval(b.Right, scope),
            "or" => Eval(b.Left, scope) is var l && Value.Truthy(l) ? l : Eval(b.Right, scope),
            _ => Value.Binary(b.Op, Eval(b.Left, scope), Eval(b.Right, scope), b.Line),
        },
        Conditional c => Value.Truthy(Eval(c.Cond, scope)) ? Eval(c.Then, scope) : c.Else is null ? Undefined.Instance : Eval(c.Else, scope),
        Filter f => Value.ApplyFilter(f.Name, Eval(f.Target, scope), f.Args.Select(x => Eval(x, scope)).ToList(),
            f.Kwargs.ToDictionary(k => k.Key, k => Eval(k.Value, scope)), f.Line),
        Test t => Value.ApplyTest(t.Name, Eval(t.Target, scope), t.Args.Select(x => Eval(x, scope)).ToList(), t.Line) != t.Negated,
        _ => throw new ChatTemplateException($"unsupported expression {e.GetType().Name}"),
    };

    // ---- syntax tree ------------------------------------------------------------------------------------------

    abstract record Node;
    sealed record TextNode(string Text) : Node;
    sealed record OutputNode(Expr Expr) : Node;
    sealed record IfNode(List<(Expr? Cond, List<Node> Body)> Branches) : Node;
    sealed record ForNode(List<string> Targets, Expr Iterable, Expr? Filter, List<Node> Body, List<Node>? Else, int Line) : Node;
    sealed record SetNode(string Target, string? Attr, Expr Value, int Line) : Node;
    sealed record BreakNode : Node;
    sealed record ContinueNode : Node;

    abstract record Expr(int Line);
    sealed record Literal(object? Value, int L) : Expr(L);
    sealed record Name(string Id, int L) : Expr(L);
    sealed record ListExpr(List<Expr> Items, int L) : Expr(L);
    sealed record DictExpr(List<(Expr Key, Expr Value)> Pairs, int L) : Expr(L);
    sealed record Attr(Expr Target, string Name, int L) : Expr(L);
    sealed record Index(Expr Target, Expr Key, int L) : Expr(L);
    sealed record Slice(Expr Target, Expr? Start, Expr? Stop, Expr? Step, int L) : Expr(L);
    sealed record Call(Expr Target, List<Expr> Args, Dictionary<string, Expr> Kwargs, int L) : Expr(L);
    sealed record Unary(string Op, Expr Operand, int L) : Expr(L);
    sealed record Binary(string Op, Expr Left, Expr Right, int L) : Expr(L);
    sealed record Conditional(Expr Cond, Expr Then, Expr? Else, int L) : Expr(L);
    sealed record Filter(Expr Target, string Name, List<Expr> Args, Dictionary<string, Expr> Kwargs, int L) : Expr(L);
    sealed record Test(Expr Target, string Name, List<Expr> Args, bool Negated, int L) : Expr(L);

    // ---- lexer: text and tags with Jinja's whitespace rules, then expression tokens ---------------------------

    enum Kind { Text, Output, Statement }
    sealed record Chunk(Kind Kind, string Body, int Line);
    sealed record Tok(string Type, string Text, int Line); // Type: name, string, number, op, end

    static class Lexer
    {
        public static List<Chunk> Tokenize(string src, JinjaEnvironment env)
        {
            if (!env.KeepTrailingNewline && src.EndsWith('\n')) src = src[..^1];
            var chunks = new List<Chunk>();
            int pos = 0, line = 1;
            var trimNextNewline = false;
            var stripNextWhitespace = false;
            while (pos < src.Length)
            {
                var open = NextTag(src, pos);
                var text = src[pos..(open < 0 ? src.Length : open)];
                if (stripNextWhitespace) text = text.TrimStart();
                else if (trimNextNewline && text.StartsWith('\n')) text = text[1..];
                else if (trimNextNewline && text.StartsWith("\r\n")) text = text[2..];
                (trimNextNewline, stripNextWhitespace) = (false, false);
                if (open < 0)
                {
                    if (text.Length > 0) chunks.Add(new Chunk(Kind.Text, text, line));
                    break;
                }
                var kind = src[open + 1];
                var leftStrip = open + 2 < src.Length && src[open + 2] == '-';
                var lstripKeep = open + 2 < src.Length && src[open + 2] == '+';
                if (leftStrip) text = text.TrimEnd();
                else if (kind is '%' or '#' && !lstripKeep && env.LstripBlocks)
                {
                    // lstrip_blocks: spaces and tabs between the line start and a block or comment tag go.
                    var lineStart = open == 0 ? 0 : src.LastIndexOf('\n', open - 1) + 1;
                    if (src.AsSpan(lineStart, open - lineStart).IndexOfAnyExcept(' ', '\t') < 0) text = text.TrimEnd(' ', '\t');
                }
                if (text.Length > 0) chunks.Add(new Chunk(Kind.Text, text, line));
                line += src[pos..open].Count(c => c == '\n');
                var closer = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
                var bodyStart = open + 2 + (leftStrip || lstripKeep ? 1 : 0);
                var close = FindClose(src, bodyStart, closer);
                if (close < 0) throw new ChatTemplateException($"line {line}: '{{{kind}' is never closed");
                var rightStrip = close > bodyStart && src[close - 1] == '-';
                var body = src[bodyStart..(rightStrip ? close - 1 : close)];
                if (kind == '{') chunks.Add(new Chunk(Kind.Output, body, line));
                else if (kind == '%')
                {
                    var word = body.Trim().Split([' ', '\t', '\n'], 2)[0];
                    // transformers' own {% generation %} marker only tracks assistant spans; it renders nothing.
                    if (word is not ("generation" or "endgeneration")) chunks.Add(new Chunk(Kind.Statement, body, line));
                }
                line += src[open..(close + 2)].Count(c => c == '\n');
                pos = close + 2;
                if (rightStrip) stripNextWhitespace = true;
                else if (kind is '%' or '#') trimNextNewline = env.TrimBlocks;
            }
            return chunks;
        }

        static int NextTag(string s, int from)
        {
            for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
                if (s[i + 1] is '{' or '%' or '#') return i;
            return -1;
        }

        // The closer outside string literals ("{{ '}}' }}" is one tag).
        static int FindClose(string s, int from, string closer)
        {
            char? quote = null;
            for (int i = from; i + 1 < s.Length; i++)
            {
                var c = s[i];
                if (quote != null)
                {
                    if (c == '\\') i++;
                    else if (c == quote) quote = null;
                }
                else if (closer != "#}" && c is '\'' or '"') quote = c;
                else if (c == closer[0] && s[i + 1] == closer[1]) return i;
            }
            return -1;
        }

        public static List<Tok> Expression(string body, int line)
        {
            var toks = new List<Tok>();
            int i = 0;
            while (i < body.Length)
            {
                var c = body[i];
                if (char.IsWhiteSpace(c)) { if (c == '\n') line++; i++; continue; }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < body.Length && (char.IsLetterOrDigit(body[j]) || body[j] == '_')) j++;
                    toks.Add(new Tok("name", body[i..j], line));
                    i = j;
                }
                else if (char.IsDigit(c))
                {
                    int j = i;
                    while (j < body.Length && (char.IsDigit(body[j]) || (body[j] == '.' && j + 1 < body.Length && char.IsDigit(body[j + 1])))) j++;
                    toks.Add(new Tok("number", body[i..j], line));
                    i = j;
                }
                else if (c is '\'' or '"')
                {
                    var sb = new StringBuilder();
                    int j = i + 1;
                    for (; j < body.Length && body[j] != c; j++)
                    {
                        if (body[j] != '\\' || j + 1 >= body.Length) { sb.Append(body[j]); continue; }
                        j++;
                        sb.Append(body[j] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', var e => e });
                    }
                    if (j >= body.Length) throw new ChatTemplateException($"line {line}: unterminated string");
                    toks.Add(new Tok("string", sb.ToString(), line));
                    i = j + 1;
                }
                else
                {
                    var two = i + 1 < body.Length ? body.Substring(i, 2) : "";
                    var op = two is "==" or "!=" or "<=" or ">=" or "//" or "**" ? two : c.ToString();
                    if (!"+-*/%~|.,:()[]{}<>=!".Contains(op[0])) throw new ChatTemplateException($"line {line}: unexpected character '{c}'");
                    toks.Add(new Tok("op", op, line));
                    i += op.Length;
                }
            }
            toks.Add(new Tok("end", "", line));
            return toks;
        }
    }

    // ---- parser -----------------------------------------------------------------------------------------------

    sealed class Parser(List<Chunk> chunks)
    {
        int _at;
        static readonly HashSet<string> Unsupported = ["macro", "call", "filter", "include", "import", "from", "extends", "block", "with", "raw", "autoescape"];

        /// <summary>Nodes up to a statement that ends this body (endfor, else, …), returned in <paramref name="stop"/>.</summary>
        public List<Node> ParseBody(out (string Word, List<Tok> Tail, int Line)? stop, params string[] enders)
        {
            var nodes = new List<Node>();
            stop = null;
            while (_at < chunks.Count)
            {
                var c = chunks[_at++];
                switch (c.Kind)
                {
                    case Kind.Text: nodes.Add(new TextNode(c.Body)); break;
                    case Kind.Output:
                        var ex = new ExprParser(Lexer.Expression(c.Body, c.Line));
                        nodes.Add(new OutputNode(ex.ParseAll()));
                        break;
                    default:
                        var toks = Lexer.Expression(c.Body, c.Line);
                        var word = toks[0].Text;
                        if (enders.Contains(word)) { stop = (word, toks.Skip(1).ToList(), c.Line); return nodes; }
                        nodes.Add(Statement(word, toks.Skip(1).ToList(), c.Line));
                        break;
                }
            }
            if (enders.Length > 0) throw new ChatTemplateException($"template ends before '{{% {enders[^1]} %}}'");
            return nodes;
        }

        Node Statement(string word, List<Tok> rest, int line)
        {
            switch (word)
            {
                case "if":
                {
                    var branches = new List<(Expr?, List<Node>)>();
                    var cond = new ExprParser(rest).ParseAll();
                    while (true)
                    {
                        var body = ParseBody(out var stop, "elif", "else", "endif");
                        branches.Add((cond, body));
                        if (stop!.Value.Word == "endif") break;
                        if (stop.Value.Word == "else")
                        {
                            branches.Add((null, ParseBody(out _, "endif")));
                            break;
                        }
                        cond = new ExprParser(stop.Value.Tail).ParseAll();
                    }
                    return new IfNode(branches);
                }
                case "for":
                {
                    var p = new ExprParser(rest);
                    var targets = new List<string> { p.ExpectName() };
                    while (p.Accept(",")) targets.Add(p.ExpectName());
                    p.ExpectWord("in");
                    var iterable = p.ParseOr();
                    Expr? filter = p.AcceptWord("if") ? p.ParseOr() : null;
                    if (p.AcceptWord("recursive")) throw new ChatTemplateException($"line {line}: unsupported construct 'for … recursive'");
                    p.ExpectEnd();
                    var body = ParseBody(out var stop, "else", "endfor");
                    var otherwise = stop!.Value.Word == "else" ? ParseBody(out _, "endfor") : null;
                    return new ForNode(targets, iterable, filter, body, otherwise, line);
                }
                case "set":
                {
                    var p = new ExprParser(rest);
                    var target = p.ExpectName();
                    string? attr = p.Accept(".") ? p.ExpectName() : null;
                    if (!p.Accept("=")) throw new ChatTemplateException($"line {line}: unsupported construct 'set' block (only 'set name = value')");
                    return new SetNode(target, attr, p.ParseAll(), line);
                }
                case "break": return new BreakNode();
                case "continue": return new ContinueNode();
                default:
                    throw new ChatTemplateException(Unsupported.Contains(word)
                        ? $"line {line}: unsupported construct '{word}'"
                        : $"line {line}: unknown statement '{word}'");
            }
        }
    }

    sealed class ExprParser(List<Tok> toks)
    {
        int _i;
        Tok Peek => toks[_i];

        public bool Accept(string op)
        {
            if (Peek.Type == "op" && Peek.Text == op) { _i++; return true; }
            return false;
        }

        public bool AcceptWord(string w)
        {
            if (Peek.Type == "name" && Peek.Text == w) { _i++; return true; }
            return false;
        }

        void Expect(string op)
        {
            if (!Accept(op)) throw new ChatTemplateException($"line {Peek.Line}: expected '{op}' but found '{Peek.Text}'");
        }

        public void ExpectWord(string w)
        {
            if (!AcceptWord(w)) throw new ChatTemplateException($"line {Peek.Line}: expected '{w}' but found '{Peek.Text}'");
        }

        public string ExpectName()
        {
            if (Peek.Type != "name") throw new ChatTemplateException($"line {Peek.Line}: expected a name but found '{Peek.Text}'");
            return toks[_i++].Text;
        }

        public void ExpectEnd()
        {
            if (Peek.Type != "end") throw new ChatTemplateException($"line {Peek.Line}: unexpected '{Peek.Text}'");
        }

        public Expr ParseAll()
        {
            var e = ParseExpr();
            ExpectEnd();
            return e;
        }

        Expr ParseExpr()
        {
            var e = ParseOr();
            if (!AcceptWord("if")) return e;
            var cond = ParseOr();
            return new Conditional(cond, e, AcceptWord("else") ? ParseExpr() : null, e.Line);
        }

        public Expr ParseOr()
        {
            var e = ParseAnd();
            while (AcceptWord("or")) e = new Binary("or", e, ParseAnd(), e.Line);
            return e;
        }

        Expr ParseAnd()
        {
            var e = ParseNot();
            while (AcceptWord("and")) e = new Binary("and", e, ParseNot(), e.Line);
            return e;
        }

        Expr ParseNot() => AcceptWord("not") ? new Unary("not", ParseNot(), Peek.Line) : ParseCompare();

        Expr ParseCompare()
        {
            var e = ParseAdd();
            while (true)
            {
                if (Peek.Type == "op" && Peek.Text is "==" or "!=" or "<" or ">" or "<=" or ">=")
                {
                    var op = toks[_i++].Text;
                    e = new Binary(op, e, ParseAdd(), e.Line);
                }
                else if (AcceptWord("in")) e = new Binary("in", e, ParseAdd(), e.Line);
                else if (Peek.Type == "name" && Peek.Text == "not" && toks[_i + 1].Text == "in")
                {
                    _i += 2;
                    e = new Unary("not", new Binary("in", e, ParseAdd(), e.Line), e.Line);
                }
                else return e;
            }
        }

        Expr ParseAdd()
        {
            var e = ParseConcat();
            while (Peek.Type == "op" && Peek.Text is "+" or "-") e = new Binary(toks[_i++].Text, e, ParseConcat(), e.Line);
            return e;
        }

        Expr ParseConcat()
        {
            var e = ParseMul();
            while (Accept("~")) e = new Binary("~", e, ParseMul(), e.Line);
            return e;
        }

        Expr ParseMul()
        {
            var e = ParseUnary();
            while (Peek.Type == "op" && Peek.Text is "*" or "/" or "//" or "%") e = new Binary(toks[_i++].Text, e, ParseUnary(), e.Line);
            return e;
        }

        Expr ParseUnary()
        {
            if (Accept("-")) return new Unary("-", ParseUnary(), Peek.Line);
            if (Accept("+")) return new Unary("+", ParseUnary(), Peek.Line);
            return ParseFilters(ParsePostfix(ParsePrimary()));
        }

        Expr ParseFilters(Expr e)
        {
            while (true)
            {
                if (Accept("|"))
                {
                    var name = ExpectName();
                    var (args, kwargs) = Peek.Text == "(" && Accept("(") ? Arguments() : ([], new());
                    e = new Filter(e, name, args, kwargs, e.Line);
                }
                else if (AcceptWord("is"))
                {
                    var negated = AcceptWord("not");
                    var name = ExpectName();
                    var args = new List<Expr>();
                    if (Accept("(")) args = Arguments().Args;
                    else if (Peek.Type is "string" or "number" || (Peek.Type == "name" && Peek.Text is not ("and" or "or" or "else" or "if")))
                        args.Add(ParsePrimary());
                    e = new Test(e, name, args, negated, e.Line);
                }
                else return e;
            }
        }

        Expr ParsePostfix(Expr e)
        {
            while (true)
            {
                if (Accept(".")) e = new Attr(e, ExpectName(), e.Line);
                else if (Accept("["))
                {
                    Expr? start = Peek.Text == ":" ? null : ParseExpr();
                    if (Accept(":"))
                    {
                        Expr? stop = Peek.Text is ":" or "]" ? null : ParseExpr();
                        Expr? step = Accept(":") && Peek.Text != "]" ? ParseExpr() : null;
                        Expect("]");
                        e = new Slice(e, start, stop, step, e.Line);
                    }
                    else
                    {
                        Expect("]");
                        e = new Index(e, start!, e.Line);
                    }
                }
                else if (Accept("("))
                {
                    var (args, kwargs) = Arguments();
                    e = new Call(e, args, kwargs, e.Line);
                }
                else return e;
            }
        }

        (List<Expr> Args, Dictionary<string, Expr> Kwargs) Arguments()
        {
            var args = new List<Expr>();
            var kwargs = new Dictionary<string, Expr>();
            while (!Accept(")"))
            {
                if (Peek.Type == "name" && toks[_i + 1].Text == "=" && toks[_i + 1].Type == "op")
                {
                    var key = toks[_i].Text;
                    _i += 2;
                    kwargs[key] = ParseExpr();
                }
                else args.Add(ParseExpr());
                if (!Accept(",")) { Expect(")"); break; }
            }
            return (args, kwargs);
        }

        Expr ParsePrimary()
        {
            var t = toks[_i++];
            switch (t.Type)
            {
                case "string":
                    var s = t.Text;
                    while (Peek.Type == "string") s += toks[_i++].Text; // adjacent literals concatenate
                    return new Literal(s, t.Line);
                case "number":
                    return new Literal(t.Text.Contains('.') ? double.Parse(t.Text, CultureInfo.InvariantCulture) : (object)long.Parse(t.Text, CultureInfo.InvariantCulture), t.Line);
                case "name":
                    return t.Text switch
                    {
                        "true" or "True" => new Literal(true, t.Line),
                        "false" or "False" => new Literal(false, t.Line),
                        "none" or "None" => new Literal(null, t.Line),
                        _ => new Name(t.Text, t.Line),
                    };
                case "op" when t.Text == "(":
                {
                    var e = ParseExpr();
                    if (Accept(","))
                    {
                        var items = new List<Expr> { e };
                        while (!Accept(")")) { items.Add(ParseExpr()); if (!Accept(",")) { Expect(")"); break; } }
                        return new ListExpr(items, t.Line);
                    }
                    Expect(")");
                    return e;
                }
                case "op" when t.Text == "[":
                {
                    var items = new List<Expr>();
                    while (!Accept("]")) { items.Add(ParseExpr()); if (!Accept(",")) { Expect("]"); break; } }
                    return new ListExpr(items, t.Line);
                }
                case "op" when t.Text == "{":
                {
                    var pairs = new List<(Expr, Expr)>();
                    while (!Accept("}"))
                    {
                        var k = ParseExpr();
                        Expect(":");
                        pairs.Add((k, ParseExpr()));
                        if (!Accept(",")) { Expect("}"); break; }
                    }
                    return new DictExpr(pairs, t.Line);
                }
                default:
                    throw new ChatTemplateException($"line {t.Line}: unexpected '{(t.Type == "end" ? "end of tag" : t.Text)}'");
            }
        }
    }
}

sealed class Undefined
{
    public static readonly Undefined Instance = new();
}

sealed class Namespace(Dictionary<string, object?> vars)
{
    public Dictionary<string, object?> Vars { get; } = vars;
}

sealed class Callable(Func<List<object?>, Dictionary<string, object?>, object?> fn)
{
    public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => fn(args, kwargs);
}

/// <summary>Python's semantics for the values a chat template sees: str, int, float, bool, None, list, dict.</summary>
static class Value
{
    public static object? FromJson(JsonNode? n) => n switch
    {
        null => null,
        JsonArray a => a.Select(FromJson).ToList(),
        JsonObject o => o.ToDictionary(kv => kv.Key, kv => FromJson(kv.Value)),
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        JsonValue v when v.GetValueKind() is JsonValueKind.True or JsonValueKind.False => v.GetValue<bool>(),
        // Boxed apart: a conditional of long and double would widen every integer to a float (7 rendered "7.0").
        JsonValue v when v.GetValueKind() == JsonValueKind.Number =>
            long.TryParse(v.ToJsonString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) ? (object)l : double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture),
        _ => null,
    };

    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    public static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        bool b => b ? "True" : "False",
        string s => s,
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => PythonFloat(d),
        List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        Dictionary<string, object?> d => "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        _ => v.ToString() ?? "",
    };

    /// <summary>Python's repr of a float: 7.0, 0.1, 1e-05, 1e+20, inf, nan.</summary>
    static string PythonFloat(double d) =>
        double.IsNaN(d) ? "nan" : double.IsInfinity(d) ? (d > 0 ? "inf" : "-inf")
        : d == Math.Floor(d) && Math.Abs(d) < 1e16 ? d.ToString("0.0", CultureInfo.InvariantCulture)
        : d.ToString("R", CultureInfo.InvariantCulture).ToLowerInvariant();

    static string Repr(object? v) => v is string s ? "'" + s.Replace("\\", "\\\\").Replace("'", "\\'") + "'" : Str(v);

    public static string Render(object? v) => Str(v);

    public static IEnumerable<object?> Iterate(object? v, int line) => v switch
    {
        List<object?> l => l,
        Dictionary<string, object?> d => d.Keys,
        string s => s.Select(c => (object?)c.ToString()),
        Undefined or null => [],
        _ => throw new ChatTemplateException($"line {line}: {TypeName(v)} is not iterable"),
    };

    static string TypeName(object? v) => v switch
    {
        null => "None", string => "str", long => "int", double => "float", bool => "bool",
        List<object?> => "list", Dictionary<string, object?> => "dict", _ => v.GetType().Name,
    };

    public static object? GetAttr(object? target, string name) => target switch
    {
        Dictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : Undefined.Instance,
        Namespace ns => ns.Vars.TryGetValue(name, out var v) ? v : Undefined.Instance,
        _ => Undefined.Instance,
    };

    public static object? GetItem(object? target, object? key) => (target, key) switch
    {
        (Dictionary<string, object?> d, string k) => d.TryGetValue(k, out var v) ? v : Undefined.Instance,
        (List<object?> l, long i) => i < l.Count && i >= -l.Count ? l[(int)(i < 0 ? l.Count + i : i)] : Undefined.Instance,
        (string s, long i) => i < s.Length && i >= -s.Length ? s[(int)(i < 0 ? s.Length + i : i)].ToString() : Undefined.Instance,
        (Namespace ns, string k) => ns.Vars.TryGetValue(k, out var v) ? v : Undefined.Instance,
        _ => Undefined.Instance,
    };

    public static object? Slice(object? target, object? start, object? stop, object? step)
    {
        var st = step is long s ? s : 1;
        if (st == 0) throw new ChatTemplateException("slice step cannot be zero");
        List<object?> items = target switch
        {
            List<object?> l => l,
            string str => str.Select(c => (object?)c.ToString()).ToList(),
            _ => throw new ChatTemplateException($"{TypeName(target)} cannot be sliced"),
        };
        int n = items.Count;
        int Norm(object? v, int dflt) => v is long x ? (int)Math.Clamp(x < 0 ? x + n : x, st > 0 ? 0 : -1, st > 0 ? n : n - 1) : dflt;
        int a = Norm(start, st > 0 ? 0 : n - 1), b = Norm(stop, st > 0 ? n : -1);
        var result = new List<object?>();
        for (int i = a; st > 0 ? i < b : i > b; i += (int)st) result.Add(items[i]);
        return target is string ? string.Concat(result.Cast<string>()) : result;
    }

    public static object Range(List<object?> args)
    {
        long start = 0, stop, step = 1;
        if (args.Count == 1) stop = (long)args[0]!;
        else { start = (long)args[0]!; stop = (long)args[1]!; if (args.Count > 2) step = (long)args[2]!; }
        var r = new List<object?>();
        for (var i = start; step > 0 ? i < stop : i > stop; i += step) r.Add(i);
        return r;
    }

    public static object? Method(object? target, string name, int line) => (target, name) switch
    {
        (string s, "strip") => new Callable((a, _) => a.Count > 0 ? s.Trim(Str(a[0]).ToCharArray()) : s.Trim()),
        (string s, "lstrip") => new Callable((a, _) => a.Count > 0 ? s.TrimStart(Str(a[0]).ToCharArray()) : s.TrimStart()),
        (string s, "rstrip") => new Callable((a, _) => a.Count > 0 ? s.TrimEnd(Str(a[0]).ToCharArray()) : s.TrimEnd()),
        (string s, "upper") => new Callable((_, _) => s.ToUpperInvariant()),
        (string s, "lower") => new Callable((_, _) => s.ToLowerInvariant()),
        (string s, "title") => new Callable((_, _) => Title(s)),
        (string s, "capitalize") => new Callable((_, _) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant()),
        (string s, "startswith") => new Callable((a, _) => s.StartsWith(Str(a[0]), StringComparison.Ordinal)),
        (string s, "endswith") => new Callable((a, _) => s.EndsWith(Str(a[0]), StringComparison.Ordinal)),
        (string s, "replace") => new Callable((a, _) => s.Replace(Str(a[0]), Str(a[1]))),
        (string s, "split") => new Callable((a, _) => (a.Count > 0 && a[0] is string sep
            ? s.Split(sep) : s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).Select(x => (object?)x).ToList()),
        (List<object?> l, "index") => new Callable((a, _) =>
        {
            var i = l.FindIndex(x => Equals(x, a[0]));
            return i >= 0 ? (long)i : throw new ChatTemplateException($"line {line}: {Repr(a[0])} is not in the list");
        }),
        (List<object?> l, "count") => new Callable((a, _) => (long)l.Count(x => Equals(x, a[0]))),
        (Dictionary<string, object?> d, "items") => new Callable((_, _) => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()),
        (Dictionary<string, object?> d, "keys") => new Callable((_, _) => d.Keys.Select(k => (object?)k).ToList()),
        (Dictionary<string, object?> d, "values") => new Callable((_, _) => d.Values.ToList()),
        (Dictionary<string, object?> d, "get") => new Callable((a, _) => d.TryGetValue(Str(a[0]), out var v) ? v : a.Count > 1 ? a[1] : null),
        (Dictionary<string, object?> d, _) when d.TryGetValue(name, out var v) => v,
        _ => throw new ChatTemplateException($"line {line}: {TypeName(target)} has no method '{name}'"),
    };

    public static object? Call(object? fn, List<object?> args, Dictionary<string, object?> kwargs, int line) => fn is Callable c
        ? c.Invoke(args, kwargs)
        : throw new ChatTemplateException($"line {line}: {TypeName(fn)} is not callable");

    static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        var prevLetter = false;
        foreach (var ch in s)
        {
            sb.Append(prevLetter ? char.ToLowerInvariant(ch) : char.ToUpperInvariant(ch));
            prevLetter = char.IsLetter(ch);
        }
        return sb.ToString();
    }

    public static object? Binary(string op, object? a, object? b, int line) => op switch
    {
        "==" => Equal(a, b),
        "!=" => !Equal(a, b),
        "<" or ">" or "<=" or ">=" => Compare(a, b, line) is var c && op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 },
        "in" => b switch
        {
            string s => s.Contains(Str(a), StringComparison.Ordinal),
            List<object?> l => l.Any(x => Equal(x, a)),
            Dictionary<string, object?> d => a is string k && d.ContainsKey(k),
            Undefined or null => throw new ChatTemplateException($"line {line}: 'in' on an undefined value"),
            _ => throw new ChatTemplateException($"line {line}: 'in' on {TypeName(b)}"),
        },
        "~" => Str(a) + Str(b),
        _ => Arith(op, a, b, line),
    };

    public static object? Arith(string op, object? a, object? b, int line)
    {
        if (op == "+" && a is string sa && b is string sb) return sa + sb;
        if (op == "+" && a is List<object?> la && b is List<object?> lb) return la.Concat(lb).ToList();
        if (op == "*" && a is string s && b is long times) return string.Concat(Enumerable.Repeat(s, (int)Math.Max(0, times)));
        if (a is bool ba) a = ba ? 1L : 0L;
        if (b is bool bb) b = bb ? 1L : 0L;
        if (a is long x && b is long y)
            return op switch
            {
                // Arms typed object: a switch with one double arm would turn every integer result into a float.
                "+" => (object)(x + y), "-" => x - y, "*" => x * y, "/" => (double)x / y,
                "//" => (long)Math.Floor((double)x / y), "%" => ((x % y) + y) % y,
                _ => throw new ChatTemplateException($"line {line}: operator '{op}'"),
            };
        if (a is long or double && b is long or double)
        {
            double p = Convert.ToDouble(a, CultureInfo.InvariantCulture), q = Convert.ToDouble(b, CultureInfo.InvariantCulture);
            return op switch
            {
                "+" => p + q, "-" => p - q, "*" => p * q, "/" => p / q, "//" => Math.Floor(p / q), "%" => p - q * Math.Floor(p / q),
                _ => throw new ChatTemplateException($"line {line}: operator '{op}'"),
            };
        }
        throw new ChatTemplateException($"line {line}: unsupported operand types for {op}: '{TypeName(a)}' and '{TypeName(b)}'");
    }

    static bool Equal(object? a, object? b) => (a, b) switch
    {
        (null or Undefined, null or Undefined) => a is null == b is null,
        (long x, double y) => x == y,
        (double x, long y) => x == y,
        (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second)),
        _ => Equals(a, b),
    };

    static int Compare(object? a, object? b, int line) => (a, b) switch
    {
        (string x, string y) => string.CompareOrdinal(x, y),
        (long or double, long or double) => Convert.ToDouble(a, CultureInfo.InvariantCulture).CompareTo(Convert.ToDouble(b, CultureInfo.InvariantCulture)),
        _ => throw new ChatTemplateException($"line {line}: cannot compare '{TypeName(a)}' with '{TypeName(b)}'"),
    };

    public static bool ApplyTest(string name, object? v, List<object?> args, int line) => name switch
    {
        "defined" => v is not Undefined,
        "undefined" => v is Undefined,
        "none" => v is null,
        "string" => v is string,
        "number" => v is long or double,
        "integer" => v is long,
        "float" => v is double,
        "boolean" => v is bool,
        "true" => v is true,
        "false" => v is false,
        "mapping" => v is Dictionary<string, object?> or Namespace,
        "sequence" or "iterable" => v is string or List<object?> or Dictionary<string, object?>,
        "callable" => v is Callable,
        "odd" => v is long o && o % 2 != 0,
        "even" => v is long e && e % 2 == 0,
        "eq" or "equalto" or "==" => Equal(v, args[0]),
        "ne" => !Equal(v, args[0]),
        "in" => (bool)Binary("in", v, args[0], line)!,
        _ => throw new ChatTemplateException($"line {line}: unsupported test '{name}'"),
    };

    public static object? ApplyFilter(string name, object? v, List<object?> args, Dictionary<string, object?> kwargs, int line) => name switch
    {
        "trim" => Str(v).Trim(),
        "length" or "count" => v switch
        {
            string s => (long)s.Length, List<object?> l => (long)l.Count, Dictionary<string, object?> d => (long)d.Count,
            _ => throw new ChatTemplateException($"line {line}: {TypeName(v)} has no length"),
        },
        "upper" => Str(v).ToUpperInvariant(),
        "lower" => Str(v).ToLowerInvariant(),
        "title" => Title(Str(v)),
        "capitalize" => Str(v) is var c && c.Length > 0 ? char.ToUpperInvariant(c[0]) + c[1..].ToLowerInvariant() : "",
        "string" => Str(v),
        "safe" => v,
        "int" => v switch { long l => l, double d => (long)d, string s when long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var p) => p, _ => 0L },
        "float" => v switch { long l => (double)l, double d => d, string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var p) => p, _ => 0.0 },
        "default" or "d" => v is Undefined || (args.Count > 1 && Truthy(args[1]) && !Truthy(v)) ? args.ElementAtOrDefault(0) ?? "" : v,
        "first" => Iterate(v, line).FirstOrDefault(Undefined.Instance),
        "last" => v is List<object?> l2 && l2.Count > 0 ? l2[^1] : Undefined.Instance,
        "list" => Iterate(v, line).ToList(),
        "reverse" => v is string rs ? new string(rs.Reverse().ToArray()) : Iterate(v, line).Reverse().ToList(),
        "join" => string.Join(args.Count > 0 ? Str(args[0]) : "", Iterate(v, line).Select(Str)),
        "replace" => Str(v).Replace(Str(args[0]), Str(args[1])),
        "items" => v is Dictionary<string, object?> d ? d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList() : throw new ChatTemplateException($"line {line}: items of {TypeName(v)}"),
        "regex_replace" => System.Text.RegularExpressions.Regex.Replace(Str(v), Str(args[0]), Str(args[1])),
        "tojson" => ToJson(v, kwargs.TryGetValue("indent", out var ind) && ind is long n ? (int)n : args.ElementAtOrDefault(0) is long n2 ? (int)n2 : null, 0),
        _ => throw new ChatTemplateException($"line {line}: unsupported filter '{name}'"),
    };

    /// <summary>Python's json.dumps(ensure_ascii=False) as transformers' tojson calls it: ", " and ": " separators, or "," with indent.</summary>
    static string ToJson(object? v, int? indent, int depth)
    {
        string Pad(int d) => indent is int n ? "\n" + new string(' ', n * d) : "";
        var sep = indent is null ? ", " : ",";
        return v switch
        {
            null or Undefined => "null",
            bool b => b ? "true" : "false",
            long l => l.ToString(CultureInfo.InvariantCulture),
            double d => double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : Str(d),
            string s => JsonSerializer.Serialize(s, new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }),
            List<object?> l => l.Count == 0 ? "[]" : "[" + string.Join(sep, l.Select(x => Pad(depth + 1) + ToJson(x, indent, depth + 1))) + Pad(depth) + "]",
            Dictionary<string, object?> o => o.Count == 0 ? "{}" : "{" + string.Join(sep, o.Select(kv => Pad(depth + 1) + ToJson(kv.Key, indent, depth + 1) + ": " + ToJson(kv.Value, indent, depth + 1))) + Pad(depth) + "}",
            _ => ToJson(Str(v), indent, depth),
        };
    }

    /// <summary>The strftime directives chat templates use (Llama 3.2's "%d %b %Y").</summary>
    public static string StrftimeToNet(string f) => new StringBuilder(f)
        .Replace("%d", "dd").Replace("%b", "MMM").Replace("%B", "MMMM").Replace("%Y", "yyyy").Replace("%m", "MM")
        .Replace("%H", "HH").Replace("%M", "mm").Replace("%S", "ss").ToString();
}
