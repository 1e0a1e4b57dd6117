"""Extract English prose from the standard library: module, class and function docstrings plus
the pydoc language-reference topics.

Meant to run as a script in a fresh, isolated interpreter (``python -I -S _stdlib_prose.py OUT``,
see `corpora.builtin_documents`), for two reasons: the caller's process is not burdened with
~350 imported modules or whatever they do on import, and the result cannot depend on the
caller's state - pytest, IPython and friends replace hooks such as ``sys.unraisablehook``, and
``site`` adds ``help``/``exit`` to builtins, which would change the text. Uses the stdlib only.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import sys
import warnings

# Top-level modules never imported: they act on import (open a browser, print, touch the
# terminal or a GUI, write grammar caches), belong to tests or tools, or are replaced by
# third-party code (setuptools hijacks distutils), which would make the text depend on the venv.
SKIP_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "tkinter",
        "turtle",
        "turtledemo",
        "idlelib",
        "test",
        "lib2to3",
        "distutils",
        "readline",
        "rlcompleter",
        "ensurepip",
        "encodings",  # dozens of codec modules with boilerplate docstrings
        "pydoc_data",  # read separately, one document per topic
    }
)
SKIP_SUBMODULES = frozenset({"test", "tests", "idle_test"})
# Shorter docstrings are mostly "Return self." style boilerplate.
MIN_DOCSTRING_CHARS = 20


def quiet_import(name: str):
    """Import `name` with warnings and stray output swallowed; None when it cannot be imported."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
            io.StringIO()
        ):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - a module may raise anything on import, even SystemExit
        return None


def stdlib_modules() -> list:
    """Public stdlib modules and their public submodules, in sorted (deterministic) order."""
    names = getattr(sys, "stdlib_module_names", None) or sys.builtin_module_names  # < 3.10: C modules only
    modules = []
    for top in sorted(names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        module = quiet_import(top)
        if module is None:
            continue
        modules.append(module)
        # Breadth-first over subpackages, each level sorted.
        queue = [module] if hasattr(module, "__path__") else []
        while queue:
            package = queue.pop(0)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
                if info.name.startswith("_") or info.name in SKIP_SUBMODULES:
                    continue
                sub = quiet_import(f"{package.__name__}.{info.name}")
                if sub is None:
                    continue
                modules.append(sub)
                if info.ispkg and hasattr(sub, "__path__"):
                    queue.append(sub)
    return modules


def belongs_to(obj, module) -> bool:
    """Defined in `module`, or in a private helper it re-exports (a C accelerator such as _json).

    Objects imported from other public modules are left to those, so each docstring sits next
    to its own module's documentation.
    """
    owner = getattr(obj, "__module__", None)
    if owner == module.__name__:
        return True
    return isinstance(owner, str) and owner.rsplit(".", 1)[-1].startswith("_")


def module_docstrings(module) -> list:
    """Raw docstrings of a module, its public classes (with their methods) and functions."""
    docs = [module.__doc__]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not belongs_to(obj, module):
            continue
        if inspect.isclass(obj):
            docs.append(obj.__doc__)
            for member_name, member in sorted(vars(obj).items()):
                if member_name.startswith("_") and member_name != "__init__":
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property) or inspect.isroutine(member):
                    docs.append(getattr(member, "__doc__", None))
        elif inspect.isroutine(obj):
            docs.append(obj.__doc__)
    return docs


def extract() -> list[str]:
    """The documents: one per module (its docstrings joined), then one per pydoc topic."""
    documents: list[str] = []
    seen: set[str] = set()

    def keep(raw):
        if not isinstance(raw, str):
            return None
        text = inspect.cleandoc(raw).strip()
        if len(text) < MIN_DOCSTRING_CHARS or text in seen:
            return None
        seen.add(text)
        return text

    # Reading attributes can emit deprecation warnings (typing.io ...); they are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in stdlib_modules():
            parts = [text for text in map(keep, module_docstrings(module)) if text]
            if parts:
                documents.append("\n\n".join(parts))
        topics = quiet_import("pydoc_data.topics")
        if topics is not None:
            for name in sorted(topics.topics):
                text = keep(topics.topics[name])
                if text:
                    documents.append(text)
    return documents


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT.json", file=sys.stderr)
        return 2
    documents = extract()
    # A file rather than stdout: an imported module could still write to file descriptor 1.
    with open(argv[1], "w", encoding="ascii") as handle:
        json.dump(documents, handle, ensure_ascii=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
