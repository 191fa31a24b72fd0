"""Sphinx configuration of wsync's documentation site.

Build it (the ``docs`` extra installs Sphinx and the furo theme)::

    pip install -e '.[docs]'
    sphinx-build -W --keep-going -b html docs docs/_build/html

CI builds it the same way, so a warning (a broken reference, a docstring Sphinx cannot read, a
public name or field missing from the API reference) fails the build. Two helpers live here:

- the ``wsync-help`` directive prints ``wsync ... --help`` as the installed command writes it,
  so the command-line page never drifts from the parser;
- ``check_api_coverage`` warns about every public name, field, enum value and constructor
  argument that the API reference leaves out.
"""

from __future__ import annotations

import enum
import inspect
import os
import re
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

# Document the checkout these docs belong to, not another wsync that happens to be installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wsync  # noqa: E402
import wsync.testing  # noqa: E402

project = "wsync"
author = "The wsync authors"
copyright = "2026, The wsync authors"
release = wsync.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build"]
templates_path: list[str] = []

html_theme = "furo"
html_title = f"wsync {release}"
html_static_path: list[str] = []

# Docstrings are Google style (Args/Returns/Raises/Attributes).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = False  # Attributes: sections become attribute entries the index can link
napoleon_attr_annotations = False  # the class signature shows the types already
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"

logger = logging.getLogger("wsync-docs")


class WsyncHelp(SphinxDirective):
    """``.. wsync-help:: send``: a literal block with the output of ``wsync send --help``."""

    required_arguments = 0
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        """Run the command in this interpreter and return its help text as a literal block."""
        command = [sys.executable, "-m", "wsync", *self.arguments, "--help"]
        env = {**os.environ, "COLUMNS": "88", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=60, env=env, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("wsync-help: %s failed: %s", " ".join(command[2:]), exc,
                           location=self.get_location())
            return []
        if done.returncode != 0:
            logger.warning("wsync-help: %s exited %d: %s", " ".join(command[2:]),
                           done.returncode, done.stderr.strip()[-500:],
                           location=self.get_location())
            return []
        text = done.stdout.rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _documented(env: BuildEnvironment) -> set[str]:
    """Every Python object the documentation describes, by full name."""
    return set(env.get_domain("py").objects)  # type: ignore[attr-defined]


def _mentioned(obj: Any, name: str) -> bool:
    """True if ``obj``'s docstring describes ``name`` in an Args or Attributes section."""
    return re.search(rf"^\s+{re.escape(name)}( \([^)]*\))?:", inspect.getdoc(obj) or "",
                     re.MULTILINE) is not None


def check_api_coverage(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn about each public name, field, value or argument the API reference leaves out."""
    documented = _documented(env)
    missing: list[str] = []

    def need(full_name: str) -> None:
        if full_name not in documented:
            missing.append(full_name)

    for module in (wsync, wsync.testing):
        for name in module.__all__:
            owner = f"{module.__name__}.{name}"
            need(owner)
            obj = getattr(module, name)
            if not isinstance(obj, type) or issubclass(obj, (BaseException, Future)):
                continue  # exceptions: their Attributes; MessageFuture: checked below
            if attrs.has(obj):  # every field: an attribute entry, or described as an argument
                for field in attrs.fields(obj):
                    if f"{owner}.{field.name}" not in documented and not _mentioned(obj, field.name):
                        missing.append(f"{owner}.{field.name}")
            elif "__init__" in vars(obj):  # every constructor argument is described
                for parameter in list(inspect.signature(obj).parameters):
                    if not _mentioned(obj, parameter):
                        missing.append(f"{owner}(..., {parameter}=...)")
            if issubclass(obj, enum.Enum):
                for member in obj:
                    need(f"{owner}.{member.name}")
                continue
            for member, value in vars(obj).items():  # every public method and property
                if not member.startswith("_") and (callable(value) or isinstance(value, property)):
                    need(f"{owner}.{member}")
    for name in ("message_id", "cancel"):
        need(f"wsync.MessageFuture.{name}")
    for name in sorted(set(missing)):
        logger.warning("the API reference (docs/api.rst) does not describe %s", name)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``wsync-help`` directive and the API coverage check."""
    app.add_directive("wsync-help", WsyncHelp)
    app.connect("env-check-consistency", check_api_coverage)
    return {"parallel_read_safe": True}
