"""The GRPO reward (docs/design.md, section 6): how functionally equivalent a proposed bash action is to the recorded one.

`action_reward(proposed, recorded)` is in [0, 1]. `proposed` is either a whole model reply, whose
single ```bash block is taken with `comem_cli.agent.parse_action` (exactly the agent's rule, so a
reply the agent would reject scores 0.0), or a bare command. A text is read as a reply when it
holds a ``` fence or starts with "THOUGHT" (force either reading with `reply=True/False`).
An empty action, or an empty recorded action, scores 0.0. Identical commands (after stripping
surrounding whitespace) score exactly 1.0.

How a command line is read: heredoc bodies are lifted out first (they are code), then the line
is tokenized with `shlex` (falling back to a whitespace split when quotes are unbalanced) and
split into commands on `&&`, `||`, `;`, `|`, `&` and newlines. Wrappers (`sudo`, `env`, `timeout`,
`time`, `nohup`, `xargs`...) and leading `VAR=value` assignments are peeled off. The *main*
command is the first one that is not trivial (`cd`, `export`, `source`, `set`, ...). Each
command is reduced to: a canonical program (`python3`, `/usr/bin/python3` -> `python`;
`python -m pytest`, `py.test` -> `pytest`; `egrep` -> `grep`; `sed -i` is the program `sed -i`,
an edit, distinct from `sed -n`, a view; `./x.py` runs `python`), a subcommand (for `git`, `pip`,
`npm`, `cargo`, `docker`...), paths (tokens with a `/` or a file extension, redirect targets;
normalized: `./` and trailing `/` removed, `.` dropped), words (other arguments such as search
patterns, split into lower-case word tokens), a line range (for viewers), flags (`-rn` and `-nr`
are the same for programs whose short flags combine) and code (heredoc bodies, `python -c`,
`perl -e`, `bash -c` and `sed -i` scripts).

Score of two simple commands, each level counting only if the level above matched:

    score = 0.30 x program        1 same, 0.6 related, 0 different (then the score is 0)
          + 0.10 x subcommand     1 if equal (or neither has one), else 0 and the arguments count 0
          + 0.60 x arguments

Related programs (0.6): viewers `cat head tail nl less more sed(-n) bat`; searchers
`grep rg ag ack`; listers `ls find tree fd`; test runners `pytest tox nox`; in-place editors
`sed -i perl -i`; and two programs of one binary (`sed -n` / `sed -i`).

    arguments = weighted mean of the parts present on either side: paths 0.4, words 0.5, flags 0.1
    (no arguments on either side counts 1), where
    paths: soft Jaccard; two paths match 1.0 if equal or one is the other's suffix of >= 2
           components (`/testbed/a/b.py` ~ `a/b.py`), 0.7 for `b.py` ~ `a/b.py`, 0.6 for the same
           basename, else 0.4 x the fraction of leading directories they share;
    words: mean of the Jaccard of the word sets and, where a viewer shows a line range
           (`sed -n '5,9p' f`, `head -n 9 f`, `nl -ba f | sed -n '5,9p'`: a range piped after a
           viewer is folded into it), the overlap of the ranges (intersection over union);
    flags: Jaccard of the sets.
    With code on either side: arguments = 0.3 x the above + 0.7 x code^2, code being the difflib
    ratio over word / punctuation tokens (squared so that two different edits of one file stay
    apart: ratio 0.83 -> 0.69).

The main commands' score is discounted by the rest of a compound command:
functional = main x (0.80 + 0.20 x others), others being the mean best-match score of the commands
beside the main ones, trivial ones such as `cd dir` included (1.0 when neither side has any):
`grep foo x.py | head` vs `grep foo x.py` keeps 0.80. Finally reward = 0.95 x functional + 0.05 x surface, surface being the difflib ratio
of the two command texts: it only orders otherwise-equivalent spellings (identical outranks
equivalent) and never lifts an unrelated command above 0.05.

Typical values: `cat ./a/b.py` vs `cat a/b.py` 0.99; `grep -n foo x.py` vs `grep foo x.py` 0.94;
`python3 r.py` vs `python r.py` 0.99; same file, other grep pattern or line range 0.7-0.8;
`cat x.py` vs `head -n 20 x.py` 0.56; `cat a.py` vs `cat b.py` 0.41; `git diff` vs `git status`
0.31; `ls -R` vs `python r.py` 0.0.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field

from pydantic import BaseModel

from comem_cli.agent import parse_action
from comem_cli.errors import FormatError

# Weights (see the module docstring).
W_PROGRAM, W_SUBCOMMAND, W_ARGS = 0.30, 0.10, 0.60
RELATED_PROGRAM = 0.6
W_PATHS, W_WORDS, W_FLAGS = 0.4, 0.5, 0.1
W_ARGS_WITH_CODE, W_CODE = 0.3, 0.7  # arguments = 0.3 * paths/words/flags + 0.7 * code_similarity ** 2
OTHERS_FLOOR = 0.80  # functional = main * (OTHERS_FLOOR + (1 - OTHERS_FLOOR) * others)
W_SURFACE = 0.05
MAX_TOKENS = 2000  # code / surface similarity looks at most at this many tokens per side

VIEWERS = {"cat", "head", "tail", "nl", "less", "more", "sed", "bat"}
RELATED_GROUPS = [
    VIEWERS,
    {"grep", "rg", "ag", "ack"},
    {"ls", "find", "tree", "fd"},
    {"pytest", "tox", "nox"},
    {"sed -i", "perl -i"},
]
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

_HEREDOC = re.compile(r"(?<!<)<<(?!<)-?[ \t]*(?:'([^'\n]+)'|\"([^\"\n]+)\"|\\?([A-Za-z_][\w.-]*))")
_PLACEHOLDER = re.compile(r"^__COMEM_HEREDOC_(\d+)__$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_REDIRECT = re.compile(r"^(\d*)(>>?|<)(.*)$", re.DOTALL)
_FILE_LIKE = re.compile(r"^[\w.\-+@]*\w\.[A-Za-z][A-Za-z0-9]{0,7}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_CODE_TOKENS = re.compile(r"\w+|[^\w\s]")
_SEPARATOR_CHARS = set(";&|\n")
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

    @property
    def trivial(self) -> bool:
        return self.program in TRIVIAL


class RewardBreakdown(BaseModel):
    """The parts of one reward, for reports. Part scores are None where they did not apply."""

    reward: float
    parsed: bool  # False when the proposed reply had no single bash block (reward 0)
    reason: str = ""
    proposed_action: str | None = None
    recorded_action: str = ""
    proposed_program: str | None = None
    recorded_program: str | None = None
    program: float = 0.0
    subcommand: float = 0.0
    arguments: float | None = None
    paths: float | None = None
    words: float | None = None
    flags: float | None = None
    code: float | None = None
    others: float = 0.0
    main: float = 0.0
    functional: float = 0.0
    surface: float = 0.0


# ---------------------------------------------------------------------------------------------
# Parsing a command line


def _lift_heredocs(text: str) -> tuple[str, list[str]]:
    """Replace each heredoc (marker and body) with a placeholder token; return the bodies."""
    bodies: list[str] = []
    pos = 0
    while True:
        m = _HEREDOC.search(text, pos)
        if not m:
            return text, bodies
        delimiter = m.group(1) or m.group(2) or m.group(3)
        line_end = text.find("\n", m.end())
        placeholder = f" __COMEM_HEREDOC_{len(bodies)}__ "
        if line_end < 0:  # a marker with no body
            bodies.append("")
            text = text[: m.start()] + placeholder + text[m.end():]
            pos = m.start() + len(placeholder)
            continue
        lines = text[line_end + 1:].split("\n")
        for i, line in enumerate(lines):
            if line.strip() == delimiter:
                body, after = "\n".join(lines[:i]), "\n".join(lines[i + 1:])
                break
        else:  # unterminated: the rest is the body
            body, after = "\n".join(lines), ""
        bodies.append(body)
        head = text[: m.start()] + placeholder + text[m.end(): line_end + 1]
        text, pos = head + after, len(head)


def _tokens(text: str) -> list[str]:
    """shlex tokens with the operators ; & | and newlines as their own tokens; whitespace split if quotes are unbalanced."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|\n")
        lexer.whitespace = " \t\r"
        lexer.commenters = ""
        lexer.whitespace_split = True
        return list(lexer)
    except ValueError:
        spaced = re.sub(r"(&&|\|\||[;&|\n])", r" \1 ", text)
        return [t.strip("'\"") or t for t in spaced.split(" ") if t.strip(" \t\r")]


