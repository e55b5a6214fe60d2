"""A Sphinx directive that renders an options record as a table (``schema.option_table``).

``.. wakesleep-options:: iwae`` gives the options of the registered algorithm ``iwae``;
``.. wakesleep-options:: wakesleep.training.options:TrainOptions`` those of any record named by
``module:Class``. The table is built from the same declarations that validate a config, so it cannot drift
from the code.
"""

from __future__ import annotations

import importlib
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _record(target: str) -> type:
    if ":" in target:
        module, _, name = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    from wakesleep.algorithms import options_class

    return options_class(target)


def _cell(text: str, literal: bool = False) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    para += nodes.literal(text, text) if literal and text else nodes.Text(text)
    entry += para
    return entry


class OptionsTable(SphinxDirective):
    """Render the option table of an algorithm (by registered name) or of a record (``module:Class``)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from wakesleep import schema

        rows = schema.option_table(_record(self.arguments[0]))
        headers = ("option", "default", "type / range", "meaning")
        table = nodes.table(classes=["wakesleep-options"])
        group = nodes.tgroup(cols=len(headers))
        table += group
        for width in (18, 14, 24, 44):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        row = nodes.row()
        for h in headers:
            row += _cell(h)
        head += row
        group += head
        body = nodes.tbody()
        for r in rows:
            row = nodes.row()
            default = r["default"]
            if isinstance(default, tuple):
                default = list(default)
            kind = r["type"] if not r["range"] else f"{r['type']}, {r['range']}"
            row += _cell(r["name"], literal=True)
            row += _cell("" if default is None and r["name"] == "proposal" else repr(default), literal=True)
            row += _cell(kind)
            row += _cell(r["doc"])
            body += row
        group += body
        return [table]


class ModuleAPI(SphinxDirective):
    """``.. wakesleep-api:: wakesleep.eval``: the module's docstring, a summary table of everything in its
    ``__all__`` and the documentation of each (read when the site is built, so new exports appear by
    themselves)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        import inspect

        name = self.arguments[0]
        module = importlib.import_module(name)
        names = [n for n in getattr(module, "__all__", []) if not n.startswith("__")]
        lines = [f".. automodule:: {name}", "   :no-members:", "", f".. currentmodule:: {name}", ""]
        lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in names] + [""]
        for n in names:
            obj = getattr(module, n)
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {n}", "   :members:", ""]
            elif callable(obj):
                lines += [f".. autofunction:: {n}", ""]
            else:
                lines += [f".. autodata:: {n}", ""]
        source = self.state_machine.input_lines.source(self.lineno - self.state_machine.input_offset - 1)
        self.state_machine.insert_input(lines, source)
        return []


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``wakesleep-options`` and ``wakesleep-api`` directives."""
    app.add_directive("wakesleep-options", OptionsTable)
    app.add_directive("wakesleep-api", ModuleAPI)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
