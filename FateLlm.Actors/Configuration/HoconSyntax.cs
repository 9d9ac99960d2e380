namespace FateLlm.Actors.Configuration;

/// <summary>A HOCON text that does not parse: where (line and column, 1-based) and what was expected.</summary>
public sealed class HoconSyntaxException(string origin, int line, int column, string problem)
    : Exception($"{origin}:{line}:{column}: {problem}")
{
    public int Line { get; } = line;
    public int Column { get; } = column;
}

/// <summary>
/// A strict syntax check of HOCON before Akka parses it. Akka's parser forgives too much: a missing closing brace, an
/// unterminated string that swallows the rest of the file, <c>peft [</c> for <c>peft {</c>, <c>rounds = = 6</c> — each
/// is accepted and turns into a different configuration. This checker accepts the HOCON that configuration files use
/// (objects, arrays, quoted, triple-quoted and unquoted strings, value concatenation on a line, <c>${}</c>
/// substitutions, <c>include</c>, <c>#</c> and <c>//</c> comments, <c>=</c>, <c>:</c> and <c>+=</c>) and reports the first
/// departure with its position and what was expected.
/// </summary>
public sealed class HoconSyntax
{
    readonly string _text, _origin;
    int _pos, _line = 1, _col = 1;

    HoconSyntax(string text, string origin)
    {
        _text = text;
        _origin = origin;
    }

    public static void Check(string text, string origin) => new HoconSyntax(text, origin).Document();

    const string Forbidden = "$\"{}[]:=,+#`^?!@*&\\";

    char Peek(int ahead = 0) => _pos + ahead < _text.Length ? _text[_pos + ahead] : '\0';
    bool End => _pos >= _text.Length;

    void Advance()
    {
        if (Peek() == '\n') { _line++; _col = 1; }
        else _col++;
        _pos++;
    }

    HoconSyntaxException Error(string problem, (int Line, int Col)? at = null) =>
        new(_origin, at?.Line ?? _line, at?.Col ?? _col, problem);

    (int Line, int Col) Here => (_line, _col);

    static string Show(char c) => c switch { '\0' => "the end of the file", '\n' => "the end of the line", _ => $"'{c}'" };

    bool AtComment => Peek() == '#' || (Peek() == '/' && Peek(1) == '/');

    /// <summary>Spaces and tabs, and a comment up to (not including) the end of its line.</summary>
    void InlineSpace()
    {
        while (!End)
        {
            if (Peek() is ' ' or '\t' or '\r' or '\uFEFF') Advance();
            else if (AtComment) { while (!End && Peek() != '\n') Advance(); }
            else break;
        }
    }

    /// <summary>Inline space, new lines and commas between fields or elements; true if a separator was crossed.</summary>
    bool Separators(bool allowComma = true)
    {
        var crossed = false;
        while (true)
        {
            InlineSpace();
            if (Peek() == '\n' || (allowComma && Peek() == ',')) { Advance(); crossed = true; }
            else return crossed;
        }
    }

    void Document()
    {
        Separators(allowComma: false);
        if (Peek() == '{')
        {
            var open = Here;
            Advance();
            ObjectBody('}', open);
            Expect('}', open);
        }
        else ObjectBody('\0', null);
        Separators(allowComma: false);
        if (!End) throw Error($"unexpected {Show(Peek())} after the end of the document");
    }

    void Expect(char close, (int Line, int Col) open)
    {
        if (Peek() == close) { Advance(); return; }
        if (End) throw Error($"missing '{close}' to close the '{(close == '}' ? '{' : '[')}' at line {open.Line}, column {open.Col}");
        throw Error($"found {Show(Peek())} where '{close}' should close the '{(close == '}' ? '{' : '[')}' at line {open.Line}, column {open.Col}");
    }

    void ObjectBody(char close, (int Line, int Col)? open)
    {
        Separators();
        while (!End && Peek() != close)
        {
            if (Peek() is '}' or ']')
                throw open is { } o ? Error($"found {Show(Peek())} where '{close}' should close the '{{' at line {o.Line}, column {o.Col}")
                    : Error($"unexpected {Show(Peek())}: there is nothing to close");
            Field();
            var crossed = Separators();
            if (!crossed && !End && Peek() != close)
                throw Error($"expected ',' or a new line before the next setting, found {Show(Peek())}");
        }
    }

    void Field()
    {
        if (Keyword("include"))
        {
            InlineSpace();
            if (Peek() != '"') throw Error($"expected a quoted file name after 'include', found {Show(Peek())}");
            QuotedString();
            return;
        }
        var key = Key();
        InlineSpace();
        if (Peek() == '{')
        {
            var open = Here;
            Advance();
            ObjectBody('}', open);
            Expect('}', open);
            return;
        }
        if (Peek() is '=' or ':') Advance();
        else if (Peek() == '+' && Peek(1) == '=') { Advance(); Advance(); }
        else throw Error($"expected '=', ':' or '{{' after '{key}', found {Show(Peek())}");
        InlineSpace();
        if (Peek() is '\n' or '\0' or ',' or '}' or ']' or '=' or ':' || AtComment)
            throw Error($"expected a value for '{key}', found {Show(AtComment ? '\n' : Peek())}");
        Value(key);
    }

