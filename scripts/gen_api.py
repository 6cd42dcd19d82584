"""Write docs/API.md from the docstrings: every public module of ``blockdrop`` and ``blockdrop_ext``
(those with an ``__all__``; the command-line modules excepted), each public name defined there
with its signature and the first paragraph of its docstring.

    python scripts/gen_api.py            # rewrite docs/API.md
    python scripts/gen_api.py --check    # exit 1 if docs/API.md differs from what it would write

tests/test_docs.py runs the check, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "API.md"
PACKAGES = ("blockdrop_ext", "blockdrop")
SKIP = ("blockdrop.cli", "blockdrop.__main__")
# The layers from the bottom up; modules appear in this order, alphabetically within a layer.
LAYERS = (
    "blockdrop_ext",
    "blockdrop",
    "blockdrop.engine",
    "blockdrop.capacity",
    "blockdrop.models",
    "blockdrop.blockdrop_net",
    "blockdrop.interop",
    "blockdrop.checkpoint",
    "blockdrop.runtime",
    "blockdrop.errors",
    "blockdrop.data",
    "blockdrop.training",
    "blockdrop.evaluation",
    "blockdrop.recipes",
)

HEADER = """# API

Generated from the docstrings by `python scripts/gen_api.py` (do not edit; `tests/test_docs.py`
checks that this page matches the code). Each public module, in import order of the layers
(kernels -> engine -> models -> training -> evaluation -> recipes), with every public name it
defines: its signature and the first paragraph of its docstring. The docstrings say more:
`help(blockdrop.dynamic_forward)`.
"""


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring, on one line ("" when it has none: a
    docstring inherited from a base class does not count)."""
    doc = obj.__doc__
    if not doc or (inspect.isclass(obj) and doc == obj.__mro__[1].__doc__):
        return ""
    para = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines())


def signature(obj: Any) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return _no_address(sig)


def _no_address(text: str) -> str:
    """``text`` without memory addresses (``<function f at 0x7f..>`` -> ``<function f>``)."""
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _layer(name: str) -> tuple[int, str]:
    best = max(
        (i for i, p in enumerate(LAYERS) if name == p or name.startswith(p + ".")),
        key=lambda i: len(LAYERS[i]),
    )
    return best, name


def modules() -> list[ModuleType]:
    """The public modules: each package, then its submodules, depth first, sorted by name."""
    out: list[ModuleType] = []
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        out.append(pkg)
        for info in sorted(pkgutil.walk_packages(pkg.__path__, name + "."), key=lambda i: i.name):
            if any(p.startswith("_") for p in info.name.split(".")[1:]):
                continue
            if info.name.startswith(SKIP):
                continue
            out.append(importlib.import_module(info.name))
    keep = [m for m in out if hasattr(m, "__all__") or m.__name__ in PACKAGES]
    return sorted(keep, key=lambda m: _layer(m.__name__))


def _submodules(mod: ModuleType) -> list[ModuleType]:
    """The loaded submodules of a package (none for a plain module), sorted by name."""
    if not hasattr(mod, "__path__"):
        return []
    prefix = mod.__name__ + "."
    return [
        sys.modules[k] for k in sorted(sys.modules) if k.startswith(prefix) and sys.modules[k] is not None
    ]


def render_class(name: str, cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        head = f"- **`{name}`** (dataclass: {', '.join(f'`{f}`' for f in fields)})"
    else:
        head = f"- **`{name}{signature(cls)}`**"
    lines = [head + (f" -- {first_paragraph(cls)}" if first_paragraph(cls) else "")]
    for attr, member in vars(cls).items():
        if attr.startswith("_"):
            continue
        fn = member.fget if isinstance(member, property) else member
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        if not inspect.isfunction(fn) or not fn.__doc__:
            continue
        sig = (
            ""
            if isinstance(member, property)
            else signature(fn).replace("(self, ", "(").replace("(self)", "()")
        )
        lines.append(f"  - `.{attr}{sig}` -- {first_paragraph(fn)}")
    return lines


def render_module(mod: ModuleType) -> list[str]:
    lines = [f"## `{mod.__name__}`", ""]
    doc = first_paragraph(mod)
    if doc:
        lines += [doc, ""]
    names = list(getattr(mod, "__all__", []))
    own, reexported = [], []
    where: dict[str, str] = {}
    for n in names:
        obj = getattr(mod, n)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            home = obj.__module__
        elif inspect.ismodule(obj):
            home = obj.__name__
        else:  # a constant: defined in a submodule of a package?
            home = next((m.__name__ for m in _submodules(mod) if getattr(m, n, None) is obj), mod.__name__)
        if home != mod.__name__:
            reexported.append(n)
            where[n] = home
        else:
            own.append(n)
    for n in own:
        obj = getattr(mod, n)
        if inspect.isclass(obj):
            lines += render_class(n, obj)
        elif inspect.isfunction(obj):
            doc = first_paragraph(obj)
            lines.append(f"- **`{n}{signature(obj)}`**" + (f" -- {doc}" if doc else ""))
        elif not inspect.ismodule(obj):
            value = _no_address(repr(obj))
            lines.append(f"- `{n}` = `{value if len(value) <= 90 else value[:87] + '...'}`")
    if reexported:
        lines.append("- also here: " + ", ".join(f"`{n}` (`{where[n]}`)" for n in reexported))
    return lines + [""]


def generate() -> str:
    lines = HEADER.splitlines() + [""]
    for mod in modules():
        lines += render_module(mod)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = generate()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
