"""The package's layers point one way: no import cycles between comem_cli's modules nor between its
folders (a module of one sub-package importing another whose modules import back, even through
different modules, is a cycle of the folders), no product module importing comem_cli/testing/, and
nothing in the repository reaching for files outside it.

Imports are read from the source (every `import` statement, also those inside functions: a lazy
import is still a dependency), so the check is exact and needs nothing installed.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "comem_cli"
TESTING = "comem_cli.testing"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """comem_cli modules that `name` imports anywhere in its source (a `from pkg import mod` counts mod)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `from m import function`: the module m
            target = target.rpartition(".")[0]
        if target.startswith("comem_cli.") and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def package_of(module: str) -> str:
    """The folder a module lives in, one level under comem_cli (comem_cli.latency.engines ->
    comem_cli.latency); a module at the top of the package is its own node (comem_cli.config)."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph with every module replaced by its folder (imports inside a folder dropped)."""
    out: dict[str, set[str]] = {}
    for name, deps in graph.items():
        mine = package_of(name)
        out.setdefault(mine, set()).update(package_of(d) for d in deps if package_of(d) != mine)
    for deps in list(out.values()):
        for d in deps:
            out.setdefault(d, set())
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_lazy_imports_and_cycles():
    graph = import_graph()
    # run.py imports the memory factory inside a function; the factory imports the base module
    assert "comem_cli.memory.backends" in graph["comem_cli.run"]
    assert "comem_cli.memory.base" in graph["comem_cli.memory.backends"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # two folders importing each other through different modules: no module cycle, a folder cycle
    crossed = {"comem_cli.a.x": {"comem_cli.b.y"}, "comem_cli.b.y": set(), "comem_cli.b.z": {"comem_cli.a.w"},
               "comem_cli.a.w": set(), "comem_cli.config": set(), "comem_cli.a": {"comem_cli.config"}}
    assert cycles(crossed) == []
    assert cycles(package_graph(crossed)) == [["comem_cli.a", "comem_cli.b"]]
    assert package_graph(crossed)["comem_cli.a"] == {"comem_cli.b", "comem_cli.config"}


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []


def test_no_import_cycles_between_the_folders():
    """Each program has one home and the folders stack: bench/ (the SWE-bench runner and the
    commands) above latency/ (the latency benchmark) above memory/; train/ above memory/; a folder
    never imports one above it, not even lazily (top-level modules count as folders of their own)."""
    assert cycles(package_graph(import_graph())) == []


def test_product_code_never_imports_the_testing_helpers():
    graph = import_graph()
    offenders = {name: sorted(d for d in deps if d == TESTING or d.startswith(TESTING + "."))
                 for name, deps in graph.items() if not (name == TESTING or name.startswith(TESTING + "."))}
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_one_vllm_launcher():
    """comem's engines and the tests' vLLM servers start through one launcher (latency/engines.py):
    no other module spells vLLM's server command."""
    spelled = sorted(str(path.relative_to(REPO_ROOT)) for path in PACKAGE.rglob("*.py")
                     if "vllm.entrypoints.openai.api_server" in path.read_text(encoding="utf-8"))
    assert spelled == ["comem_cli/latency/engines.py"]
    assert "comem_cli.latency.engines" in import_graph()["comem_cli.testing.vllm_check"]


def test_the_memory_factory_is_only_the_factory():
    graph = import_graph()
    for backend in ("hf", "vllm_engine", "openai_backend"):
        assert "comem_cli.memory.backends" not in graph[f"comem_cli.memory.{backend}"], backend
        assert "comem_cli.memory.base" in graph[f"comem_cli.memory.{backend}"], backend


def test_nothing_in_the_repository_reaches_outside_it():
    """Code, tests, README, Makefile and scripts name no folder beside the checkout."""
    sibling = ".." + "/shared"  # spelled in two pieces so this file does not match itself
    variable = "COMEM_" + "SHARED"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True)
    files = ([REPO_ROOT / line for line in listed.stdout.splitlines()] if listed.returncode == 0
             else [p for p in REPO_ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts])
    hits = []
    for path in files:
        if not path.is_file() or path.suffix in {".gz", ".png", ".whl"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{path.relative_to(REPO_ROOT)}: {word}" for word in (sibling, variable) if word in text]
    assert hits == []


# Docstrings and comments cite only what the repository holds: it has no numbered specification.
CITATION = re.compile(r"\b" + "SP" + r"EC\b\s*(§\s*)?\d")  # spelled in pieces so this file does not match itself


def citations(text: str) -> list[str]:
    return [m[0] for m in CITATION.finditer(text)]


def test_no_citation_of_a_numbered_specification():
    assert citations("see " + "SP" + "EC 4.2") and citations("SP" + "EC §7") and not citations("GIT_LITERAL_PATHSPECS=1")
    hits = [f"{path.relative_to(REPO_ROOT)}: {hit}" for folder in (PACKAGE, REPO_ROOT / "tests")
            for path in sorted(folder.rglob("*.py")) for hit in citations(path.read_text(encoding="utf-8"))]
    assert hits == []


# Command-line options that set a MemoryConfig field take their default from the model (one home).
MEMORY_OPTIONS = {"k": "k", "raw_budget": "raw_budget", "sections": "sections", "summary_sections": "sections",
                  "max_summary_tokens": "max_summary_tokens", "launch_tokens": "launch_tokens"}
OPTION_FILES = ("comem_cli/cli.py", "comem_cli/bench/cli_bench.py", "comem_cli/options.py")  # options.py: those shared by commands


def memory_options(source: str) -> dict[str, ast.expr]:
    """`NAME: ... = typer.Option(DEFAULT, ...)` parameters named after a MemoryConfig field: "NAME line N" -> DEFAULT."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, default = node.targets[0].id.lower(), node.value  # options.py: `RAW_BUDGET = typer.Option(...)`
            if (name in MEMORY_OPTIONS and isinstance(default, ast.Call) and isinstance(default.func, ast.Attribute)
                    and default.func.attr == "Option" and default.args):
                found[f"{name} line {default.lineno}"] = default.args[0]
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = node.args
        pairs = list(zip(args.args[len(args.args) - len(args.defaults):], args.defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
        for arg, default in pairs:
            if (arg.arg in MEMORY_OPTIONS and isinstance(default, ast.Call) and isinstance(default.func, ast.Attribute)
                    and default.func.attr == "Option" and default.args):
                found[f"{arg.arg} line {default.lineno}"] = default.args[0]
    return found


def written_out(default: ast.expr) -> bool:
    """A number, or a string of numbers (`"2"`, `"1,4"`), rather than a name the config declares."""
    return isinstance(default, ast.Constant) and (
        isinstance(default.value, (int, float)) and not isinstance(default.value, bool)
        or isinstance(default.value, str) and default.value.replace(",", "").isdigit())


def test_memory_option_defaults_come_from_the_config_model():
    sample = 'def fix(raw_budget: int = typer.Option(12000, "--raw-budget"), k: str = typer.Option(str(memory_default("k")))): ...'
    assert {name: written_out(d) for name, d in memory_options(sample).items()} == {"raw_budget line 1": True, "k line 1": False}
    options = {f"{path} {name}": default for path in OPTION_FILES
               for name, default in memory_options((REPO_ROOT / path).read_text(encoding="utf-8")).items()}
    assert len(options) >= 8  # shared (options.py), train-memory, bench latency, bench memory
    assert [name for name, default in options.items() if written_out(default)] == []


# Every option's default lives in one settings model: a command-line option never writes out a value
# a model already declares (it reads it: `default_of(Model, "field")`, `memory_default("field")`).
SETTINGS_MODULES = ("comem_cli.config", "comem_cli.latency.settings", "comem_cli.bench.settings", "comem_cli.train.settings")


def declared_defaults() -> set:
    """The numbers (but 0 and 1) and strings every settings model's fields default to."""
    import importlib

    from pydantic import BaseModel

    found = set()
    for name in SETTINGS_MODULES:
        module = importlib.import_module(name)
        for model in vars(module).values():
            if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == name:
                for field in model.model_fields.values():
                    value = field.default
                    if isinstance(value, (int, float, str, Path)) and not isinstance(value, bool) and value not in (0, 1, ""):
                        found.add(str(value))
    return found


def option_literals(source: str) -> list[tuple[int, str]]:
    """(line, value) of every `typer.Option(LITERAL, ...)` and `typer.Option(Path("LITERAL"), ...)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Option" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Call) and getattr(first.func, "id", None) == "Path" and first.args:
                first = first.args[0]
            if isinstance(first, ast.Constant) and not isinstance(first.value, bool) and first.value is not None:
                found.append((node.lineno, str(first.value)))
    return found


def test_no_option_writes_out_a_default_a_settings_model_declares():
    sample = 'def f(a: int = typer.Option(12000, "--a"), b: str = typer.Option(default_of(M, "b")), c=typer.Option(Path("bench-runs"))): ...'
    assert option_literals(sample) == [(1, "12000"), (1, "bench-runs")]
    declared = declared_defaults()
    assert {"12000", "bench-runs", "100", "300.0"} <= declared
    repeated = [f"{path}:{line} {value}" for path in OPTION_FILES
                for line, value in option_literals((REPO_ROOT / path).read_text(encoding="utf-8")) if value in declared]
    assert repeated == []
