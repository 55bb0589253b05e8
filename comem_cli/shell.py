"""A bash command line read as what it does: programs, paths, words, flags, code, files written.

One reader for every part of comem that needs to know what an agent's command did: the training
reward compares two commands with it (reward.py) and the memory-quality scores take the
facts a command uses or the files it writes from it (memory/quality.py).

How a command line is read: `comem_cli/bash.py` parses it with tree-sitter-bash into simple
commands (words as bash would pass them, redirections, heredoc bodies), wherever they stand. Wrappers (`sudo`, `env`,
`timeout`, `time`, `nohup`, `xargs`...) and leading `VAR=value` assignments are peeled off. Each
command is reduced to: a canonical program (`python3`, `/usr/bin/python3` -> `python`; `python -m
pytest`, `py.test` -> `pytest`; `egrep` -> `grep`; `sed -i` is the program `sed -i`, an edit,
distinct from `sed -n`, a view; `./x.py` runs `python`), a subcommand (for `git`, `pip`, `npm`,
`cargo`, `docker`...), paths (tokens with a `/` or a file extension, redirect targets; normalized:
`./` and trailing `/` removed, `.` dropped), words (other arguments such as search patterns, split
into lower-case word tokens), a line range (for viewers), flags (`-rn` and `-nr` are the same for
programs whose short flags combine), code (heredoc bodies, `python -c`, `perl -e`, `bash -c` and
`sed -i` scripts) and the files it writes (`>` / `>>` targets, `sed -i` / `perl -i` / `tee` /
`touch` operands, the destination of `cp` / `mv`). The *main* command of a line is the first one
that is not trivial (`cd`, `export`, `source`, `set`, ...) and not nested, where there is one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from comem_cli.bash import WRITE_REDIRECTS, SimpleCommand, read_command_line

VIEWERS = {"cat", "head", "tail", "nl", "less", "more", "sed", "bat"}
TRIVIAL = {"cd", "pushd", "popd", "export", "set", "unset", "source", ".", ":", "true", "alias", "shopt"}
SUBCOMMAND_PROGRAMS = {
    "git", "pip", "conda", "npm", "yarn", "pnpm", "cargo", "go", "docker", "apt", "apt-get", "poetry", "uv",
    "hg", "svn", "gh", "kubectl", "brew", "django-admin", "mamba", "rustup", "dotnet", "bundle", "gem",
}
ALIASES = {"egrep": "grep", "fgrep": "grep", "py.test": "pytest", "pip3": "pip", "ripgrep": "rg", "gawk": "awk", "mawk": "awk"}
PATTERN_PROGRAMS = {"grep", "rg", "ag", "ack", "awk"}  # the first operand is a pattern, not a path
CLUSTER_PROGRAMS = {"grep", "rg", "ls", "rm", "cp", "mv", "mkdir", "chmod", "tar", "du", "df", "ps", "wc", "sort", "uniq"}
VALUE_FLAGS = {  # flags whose value is the next token, where that matters for finding an operand
    "grep": {"-A", "-B", "-C", "-m", "-e", "-f", "-d", "-D", "--include", "--exclude", "--exclude-dir"},
    "rg": {"-A", "-B", "-C", "-m", "-e", "-f", "-g", "-t", "-T", "--glob", "--type"},
    "ag": {"-A", "-B", "-C", "-m", "-G"},
    "ack": {"-A", "-B", "-C", "-m"},
    "awk": {"-F", "-v", "-f"},
    "sed": {"-e", "-f", "-l"},
    "git": {"-C", "-c", "--git-dir", "--work-tree"},
    "pip": {"-r", "-c", "-e", "-t", "--target"},
    "python": {"-W", "-X"},
}
WRAPPERS = {"sudo", "env", "time", "nohup", "timeout", "xargs", "command", "exec", "builtin", "stdbuf", "nice", "unbuffer"}
WRAPPER_VALUE_FLAGS = {"timeout": {"-s", "-k", "--signal", "--kill-after"}, "xargs": {"-I", "-n", "-P", "-d", "-L", "-E", "-s"},
                       "nice": {"-n"}, "sudo": {"-u", "-g"}, "env": {"-u", "-C"}}

_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_FILE_LIKE = re.compile(r"^[\w.\-+@]*\w\.[A-Za-z][A-Za-z0-9]{0,7}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_SED_RANGE = re.compile(r"^\s*(\d+)\s*(?:,\s*(\d+|\$))?\s*p\s*$")


@dataclass
class Command:
    """One simple command of a command line, reduced to what the reward compares."""

    program: str
    family: str  # the binary (`sed` for both `sed -n` and `sed -i`)
    subcommand: str | None = None
    paths: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    flags: set[str] = field(default_factory=set)
    code: list[str] = field(default_factory=list)
    lines: tuple[int, int] | None = None  # the line range a viewer shows (`sed -n '5,9p'`, `head -n 9`)
    writes: set[str] = field(default_factory=set)  # files it creates or changes (`> f`, `sed -i`, `tee`, `touch`...)
    nested: bool = False  # runs inside a `$( )`, backquotes or `<( )` of another command

    @property
    def trivial(self) -> bool:
        return self.program in TRIVIAL


def normalize_path(p: str) -> str:
    """`./a//b/` -> `a/b`; `.` -> `` (the current directory is the default everywhere)."""
    p = re.sub(r"/+", "/", p.strip())
    while p.startswith("./"):
        p = p[2:]
    p = p.replace("/./", "/")
    if len(p) > 1:
        p = p.rstrip("/")
    return "" if p in (".", "") else p


def _is_path(token: str) -> bool:
    if "://" in token or token.startswith("-"):
        return False
    return "/" in token or bool(_FILE_LIKE.match(token)) or token in (".", "..", "~")


def _word_tokens(token: str) -> set[str]:
    words = set(re.findall(r"\w+", token.lower()))
    return words or ({token} if token.strip() else set())


def _peel(tokens: list[str]) -> list[str]:
    """Drop leading assignments and wrappers (`sudo`, `env X=1`, `timeout 60`, `xargs -I {}`...)."""
    tokens = list(tokens)
    while tokens:
        if _ASSIGNMENT.match(tokens[0]):
            tokens.pop(0)
            continue
        name = tokens[0].rsplit("/", 1)[-1]
        if name not in WRAPPERS or len(tokens) == 1:
            return tokens
        tokens.pop(0)
        value_flags = WRAPPER_VALUE_FLAGS.get(name, set())
        while tokens and (tokens[0].startswith("-") or (name == "env" and _ASSIGNMENT.match(tokens[0]))):
            flag = tokens.pop(0)
            if flag in value_flags and tokens:
                tokens.pop(0)
        if name == "timeout" and tokens and re.match(r"^\d+(\.\d+)?[smhd]?$", tokens[0]):
            tokens.pop(0)
    return tokens


def _canonical(name: str) -> str:
    name = name.rsplit("/", 1)[-1] if "/" in name.rstrip("/") else name
    if _PYTHON.match(name):
        return "python"
    return ALIASES.get(name, name)


def _flag_key(program: str, flag: str) -> str:
    if program in CLUSTER_PROGRAMS and re.match(r"^-[A-Za-z]{2,6}$", flag):
        return "-" + "".join(sorted(flag[1:]))
    return flag


def _take_redirections(simple: SimpleCommand, command: Command) -> None:
    """Redirect targets are paths (written by `>` / `>>`); heredoc bodies and here-strings are code."""
    command.code.extend(simple.inputs)
    for operator, target in simple.redirects:
        if target and not target.startswith("/dev/"):
            command.paths.add(normalize_path(target))
            if operator in WRITE_REDIRECTS:
                command.writes.add(normalize_path(target))


def _python_args(args: list[str], command: Command) -> tuple[str, list[str]]:
    """`python -m mod ...` runs `mod`; `python -c code`; otherwise the script and its arguments remain."""
    for j, a in enumerate(args):
        if a == "-m" and j + 1 < len(args):
            return _canonical(args[j + 1]), args[j + 2:]
        if a == "-c" and j + 1 < len(args):
            command.code.append(args[j + 1])
            command.flags.add("-c")
            return "python", args[j + 2:]
        if not a.startswith("-"):
            if j > 0 and args[j - 1] in VALUE_FLAGS["python"]:
                continue  # the value of -W / -X
            return "python", args[j:]
        command.flags.add(a)
    return "python", []


def _inline_code_args(program: str, args: list[str], command: Command) -> tuple[str, list[str]]:
    """`perl -pe CODE`, `bash -c CODE`, `node -e CODE`: the code is code; `perl -i` edits."""
    rest: list[str] = []
    j = 0
    while j < len(args):
        a = args[j]
        if re.match(r"^-[a-zA-Z]*[ecE]$", a) and j + 1 < len(args):
            command.code.append(args[j + 1])
            command.flags.add(a)
            j += 2
            continue
        if program == "perl" and re.match(r"^-[a-zA-Z]*i", a):
            program = "perl -i"
        rest.append(a)
        j += 1
    return program, rest


def _sed_args(args: list[str], command: Command) -> tuple[str, list[str]]:
    """`sed -i` is an edit (its script is code); otherwise sed views (its script is words, e.g. a line range)."""
    editing = any(a == "-i" or a.startswith("--in-place") or (a.startswith("-i") and len(a) <= 6) for a in args)
    have_e = any(a in ("-e", "--expression") for a in args)
    scripts, rest = [], []
    j = 0
    while j < len(args):
        a = args[j]
        if a in ("-e", "--expression", "-f") and j + 1 < len(args):
            scripts.append(args[j + 1])
            j += 2
            continue
        if a.startswith("-") and a != "-":
            if not a.startswith("-i") and not a.startswith("--in-place") and (editing or a not in ("-n", "--quiet")):
                command.flags.add(a)  # -n is implied by a print script: `sed -n '5,9p'` just views lines
        elif not have_e and not scripts:
            scripts.append(a)
        else:
            rest.append(a)
        j += 1
    if editing:
        command.code.extend(scripts)
    else:
        for script in scripts:
            lines = _SED_RANGE.match(script)
            if lines and len(scripts) == 1:
                end = lines.group(2) or lines.group(1)
                command.lines = (int(lines.group(1)), 10**9 if end == "$" else int(end))
            else:
                command.words |= _word_tokens(script)
    return ("sed -i" if editing else "sed"), rest


def _head_lines(args: list[str], command: Command) -> list[str]:
    """`head -n 20`, `head -20`, `head --lines=20` show lines 1..20."""
    rest, j = [], 0
    while j < len(args):
        a = args[j]
        count = None
        if a in ("-n", "--lines") and j + 1 < len(args) and args[j + 1].isdigit():
            count, j = int(args[j + 1]), j + 2
        elif re.match(r"^-\d+$", a) or a.startswith("--lines=") and a.split("=", 1)[1].isdigit():
            count, j = int(a.lstrip("-").split("=")[-1]), j + 1
        else:
            rest.append(a)
            j += 1
        if count is not None:
            command.lines = (1, count)
    return rest


def _pattern_args(program: str, args: list[str], command: Command) -> list[str]:
    """grep / rg / awk: the first operand (or every -e value) is a pattern, i.e. words, never a path."""
    value_flags = VALUE_FLAGS.get(program, set())
    taken = any(a in ("-e", "-f", "--regexp") for a in args)
    rest: list[str] = []
    j = 0
    while j < len(args):
        a = args[j]
        if a.startswith("-") and a != "-":
            if a in value_flags and j + 1 < len(args):
                command.flags.add(a)
                if a in ("-e", "--regexp", "-f"):  # a pattern; other values are sizes (-C 5) or globs
                    command.words |= _word_tokens(args[j + 1])
                j += 2
                continue
            rest.append(a)
        elif not taken:
            if program == "awk" and len(a) > 40:  # a real awk program is code
                command.code.append(a)
            else:
                command.words |= _word_tokens(a)
            taken = True
        else:
            rest.append(a)
        j += 1
    return rest


def _subcommand(program: str, args: list[str], command: Command) -> list[str]:
    """`git -C dir diff x` -> subcommand `diff`, arguments [x]."""
    value_flags = VALUE_FLAGS.get(program, set())
    j = 0
    while j < len(args) and args[j].startswith("-"):
        j += 2 if args[j] in value_flags and j + 1 < len(args) else 1
    if j >= len(args):
        return []
    command.subcommand = args[j]
    return args[j + 1:]


def _classify(program: str, args: list[str], command: Command) -> None:
    """Remaining arguments: flags, paths, or words."""
    for a in args:
        if a.startswith("--") and "=" in a:
            name, value = a.split("=", 1)
            command.flags.add(name)
            if _is_path(value):
                command.paths.add(normalize_path(value))
            else:
                command.words |= _word_tokens(value)
        elif a.startswith("-") and len(a) > 1 and not _NUMBER.match(a):
            command.flags.add(_flag_key(program, a))
        elif _is_path(a):
            command.paths.add(normalize_path(a))
        else:
            command.words |= _word_tokens(a)


def parse_command(simple: SimpleCommand) -> Command | None:
    """Reduce one simple command (see the module docstring); None for an empty one."""
    command = Command(program="", family="", nested=simple.nested)
    _take_redirections(simple, command)
    rest = _peel(simple.argv)
    if not rest:
        if not (command.code or command.paths - {""}):
            return None
        program, args = "(none)", []  # a bare `> file`, or a heredoc fed to nothing
    elif rest[0].endswith(".py") and not rest[0].startswith("-"):  # ./tests/runtests.py runs python
        program, args = "python", rest
    else:
        program, args = _canonical(rest[0]), rest[1:]
    if program == "python":
        program, args = _python_args(args, command)
    elif program in ("perl", "ruby", "node", "bash", "sh", "zsh"):
        program, args = _inline_code_args(program, args, command)
    elif program == "sed":
        program, args = _sed_args(args, command)
    elif program == "head":
        args = _head_lines(args, command)
    if program in PATTERN_PROGRAMS:
        args = _pattern_args(program, args, command)
    if program in SUBCOMMAND_PROGRAMS:
        args = _subcommand(program, args, command)
    _classify(program, args, command)
    command.paths.discard("")
    command.program, command.family = program, program.split(" ")[0]
    _note_writes(command, args)
    return command


EDITORS = {"sed -i", "perl -i", "tee", "touch", "truncate"}  # every path operand is written
COPIERS = {"cp", "mv", "ln", "install", "rsync"}  # the last path operand is written


def _note_writes(command: Command, args: list[str]) -> None:
    """The files a command creates or changes, besides its redirections (the memory's artifacts)."""
    if command.program in EDITORS:
        command.writes |= command.paths
    elif command.program in COPIERS:
        operands = [normalize_path(a) for a in args if not a.startswith("-") and _is_path(a)]
        if operands:
            command.writes.add(operands[-1])
    command.writes.discard("")


def _fold_line_ranges(commands: list[Command]) -> list[Command]:
    """`nl -ba f | sed -n '5,9p'` views lines 5..9 of f: the range moves onto the viewer of f."""
    folded: list[Command] = []
    for c in commands:
        previous = folded[-1] if folded else None
        if (previous is not None and previous.program in VIEWERS and previous.paths and previous.lines is None
                and c.program in ("sed", "head") and c.lines is not None and not c.paths and not c.words):
            previous.lines = c.lines
            continue
        folded.append(c)
    return folded


def parse_command_line(action: str) -> list[Command]:
    """The simple commands of a command line, in order (line-range filters folded into their viewer)."""
    commands = [parse_command(simple) for simple in read_command_line(action)]
    return _fold_line_ranges([c for c in commands if c is not None])


def main_command(commands: list[Command]) -> Command | None:
    """The first command that is not trivial, of those not inside a `$( )` where there are any."""
    top = [c for c in commands if not c.nested] or commands
    for c in top:
        if not c.trivial:
            return c
    return top[0] if top else None