def _segments(action: str) -> tuple[list[list[str]], list[str]]:
    text, bodies = _lift_heredocs(action)
    text = text.replace("\\\n", " ")
    text = "\n".join(line for line in text.split("\n") if not line.lstrip().startswith("#"))  # full-line comments
    text = re.sub(r"\d*[<>]&\d*-?", " ", text)  # 2>&1 and friends: plumbing, not meaning
    text = re.sub(r"&>>?", ">", text)
    segments, current = [], []
    for token in _tokens(text):
        if token and set(token) <= _SEPARATOR_CHARS:
            if current:
                segments.append(current)
            current = []
        else:
            current.append(token)
    if current:
        segments.append(current)
    return segments, bodies


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


def _body(bodies: list[str], placeholder: re.Match) -> str:
    index = int(placeholder.group(1))
    return bodies[index] if index < len(bodies) else ""


def _take_redirections(tokens: list[str], bodies: list[str], command: Command) -> list[str]:
    """Move redirect targets (files written or read) to paths and heredoc bodies to code; return the rest."""
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        placeholder = _PLACEHOLDER.match(token)
        if placeholder:
            command.code.append(_body(bodies, placeholder))
            continue
        redirect = _REDIRECT.match(token) if not token.startswith("<<") else None  # <<< is a here-string
        if not redirect:
            rest.append(token)
            continue
        target = redirect.group(3)
        if not target and i < len(tokens):
            target, i = tokens[i], i + 1
        placeholder = _PLACEHOLDER.match(target or "")
        if placeholder:
            command.code.append(_body(bodies, placeholder))
        elif target and not target.startswith("/dev/"):
            command.paths.add(normalize_path(target))
    return rest


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


