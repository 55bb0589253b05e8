"""A bash command line parsed with tree-sitter-bash into the simple commands it runs.

Every simple command in the tree is taken, wherever it stands (lists and pipelines, subshells and
`{ }`, `if` / `for` / `while` / `case` bodies, functions, and `$( )`, backquotes and `<( )`, whose
commands are marked `nested`), with its words as bash would pass them (quotes and escapes removed;
`$VAR` and `$(...)` kept as written), its redirections and the heredoc bodies and here-strings fed
to it. A line the parser cannot read whole is completed as a shell waiting for more input would (an
open heredoc, quote or `$(` closed at the end), else its ERROR parts are read word by word (see
`read_command_line`). What the commands do is `comem_cli/shell.py`'s business.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

@dataclass
class SimpleCommand:
    """One simple command as the parse tree gives it, before `shell.py` reduces it to a `Command`."""

    argv: list[str] = field(default_factory=list)  # its words, quotes removed as bash would pass them
    redirects: list[tuple[str, str]] = field(default_factory=list)  # (operator, target): (">", "out.txt")
    inputs: list[str] = field(default_factory=list)  # heredoc bodies and here-strings fed to it
    nested: bool = False  # inside `$( )`, backquotes or `<( )`


COMMAND_NODES = {"command", "declaration_command", "unset_command", "test_command"}
SUBSTITUTION_NODES = {"command_substitution", "process_substitution"}
STATEMENT_NODES = COMMAND_NODES | {  # (and what substitutions() never looks into)
    "redirected_statement", "list", "pipeline", "subshell", "compound_statement", "negated_command", "if_statement",
    "while_statement", "for_statement", "c_style_for_statement", "case_statement", "function_definition",
    "heredoc_body", "comment",
}
REDIRECT_NODES = {"file_redirect", "herestring_redirect", "heredoc_redirect"}
VALUE_NODES = {  # nodes that stand for one word (or part of one) of a command
    "word", "string", "raw_string", "ansi_c_string", "translated_string", "concatenation", "number", "simple_expansion",
    "expansion", "command_substitution", "process_substitution", "arithmetic_expansion", "brace_expression",
    "string_content", "regex", "extglob_pattern", "variable_name", "special_variable_name",
}
SEPARATOR_TOKENS = {";", "&", "&&", "||", "|", "|&", ";;", ";&", ";;&", "\n"}
WRITE_REDIRECTS = {">", ">>", "&>", "&>>", ">|", "<>", ">&"}
MAX_DEPTH = 200  # deeper parse trees (pathological input) are not read further
REPAIR_SUFFIXES = (b'"', b"'", b"`", b")")
# tree-sitter's error recovery takes quadratic time and memory on some junk (64 kB of `>` or `))`:
# 20-30 s; 180 kB of `cat a | ` ending in a `|`: 2 GB), so it reads at most the first MAX_CHARS of a
# command line (cut at a line end; the bundled runs' longest is 6 kB, a heredoc writing a file), and a
# parse still running after its time budget is cancelled (then words are read line by line).
MAX_CHARS = 32_000
PARSE_SECONDS, PARSE_SECONDS_PER_MB = 0.5, 3.0

_DESCRIPTOR_DUP = re.compile(r"^\d*-?$")  # the target of 2>&1, >&2, <&-: plumbing, not a file
_DQ_ESCAPE = re.compile(r'\\([$`"\\\n])')
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ANSI_C_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_ANSI_C = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "v": "\v"}
# tree-sitter-bash 0.25.1 can crash (SIGSEGV) on a `{` followed by a 4-byte UTF-8 character (its issue
# #337): the parser is given a copy with each such character (and each lone surrogate) replaced by as
# many bytes of word characters (`¤¤`, U+FFFD), so every node's offsets still hold in the original.
# NUL bytes likewise (a run of them takes it quadratic time: 45 s for 64 kB).
_ASTRAL = re.compile(rb"[\xf0-\xf7][\x80-\xbf]{3}")
_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")
_local = threading.local()
_language = None


def _parser():
    """A tree-sitter parser for bash, one per thread (imported on first use: `comem --help` never needs it)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        import tree_sitter
        import tree_sitter_bash

        global _language
        if _language is None:
            _language = tree_sitter.Language(tree_sitter_bash.language())
        parser = _local.parser = tree_sitter.Parser(_language)
    return parser


def _parse(data: bytes, deadline: float):
    """tree-sitter's tree of `data`, or None when the parse ran past `deadline` (and was cancelled)."""
    parser, view = _parser(), memoryview(data)
    try:
        return parser.parse(lambda offset, _: view[offset:offset + 65536], progress_callback=lambda *_: time.monotonic() > deadline)
    except ValueError:  # "Parsing failed": cancelled
        parser.reset()  # else the next parse would resume this one
        return None


