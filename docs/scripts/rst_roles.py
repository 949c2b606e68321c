"""A griffe extension for the API reference: the package's docstrings use reST roles
(``:class:`EnvProfile```, ``:func:`~x.run```), which Markdown would print verbatim; render them as
code spans. Only the rendered text changes, never the code."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


class RstRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
