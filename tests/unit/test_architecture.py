"""The package's architecture, checked from its source: layers import only downward (so there is no
import circle), function-level imports are for optional dependencies only and say which, every module
stays readable (under 400 lines), every package says what it holds and may import, the files shipped
inside exported Hugging Face folders import nothing outside model/, and every error is ours."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import metatokens
from metatokens.errors import MetatokensError, RunStopped
from metatokens.model.config import ConfigError

PACKAGE = Path(metatokens.__file__).parent

# Bottom to top; a module may import from its own package and from packages in lower layers only.
# "" is the root package itself (metatokens/__init__.py: the version).
LAYERS = [
    {"", "errors"},
    {"fileio", "progress", "devices", "plotting", "stats"},
    {"model"},
    {"tokenizer"},
    {"data"},
    {"tasks"},
    {"runs", "generation"},
    {"hf"},
    {"evaluation"},
    {"training", "analysis"},
    {"study"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# Imports that may stay inside a function, and why (the comment beside each must say so).
DEFERRED = ("transformers", "huggingface_hub", "datasets", "pyarrow", "wandb", "torch.utils.tensorboard", "fcntl",
            "matplotlib", "metatokens.model.hf_model")
# Shipped inside exported folders as the model code (transformers copies a file's `from .x import`
# neighbours): they may import only each other, torch and transformers.
SHIPPED = {"model/config.py", "model/positions.py", "model/cache.py", "model/window.py", "model/gpt.py", "model/family.py",
           "model/hf_model.py"}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, node: ast.ImportFrom | ast.Import, known: dict[str, Path]) -> list[str]:
    """The metatokens modules an import statement loads (a package's __init__ counts as a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
    out = []
    for name in names:
        while name and name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(imported(module, path, node, known))
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_hand_made_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_every_package_has_a_layer():
    assert {package_of(m) for m in modules()} <= set(LAYER)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """The import arrows from one package to another in the same layer or a higher one."""
    return [f"{module} -> {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if package_of(target) != package_of(module) and LAYER[package_of(target)] >= LAYER[package_of(module)]]


def test_layers_import_only_downward():
    wrong = upward_imports(import_graph())
    assert wrong == [], "imports that go up or sideways (see LAYERS):\n" + "\n".join(wrong)


def nested_imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set()
    for node in tree.body:
        top.add(id(node))
        if isinstance(node, (ast.Try, ast.If)):  # try/except ImportError at module level is still module level
            top.update(id(n) for n in ast.walk(node))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top]


def test_function_level_imports_are_for_optional_dependencies_and_say_which():
    wrong = []
    for module, path in modules().items():
        rel = path.relative_to(PACKAGE).as_posix()
        lines = path.read_text(encoding="utf-8").split("\n")
        for node in nested_imports(path):
            name = node.names[0].name if isinstance(node, ast.Import) else ("." * node.level + (node.module or ""))
            deferred = any(name == d or name.startswith(d + ".") for d in DEFERRED)
            if not deferred and rel not in SHIPPED:
                wrong.append(f"{rel}:{node.lineno}: {name} (move it to the top of the module)")
                continue
            said = "\n".join(lines[node.lineno - 2:node.end_lineno])
            if "#" not in said:
                wrong.append(f"{rel}:{node.lineno}: {name} stays in the function without a comment saying why")
    assert wrong == [], "\n".join(wrong)


def test_every_module_is_under_400_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_LINES}
    assert long == {}


def test_every_package_says_what_it_holds_and_what_it_may_import():
    for module, path in modules().items():
        if path.name != "__init__.py" or module == "metatokens":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert len(doc.split()) >= 10, f"{module}: its docstring should say what the package holds"
        assert "may import" in doc.lower(), f"{module}: its docstring should say what it may import"