    bool Keyword(string word)
    {
        if (string.CompareOrdinal(_text, _pos, word, 0, word.Length) != 0) return false;
        var after = Peek(word.Length);
        if (after is not (' ' or '\t')) return false;
        for (int i = 0; i < word.Length; i++) Advance();
        return true;
    }

    string Key()
    {
        var start = _pos;
        while (true)
        {
            if (Peek() == '"') QuotedString();
            else
            {
                var partStart = _pos;
                while (!End && !char.IsWhiteSpace(Peek()) && Peek() != '.' && !Forbidden.Contains(Peek()) && !AtComment) Advance();
                if (_pos == partStart) throw Error($"expected a setting name, found {Show(Peek())}");
            }
            if (Peek() != '.') break;
            Advance();
        }
        return _text[start.._pos];
    }

    const string ListElement = "the list element";

    /// <summary>A value, with same-kind concatenation on its line (strings with strings, arrays with arrays, objects with objects).</summary>
    void Value(string key)
    {
        var kind = ValuePart();
        while (true)
        {
            InlineSpace();
            var c = Peek();
            if (End || c is '\n' or ',' or '}' or ']') return;
            var next = c == '[' ? 'a' : c == '{' ? 'o' : 's';
            if (next != kind) throw Error($"expected ',' or a new line after the value of '{key}', found {Show(c)}");
            // In a list, `{a} {b}` is HOCON's object concatenation: one element with b's fields over a's, never two.
            if (kind == 'o' && key == ListElement)
                throw Error("two objects side by side in a list are merged into one (HOCON object concatenation); separate the list's elements with ',' or a new line");
            ValuePart();
        }
    }

    /// <summary>One part of a value; returns its kind: 'a' array, 'o' object, 's' simple.</summary>
    char ValuePart()
    {
        var c = Peek();
        switch (c)
        {
            case '{':
            {
                var open = Here;
                Advance();
                ObjectBody('}', open);
                Expect('}', open);
                return 'o';
            }
            case '[':
            {
                var open = Here;
                Advance();
                Separators();
                while (!End && Peek() != ']')
                {
                    if (Peek() == '}') throw Error($"found '}}' where ']' should close the '[' at line {open.Line}, column {open.Col}");
                    Value(ListElement);
                    if (!Separators() && !End && Peek() != ']') throw Error($"expected ',' or a new line between list elements, found {Show(Peek())}");
                }
                Expect(']', open);
                return 'a';
            }
            case '"':
                QuotedString();
                return 's';
            case '$':
                Substitution();
                return 's';
            default:
                var start = _pos;
                while (!End && Peek() is not ('\n' or ' ' or '\t' or '\r') && !Forbidden.Contains(Peek()) && !AtComment) Advance();
                if (_pos == start) throw Error($"expected a value, found {Show(Peek())}");
                return 's';
        }
    }

    void Substitution()
    {
        var open = Here;
        Advance();
        if (Peek() != '{') throw Error("expected '{' after '$' (a substitution is written ${path})");
        Advance();
        if (Peek() == '?') Advance();
        while (!End && Peek() != '}' && Peek() != '\n') Advance();
        if (Peek() != '}') throw Error($"missing '}}' to close the substitution at line {open.Item1}, column {open.Item2}");
        Advance();
    }

    void QuotedString()
    {
        var open = Here;
        if (Peek(1) == '"' && Peek(2) == '"')
        {
            for (int i = 0; i < 3; i++) Advance();
            while (!(Peek() == '"' && Peek(1) == '"' && Peek(2) == '"'))
            {
                if (End) throw Error($"unterminated \"\"\" string opened at line {open.Item1}, column {open.Item2}", open);
                Advance();
            }
            while (Peek() == '"') Advance(); // closing quotes (extra quotes belong to the string)
            return;
        }
        Advance();
        while (Peek() != '"')
        {
            if (End || Peek() == '\n')
                throw Error($"unterminated string opened at line {open.Item1}, column {open.Item2} (a quoted value must close on its line)", open);
            if (Peek() == '\\')
            {
                var escape = Here;
                Advance();
                if (Peek() == 'u')
                {
                    Advance();
                    for (int i = 0; i < 4; i++)
                    {
                        if (!Uri.IsHexDigit(Peek())) throw Error("expected 4 hex digits after \\u", escape);
                        Advance();
                    }
                    continue;
                }
                if (Peek() is not ('"' or '\\' or '/' or 'b' or 'f' or 'n' or 'r' or 't'))
                    throw Error($"invalid escape '\\{(End ? ' ' : Peek())}' (valid: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)", escape);
            }
            Advance();
        }
        Advance();
    }
}