def parse_command(tokens: list[str], bodies: list[str]) -> Command | None:
    """Reduce one simple command's tokens (see the module docstring); None for an empty one."""
    command = Command(program="", family="")
    rest = _peel(_take_redirections(tokens, bodies, command))
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
    return command


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
    segments, bodies = _segments(action)
    commands = [parse_command(tokens, bodies) for tokens in segments]
    return _fold_line_ranges([c for c in commands if c is not None])


def main_command(commands: list[Command]) -> Command | None:
    for c in commands:
        if not c.trivial:
            return c
    return commands[0] if commands else None


# ---------------------------------------------------------------------------------------------
# Similarities


def _jaccard(a: set[str], b: set[str]) -> float | None:
    if not a and not b:
        return None
    return len(a & b) / len(a | b)


def path_similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    ca, cb = [c for c in a.split("/") if c], [c for c in b.split("/") if c]
    if not ca or not cb:
        return 0.0
    short, long_ = (ca, cb) if len(ca) <= len(cb) else (cb, ca)
    if long_[-len(short):] == short:
        return 1.0 if len(short) >= 2 else 0.7
    if ca[-1] == cb[-1]:
        return 0.6
    common = 0
    for x, y in zip(ca, cb):
        if x != y:
            break
        common += 1
    return 0.4 * common / max(len(ca), len(cb))