def test_shipped_model_files_import_only_each_other_torch_and_transformers():
    for rel in sorted(SHIPPED):
        tree = ast.parse((PACKAGE / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{rel}: `from {'.' * node.level}{node.module}` leaves model/"
            elif isinstance(node, ast.ImportFrom):
                root = (node.module or "").split(".")[0]
                assert root in {"__future__", "torch", "transformers", "dataclasses", "typing", "math", "re", "yaml",
                                "collections"}, f"{rel}: imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in {"metatokens", "numpy", "safetensors", "tokenizers"}, \
                        f"{rel}: imports {alias.name}"


def test_the_ignore_index_is_written_once():
    """-100 (the label that carries no loss) appears as a number only in model/config.py's IGNORE_INDEX;
    study/ uses -100 as the lower end of a difference in percentage points, which is another thing."""
    found = []
    for module, path in modules().items():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "model/config.py" or rel.startswith("study/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                    and isinstance(node.operand, ast.Constant) and node.operand.value == 100):
                found.append(f"{rel}:{node.lineno}")
    assert found == [], f"use model.config.IGNORE_INDEX: {found}"


def all_classes():
    for info in pkgutil.walk_packages(metatokens.__path__, "metatokens."):
        if info.name.endswith("hf_model") or info.name == "metatokens.__main__":
            continue  # needs transformers (tested in the HF tests); __main__ runs the CLI
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name:
                yield cls


def test_every_error_is_a_metatokens_error_defined_in_errors_py():
    """One hierarchy: every exception class the package defines derives from MetatokensError (the CLI
    prints those as one line), and all but a task's private refusal live in errors.py; the exceptions
    are ConfigError (model/config.py is shipped in exports and cannot import errors.py) and RunStopped
    (a KeyboardInterrupt: a stop, not an error)."""
    stray = []
    for cls in all_classes():
        if issubclass(cls, BaseException) and cls not in (ConfigError, RunStopped):
            if not issubclass(cls, MetatokensError) and not issubclass(cls, Warning):
                stray.append(f"{cls.__module__}.{cls.__name__}: not a MetatokensError")
            elif cls.__module__ != "metatokens.errors" and not cls.__name__.startswith("_"):
                stray.append(f"{cls.__module__}.{cls.__name__}: define it in metatokens/errors.py")
    assert stray == []


@pytest.mark.parametrize("raised,status", [
    (lambda: MetatokensError("a refusal\nover two lines"), 2),
    (lambda: ValueError("bad input met by a library"), 2),
    (lambda: FileNotFoundError(2, "No such file or directory", "x.json"), 2),
])
def test_cli_prints_our_refusals_and_bad_input_as_one_line(raised, status, monkeypatch, capsys):
    cli_main = importlib.import_module("metatokens.cli.main")

    def run(args):
        raise raised()

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=run)
    assert cli_main.main(["info"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("metatokens info: error: "), err


def test_cli_keeps_the_traceback_of_an_error_that_is_not_ours(monkeypatch):
    """A RuntimeError from PyTorch is a bug or an environment problem: it is raised, not hidden."""
    cli_main = importlib.import_module("metatokens.cli.main")

    def run(args):
        raise RuntimeError("CUDA error: an illegal memory access")

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=run)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        cli_main.main(["info"])


def test_the_layer_check_catches_hand_made_violations():
    """upward_imports on hand-made graphs: model importing training goes up, training and analysis share a
    layer (sideways), an import inside one package and one going down are fine."""
    graph = {"metatokens.model.gpt": {"metatokens.training.loop", "metatokens.model.config"},
             "metatokens.training.loop": {"metatokens.analysis.ablate", "metatokens.model.gpt"},
             "metatokens.analysis.ablate": set(), "metatokens.model.config": set()}
    assert upward_imports(graph) == ["metatokens.model.gpt -> metatokens.training.loop",
                                     "metatokens.training.loop -> metatokens.analysis.ablate"]


def test_every_test_file_sits_in_a_layer_pytest_collects():
    """pyproject's testpaths are tests/unit, tests/integration and tests/test_cuda.py: a test file put
    anywhere else under tests/ would never run."""
    tests = Path(__file__).resolve().parents[1]
    stray = sorted(p.relative_to(tests).as_posix() for p in tests.rglob("test_*.py")
                   if p.parent.name not in ("unit", "integration") and p.name != "test_cuda.py")
    assert stray == []
