"""comem_cli.shell reads command lines with tree-sitter-bash: the cases a hand-written lexer got
wrong (commands inside `$( )` and loop bodies, quoted operators and heredoc markers, a redirection
after `&&`), and malformed input, which never raises."""

from __future__ import annotations

import subprocess
import sys
import time

from comem_cli.memory import quality
from comem_cli.bash import read_command_line
from comem_cli.shell import main_command, parse_command_line


def programs(action: str) -> list[str]:
    return [c.program for c in parse_command_line(action)]


def test_commands_inside_substitutions_and_compound_bodies():
    loop = parse_command_line('for f in $(ls tests/*.py); do python -m pytest "$f" -k test_even_median; done')
    assert [(c.program, c.nested) for c in loop] == [("ls", True), ("pytest", False)]  # no `for`, `do`, `done`
    assert loop[0].paths == {"tests/*.py"} and "test_even_median" in loop[1].words
    assert main_command(loop).program == "pytest"

    [grep, echo] = parse_command_line('result=$(grep -rn "def median" src/calc.py) && echo "$result"')
    assert (grep.program, grep.nested, grep.paths, grep.words, grep.flags) == ("grep", True, {"src/calc.py"}, {"def", "median"}, {"-nr"})
    assert main_command([grep, echo]) is echo  # the top-level command, not the one in its `$( )`
    assert quality.action_facts("result=$(grep -rn count_words src/words.py)") == {"words.py", "count_words"}

    assert programs("if [ -f setup.py ]; then pip install -e .; fi") == ["[", "pip"]
    assert programs("while read f; do cat \"$f\"; done < files.txt") == ["read", "cat", "(none)"]
    assert programs("(cd src && make) || { echo failed; exit 1; }") == ["cd", "make", "echo", "exit"]
    assert main_command(parse_command_line("export PYTHONPATH=$(pwd)/src && python -m pytest tests/test_calc.py")).program == "pytest"
    assert main_command(parse_command_line("cd $(git rev-parse --show-toplevel)")).program == "cd"


def test_quoted_operators_and_heredoc_markers_stay_words():
    [grep, python] = parse_command_line("grep -n \"a && b || c; d | e\" src/calc.py && python -c \"print('x; y')\"")
    assert grep.words == {"a", "b", "c", "d", "e"} and grep.paths == {"src/calc.py"} and python.code == ["print('x; y')"]
    [python, cat] = parse_command_line("python -c \"print('<<EOF')\" && cat src/calc.py")  # a `<<` inside quotes
    assert python.code == ["print('<<EOF')"] and cat.paths == {"src/calc.py"}
    [echo] = parse_command_line('echo "2>&1 is kept" > notes.txt')
    assert echo.words == {"2", "1", "is", "kept"} and echo.writes == {"notes.txt"}
    [python] = parse_command_line('python -c "import calc\n# the median\nprint(calc.median([1, 2]))"')
    assert python.code == ["import calc\n# the median\nprint(calc.median([1, 2]))"]  # a `#` line inside quotes is code
    [sed] = parse_command_line("sed -i '3a\\\n    return 0' src/calc.py")  # a backslash-newline inside '...' stays
    assert sed.code == ["3a\\\n    return 0"] and sed.writes == {"src/calc.py"}
    [sed] = parse_command_line('sed -i "s/\\$total/total/" src/calc.py')  # bash passes `s/$total/total/`
    assert sed.code == ["s/$total/total/"]
    [find, head] = parse_command_line('find . -name "*.py" -exec grep -l median {} \\; | head')
    assert find.program == "find" and {"median", ";"} <= find.words and head.program == "head"
    [cat] = parse_command_line("cat src/calc.py # the code <<EOF")  # a trailing comment is no argument, nor a heredoc
    assert cat.words == set() and cat.code == []


def test_heredoc_with_a_quoted_delimiter_then_more_commands():
    action = ("cat > repro.py <<'EOF'\nimport calc\n\n  print(\"$(not run)\")\nEOF\npython repro.py && cat <<\"END\" | python -\n"
              "print(1)\nEND\nls")
    [cat, run, cat2, python, ls] = parse_command_line(action)
    assert cat.program == "cat" and cat.code == ['import calc\n\n  print("$(not run)")'] and cat.writes == {"repro.py"}
    assert (run.program, run.paths) == ("python", {"repro.py"})
    assert cat2.code == ["print(1)"] and (python.program, python.flags) == ("python", {"-"}) and ls.program == "ls"
    assert "not" not in programs(action)  # a heredoc body is code, never run here
    [echo, cat, python] = parse_command_line("echo '<<END' && cat > b.py <<-'END'\n\tprint(2)\n\tEND\npython b.py")
    assert echo.words == {"end"} and cat.code == ["\tprint(2)"] and cat.writes == {"b.py"} and python.paths == {"b.py"}
    assert quality.artifacts([type("S", (), {"action": action})()]) == {"repro.py"}


def test_a_redirection_belongs_to_the_command_before_it():
    [sed, echo, python, tail] = parse_command_line("sed -i '$d' a.py && echo 'x = 1' >> a.py && python a.py 2>&1 | tail -5")
    assert sed.writes == echo.writes == {"a.py"} and python.writes == set() and tail.writes == set()
    [cat, none] = parse_command_line("for f in *.py; do cat $f; done > all.txt")
    assert none.program == "(none)" and none.writes == {"all.txt"} and cat.writes == set()
    [echo] = parse_command_line("echo > out.txt hello")
    assert echo.words == {"hello"} and echo.writes == {"out.txt"}


def test_malformed_input_never_raises():
    [echo] = parse_command_line('echo "unbalanced')  # closed at the end, as a shell waiting for input would
    assert echo.program == "echo" and echo.words == {"unbalanced"}
    [cat] = parse_command_line("cat <<'EOF' > x.py\nprint(1)")  # an open heredoc: the rest is its body
    assert cat.code == ["print(1)"] and cat.writes == {"x.py"}
    odd = ["", "'''", "\\", "&& ;", "a |", "2>&1", "# only a comment", "if then fi", "$(", "`", "}{", "\x00", "cat \x00a.py",
           "\x1b[31mred\x1b[0m", "\ud800 \udfff", "é 😀 {😀}", "\xff\xfe", "a" * 5000 + "'", "$(" * 3000, "((((" * 2000]
    for text in odd:
        commands = parse_command_line(text)
        assert all(isinstance(c.program, str) for c in commands)
        main_command(commands)
    assert parse_command_line("&& ;") == [] and parse_command_line("2>&1") == []
    for text, budget in (('echo "' + "x" * 1_000_000, 10), (">" * 1_000_000, 20), ("cat a.py | " * 100_000, 20)):
        start = time.monotonic()  # the 2nd is quadratic for tree-sitter: the parse is cancelled, words are read by line
        commands = read_command_line(text)
        assert time.monotonic() - start < budget and commands
    # tree-sitter-bash 0.25.1 segfaults on `{` then a 4-byte UTF-8 character (its issue #337): a child process, in case
    probe = "from comem_cli.shell import parse_command_line as p\nfor s in ('{\\U000f8481', '{\\U00031860', 'echo {x\\U0001F600'):\n p(s)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