def lines_similarity(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Overlap (intersection over union) of two line ranges; 0 when only one side has one."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return 0.0
    overlap = min(a[1], b[1]) - max(a[0], b[0]) + 1
    union = max(a[1], b[1]) - min(a[0], b[0]) + 1
    return max(0, overlap) / union if union > 0 else 0.0


def paths_similarity(a: set[str], b: set[str]) -> float | None:
    """Soft Jaccard: every path's best match on the other side counts as its share of the intersection."""
    if not a and not b:
        return None
    if not a or not b:
        return 0.0
    best_a = sum(max(path_similarity(x, y) for y in b) for x in a)
    best_b = sum(max(path_similarity(x, y) for x in a) for y in b)
    matched = (best_a + best_b) / 2
    return matched / (len(a) + len(b) - matched)


def _code_tokens(text: str) -> list[str]:
    return _CODE_TOKENS.findall(text)[:MAX_TOKENS]


def sequence_similarity(a: str, b: str) -> float:
    """difflib ratio over word / punctuation tokens (whitespace and layout do not count)."""
    ta, tb = _code_tokens(a), _code_tokens(b)
    if not ta and not tb:
        return 1.0 if a.strip() == b.strip() else 0.0
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def program_similarity(a: Command, b: Command) -> float:
    if a.program == b.program:
        return 1.0
    if a.family == b.family:
        return RELATED_PROGRAM
    for group in RELATED_GROUPS:
        if a.program in group and b.program in group:
            return RELATED_PROGRAM
    return 0.0


def _weighted(parts: list[tuple[float | None, float]]) -> float | None:
    present = [(score, weight) for score, weight in parts if score is not None]
    if not present:
        return None
    return sum(s * w for s, w in present) / sum(w for _, w in present)


@dataclass
class Comparison:
    """The parts of comparing two simple commands; `score` is the hierarchical main score."""

    program: float = 0.0
    subcommand: float = 0.0
    arguments: float | None = None
    paths: float | None = None
    words: float | None = None
    flags: float | None = None
    code: float | None = None
    score: float = 0.0


def compare_commands(a: Command, b: Command) -> Comparison:
    """program -> subcommand -> arguments, each level counting only if the one above matched."""
    out = Comparison(program=program_similarity(a, b))
    if out.program == 0:
        return out
    out.subcommand = 1.0 if a.subcommand == b.subcommand else 0.0
    out.paths = paths_similarity(a.paths, b.paths)
    out.words = _weighted([(_jaccard(a.words, b.words), 1.0), (lines_similarity(a.lines, b.lines), 1.0)])
    out.flags = _jaccard(a.flags, b.flags)
    args = _weighted([(out.paths, W_PATHS), (out.words, W_WORDS), (out.flags, W_FLAGS)])
    if a.code or b.code:
        out.code = sequence_similarity("\n".join(a.code), "\n".join(b.code)) if a.code and b.code else 0.0
    arguments = _weighted([(args, W_ARGS_WITH_CODE), (None if out.code is None else out.code ** 2, W_CODE)])
    out.arguments = 1.0 if arguments is None else arguments
    out.score = W_PROGRAM * out.program + W_SUBCOMMAND * out.subcommand + W_ARGS * out.subcommand * out.arguments
    return out


def others_similarity(a: list[Command], b: list[Command]) -> float:
    """The commands beside the main ones: each one's best match on the other side (1.0 when neither has any)."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    best_a = sum(max(compare_commands(x, y).score for y in b) for x in a)
    best_b = sum(max(compare_commands(x, y).score for x in a) for y in b)
    return (best_a + best_b) / (len(a) + len(b))


# ---------------------------------------------------------------------------------------------
# The reward


def _looks_like_reply(text: str) -> bool:
    return "```" in text or bool(re.match(r"\s*THOUGHT\b", text))


def reward_breakdown(proposed: str | None, recorded: str, *, reply: bool | None = None) -> RewardBreakdown:
    """The reward with its parts. `reply`: True/False forces how `proposed` is read; None guesses."""
    recorded = (recorded or "").strip()
    if proposed is None:
        return RewardBreakdown(reward=0.0, parsed=False, reason="no proposed action", recorded_action=recorded)
    as_reply = _looks_like_reply(proposed) if reply is None else reply
    if as_reply:
        try:
            action = parse_action(proposed)
        except FormatError as e:
            return RewardBreakdown(reward=0.0, parsed=False, reason=f"unparseable reply: {e}", recorded_action=recorded)
    else:
        action = proposed.strip()
    out = RewardBreakdown(reward=0.0, parsed=bool(action), proposed_action=action, recorded_action=recorded)
    if not action:
        out.reason = "empty proposed action"
        return out
    if not recorded:
        out.reason = "empty recorded action"
        return out
    if action == recorded:
        return out.model_copy(update=dict(reward=1.0, program=1.0, subcommand=1.0, others=1.0, main=1.0,
                                          functional=1.0, surface=1.0, reason="identical"))

    out.surface = sequence_similarity(action, recorded)
    commands_p, commands_r = parse_command_line(action), parse_command_line(recorded)
    main_p, main_r = main_command(commands_p), main_command(commands_r)
    out.proposed_program = main_p.program if main_p else None
    out.recorded_program = main_r.program if main_r else None
    if main_p is not None and main_r is not None:
        parts = compare_commands(main_p, main_r)
        for name in ("program", "subcommand", "arguments", "paths", "words", "flags", "code"):
            setattr(out, name, getattr(parts, name))
        out.main = parts.score
        out.others = others_similarity([c for c in commands_p if c is not main_p], [c for c in commands_r if c is not main_r])
        out.functional = out.main * (OTHERS_FLOOR + (1 - OTHERS_FLOOR) * out.others)
    out.reward = min(1.0, max(0.0, (1 - W_SURFACE) * out.functional + W_SURFACE * out.surface))
    out.reason = "scored"
    return out


def action_reward(proposed: str | None, recorded: str, *, reply: bool | None = None) -> float:
    """Functional equivalence of `proposed` (a reply or a bare command) to the `recorded` action, in [0, 1]."""
    return reward_breakdown(proposed, recorded, reply=reply).reward