def _words_by_line(action: str) -> list[SimpleCommand]:
    """What is read of a text tree-sitter could not parse in time: each line's words, quotes stripped."""
    return [SimpleCommand(argv=[w.strip("'\"") or w for w in line.split()]) for line in action.splitlines() if line.strip()]


def _unescape(word: str) -> str:
    """An unquoted word as bash passes it: `a\\ b` -> `a b`, `\\;` -> `;` (a backslash-newline joins lines)."""
    return _ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), word) if "\\" in word else word


def _ansi_c(body: str) -> str:
    """The body of `$'...'` with its escapes decoded (`\\n`, `\\t`, `\\x41`, `\\101`...)."""
    def one(m: re.Match) -> str:
        e = m.group(1)
        if e[0] == "x" and len(e) > 1:
            return chr(int(e[1:], 16))
        if e[0] in "01234567":
            return chr(int(e, 8) & 0xFF)
        return _ANSI_C.get(e, e)

    return _ANSI_C_ESCAPE.sub(one, body)


class _Reader:
    """Walks a parse tree and collects its simple commands, in source order (a command before the ones
    in its `$( )`), wherever they stand: lists, pipelines, subshells, `{ }`, `if` / `for` / `while` /
    `case` bodies, functions, substitutions. Tolerates ERROR nodes (see `error`)."""

    def __init__(self, source: bytes):
        self.source = source
        self.commands: list[SimpleCommand] = []
        self.by_node: dict[int, SimpleCommand] = {}  # command nodes already read (an ERROR after one extends it)
        self.heredoc_resume = 0  # where the next heredoc body may start (after the last one's delimiter)

    def text(self, node) -> str:
        return self.raw(node.start_byte, node.end_byte)

    def raw(self, start: int, end: int) -> str:
        chunk = self.source[start:end]
        try:
            return chunk.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return chunk.decode("utf-8", "replace")

    def emit(self, command: SimpleCommand, node=None) -> SimpleCommand:
        self.commands.append(command)
        if node is not None:
            self.by_node[node.id] = command
        return command

    # -- words

    def value(self, node) -> str:
        """A word as bash passes it to the command (expansions and substitutions stay as written)."""
        kind = node.type
        if node.is_missing:
            return ""
        text = self.text(node)
        if kind == "word":
            return _unescape(text)
        if kind == "string":
            inner = text[1:-1] if len(text) >= 2 and text.endswith('"') else text[1:]
            return _DQ_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), inner)
        if kind == "raw_string":
            return text[1:-1] if len(text) >= 2 and text.endswith("'") else text[1:]
        if kind == "ansi_c_string":
            return _ansi_c(text[2:-1] if len(text) >= 3 and text.endswith("'") else text[2:])
        if kind == "translated_string":
            return "".join(self.value(c) for c in node.named_children)
        if kind in ("concatenation", "command_name"):
            parts, pos = [], node.start_byte
            for child in node.children:
                if child.start_byte > pos:
                    parts.append(self.raw(pos, child.start_byte))
                parts.append(self.value(child))
                pos = max(pos, child.end_byte)
            if pos < node.end_byte:
                parts.append(self.raw(pos, node.end_byte))
            return "".join(parts)
        return text

    def substitutions(self, node, depth: int) -> None:
        """The commands inside `$( )`, backquotes and `<( )` in the words under `node` (not in heredoc
        bodies, nor in the statements after a heredoc marker: those are visited on their own)."""
        if depth > MAX_DEPTH:
            return
        for child in node.children:
            if child.type in SUBSTITUTION_NODES:
                self.visit(child, True, depth + 1)
            elif child.child_count and child.type not in STATEMENT_NODES:
                self.substitutions(child, depth + 1)

    # -- statements

    def visit(self, node, nested: bool, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        kind = node.type
        if kind in ("comment", "heredoc_body"):
            return
        if kind in COMMAND_NODES:
            self.simple(node, nested, depth)
        elif kind == "redirected_statement":
            self.redirected(node, nested, depth)
        elif kind == "ERROR":
            self.error(node, nested, depth, None)
        elif kind in ("list", "pipeline"):  # `a && b && c` is list(list(a, b), c): read flat, at one depth
            stack = [node]
            while stack:
                part = stack.pop()
                if part.type == kind:
                    stack.extend(reversed(part.children))
                else:
                    self.visit(part, nested, depth + 1)
        else:
            nested = nested or kind in SUBSTITUTION_NODES
            for child in node.children:
                self.visit(child, nested, depth + 1)

    def simple(self, node, nested: bool, depth: int) -> SimpleCommand:
        """A command node: its name and arguments (prefix `VAR=value` assignments left out), its redirections."""
        command = self.emit(SimpleCommand(nested=nested), node)
        kind = node.type
        follow = []
        for i, child in enumerate(node.children):
            if child.type in REDIRECT_NODES:
                follow += self.redirect(child, command)
            elif kind != "command":  # `export X=1`, `unset X`, `[ -f x ]`: every word, the keyword first
                self.words(child, command.argv, depth)
            elif node.field_name_for_child(i) in ("name", "argument") and not child.is_missing:
                command.argv.append(self.value(child))
        self.substitutions(node, depth)
        for child in follow:
            self.visit(child, nested, depth + 1)
        return command

    def words(self, node, out: list[str], depth: int) -> None:
        """Every word under `node`, in order (the operands of `[ ]`, `export`, `unset`)."""
        if node.is_missing or depth > MAX_DEPTH:
            return
        if node.type == "variable_assignment":  # `X="a b"` -> `X=a b`
            value = node.child_by_field_name("value")
            if value is None:
                out.append(self.text(node))
            else:
                out.append(self.raw(node.start_byte, value.start_byte) + self.value(value))
        elif node.type in VALUE_NODES or node.type == "test_operator" or not node.child_count:
            out.append(self.value(node))
        else:
            for child in node.children:
                self.words(child, out, depth + 1)

    def redirect(self, node, command: SimpleCommand) -> list:
        """Add a redirection to `command`; return what follows a heredoc marker on its line (run after it)."""
        kind = node.type
        if kind == "herestring_redirect":
            values = [self.value(c) for c in node.named_children if c.type != "file_descriptor"]
            command.inputs.append(" ".join(values))
            return []
        if kind == "file_redirect":
            operator = next((c.type for c in node.children if not c.is_named), "")
            targets = [c for c in node.children_by_field_name("destination") if not c.is_missing]
            target = self.value(targets[0]) if targets else ""
            command.argv.extend(self.value(c) for c in targets[1:])  # `echo > f hello`: hello is an argument
            if operator in ("<&", ">&", "<&-", ">&-") and _DESCRIPTOR_DUP.match(target):
                return []
            command.redirects.append((operator, target))
            return []
        follow = []  # heredoc_redirect
        for i, child in enumerate(node.children):
            field_name = node.field_name_for_child(i)
            if child.type == "heredoc_start":
                marker_line_end = self.source.find(b"\n", child.end_byte)
                body_start = len(self.source) if marker_line_end < 0 else marker_line_end + 1
            elif child.type == "heredoc_body":
                command.inputs.append(self.heredoc_body(body_start, child))
            elif child.type in REDIRECT_NODES:
                follow += self.redirect(child, command)
            elif field_name == "argument":
                command.argv.append(self.value(child))
            elif child.is_named and child.type not in ("heredoc_start", "heredoc_end", "file_descriptor"):
                follow.append(child)  # `cat <<EOF | python`, `cat <<EOF && ls`
        return follow

    def heredoc_body(self, start: int, body) -> str:
        """A heredoc's body as written: from the line after its marker (or after the heredoc before it on
        that line) to its delimiter line (the node itself starts at the first non-blank character)."""
        start = max(start, self.heredoc_resume)
        end = max(body.end_byte, start)
        end_line = self.source.find(b"\n", end)
        self.heredoc_resume = len(self.source) if end_line < 0 else end_line + 1  # past the delimiter line
        body, newline, last = self.raw(start, end).rpartition("\n")
        return body if newline and not last.strip() else body + newline + last  # (`<<-`: the tabs before the delimiter)

    def redirected(self, node, nested: bool, depth: int) -> SimpleCommand:
        """A statement with redirections: they belong to its command, or to the compound statement
        (`for ...; done > log`, `( ... ) 2> err`): then they make a command of their own, with no name.
        tree-sitter-bash hangs the redirections of `a && b > f` and `a | b > f` on the whole list or
        pipeline; bash gives them to its last command, and so does this."""
        body = node.child_by_field_name("body")
        if body is not None and body.type in COMMAND_NODES:
            command = self.simple(body, nested, depth + 1)
        else:
            command = None
            if body is not None:
                self.visit(body, nested, depth + 1)
                last = body
                while last.type in ("list", "pipeline") and last.named_child_count:
                    last = last.named_children[-1]
                command = self.by_node.get(last.id) if last.type in COMMAND_NODES | {"redirected_statement"} else None
            command = command or self.emit(SimpleCommand(nested=nested))
        self.by_node[node.id] = command
        follow = []
        for child in node.children:
            if child.type in REDIRECT_NODES:
                follow += self.redirect(child, command)
                self.substitutions(child, depth + 1)  # `> $(mktemp)`
            elif child.is_named and child.id != (body.id if body is not None else None):
                follow.append(child)
        for child in follow:
            self.visit(child, nested, depth + 1)
        return command

    def error(self, node, nested: bool, depth: int, current: SimpleCommand | None) -> SimpleCommand | None:
        """A part tree-sitter could not parse: the commands in it are read as usual; loose words and
        redirections join the command before them on the same line (up to a separator), or make one."""
        if depth > MAX_DEPTH:
            return current
        if current is None and node.prev_sibling is not None:
            current = self.by_node.get(node.prev_sibling.id)
        for child in node.children:
            kind = child.type
            if kind in COMMAND_NODES:
                current = self.simple(child, nested, depth + 1)
            elif kind == "redirected_statement":
                current = self.redirected(child, nested, depth + 1)
            elif kind in REDIRECT_NODES:
                current = current or self.emit(SimpleCommand(nested=nested))
                for after in self.redirect(child, current):
                    self.visit(after, nested, depth + 1)
            elif kind == "heredoc_body":
                current = current or self.emit(SimpleCommand(nested=nested))
                current.inputs.append(self.heredoc_body(child.start_byte, child))
            elif kind == "ERROR" and child.child_count:
                current = self.error(child, nested, depth + 1, current)
            elif kind in VALUE_NODES or kind == "ERROR":
                word = self.value(child)
                if kind == "ERROR" and word.strip("'\"`") == "":
                    continue  # a stray quote
                current = current or self.emit(SimpleCommand(nested=nested))
                current.argv.append(word)
                self.substitutions(child, depth + 1)
            elif not child.is_named:
                if kind in SEPARATOR_TOKENS:
                    current = None
            elif kind not in ("heredoc_start", "heredoc_end", "file_descriptor", "comment"):
                self.visit(child, nested, depth + 1)
                current = None
        return current


def _unterminated_heredocs(source: bytes, root) -> bytes:
    """The delimiter lines that would close the heredocs left open (`cat <<EOF` with no `EOF` line)."""
    closers: list[bytes] = []
    stack, seen, starts = [root], 0, 0
    while stack and seen < 100_000 and starts < 20:
        node = stack.pop()
        seen += 1
        if node.type == "heredoc_start":
            starts += 1
            delimiter = re.sub(rb"[\"'\\]", b"", source[node.start_byte:node.end_byte]).strip()
            rest = source[node.end_byte:]
            if delimiter and not re.search(rb"(?m)^[ \t]*" + re.escape(delimiter) + rb"[ \t]*$", rest):
                closers.append(b"\n" + delimiter)
        elif node.has_error or node.type == "ERROR":
            stack.extend(node.children)
    return b"".join(reversed(closers))


def read_command_line(action: str) -> list[SimpleCommand]:
    """The simple commands of a bash command line, from tree-sitter-bash's parse tree.

    A line tree-sitter cannot parse whole (ERROR nodes) is first completed the way a shell waiting
    for more input would be: open heredocs closed at the end (the rest is their body), else an open
    quote, backquote or `$(` closed. If no completion parses cleanly, the tree with its ERROR nodes
    is read as it is (loose words join the command before them). Only the first MAX_CHARS are read.
    Never raises.
    """
    if len(action) > MAX_CHARS:
        cut = action.rfind("\n", 0, MAX_CHARS)
        action = action[: cut if cut > 0 else MAX_CHARS]
    source = action.encode("utf-8", "surrogatepass")
    parsed = _ASTRAL.sub(b"\xc2\xa4\xc2\xa4", _SURROGATE.sub(b"\xef\xbf\xbd", source)) if not action.isascii() else source
    parsed = parsed.replace(b"\0", b"\x01")
    deadline = time.monotonic() + PARSE_SECONDS + PARSE_SECONDS_PER_MB * len(parsed) / 1e6
    tree = _parse(parsed, deadline)
    if tree is None:
        return _words_by_line(action)
    if tree.root_node.has_error:
        closers = _unterminated_heredocs(parsed, tree.root_node)
        for suffix in ([closers] if closers else []) + [s + closers for s in REPAIR_SUFFIXES]:
            candidate = _parse(parsed + suffix, deadline)
            if candidate is None:
                break
            if not candidate.root_node.has_error:
                source, tree = source + suffix, candidate
                break
    reader = _Reader(source)
    reader.visit(tree.root_node, False, 0)
    return reader.commands
