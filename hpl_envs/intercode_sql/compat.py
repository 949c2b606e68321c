"""Make a MariaDB server look like the MySQL 8.0 server InterCode was recorded on.

Debian ships MariaDB, not MySQL. Query results agree, but two things an agent reads differ:

* error messages: MariaDB 10.11 says ``Unknown column 'x' in 'SELECT'`` where MySQL 8 says
  ``... in 'field list'``, names itself in syntax errors, and reports a missing function as a
  privilege error for hpl's read-only account;
* schema listings (``DESCRIBE t``, ``SHOW COLUMNS``): MariaDB prints integer display widths
  (``int(11)``) and the connector returns type and default as ``str``; InterCode's recordings show
  MySQL 8's ``b'int'`` and ``b''``.

With ``mysql8_compat=True`` (the default) the env rewrites both, so observations match what models
trained on InterCode data have seen. Everything else (rows, values) is the server's own.
"""

from __future__ import annotations

import re

_CLAUSES = {"SELECT": "field list", "WHERE": "where clause", "ON": "on clause", "ORDER BY": "order clause",
            "GROUP BY": "group statement", "HAVING": "having clause"}
_UNKNOWN_COL = re.compile(r"^(Unknown column '.*' in) '(SELECT|WHERE|ON|ORDER BY|GROUP BY|HAVING)'$", re.DOTALL)
_AMBIGUOUS = re.compile(r"^(Column '.*' in) (SELECT|WHERE|ON|ORDER BY|GROUP BY|HAVING) (is ambiguous)$", re.DOTALL)
_ROUTINE_DENIED = re.compile(r"^execute command denied to user '[^']*'@'[^']*' for routine '([^']+)'$")
_SCHEMA_LISTING = re.compile(r"^\s*(?:DESC|DESCRIBE|EXPLAIN)\s+[`\w.]+\s*;?\s*$|^\s*SHOW\s+(?:FULL\s+)?(?:COLUMNS|FIELDS)\b",
                             re.IGNORECASE)
_INT_WIDTH = re.compile(r"^(tinyint|smallint|mediumint|int|integer|bigint|year)\(\d+\)")


def mysql8_error(msg: str) -> str:
    m = _UNKNOWN_COL.match(msg)
    if m:
        return f"{m.group(1)} '{_CLAUSES[m.group(2)]}'"
    m = _AMBIGUOUS.match(msg)
    if m:
        return f"{m.group(1)} {_CLAUSES[m.group(2)]} {m.group(3)}"
    m = _ROUTINE_DENIED.match(msg)
    if m:
        return f"FUNCTION {m.group(1)} does not exist"
    return (msg.replace("corresponds to your MariaDB server version", "corresponds to your MySQL server version")
            .replace("This version of MariaDB", "This version of MySQL"))


def mysql8_type(type_name: str) -> bytes:
    """'int(11)' -> b'int', 'int(11) unsigned' -> b'int unsigned'; tinyint(1) keeps its width."""
    t = type_name.decode() if isinstance(type_name, (bytes, bytearray)) else str(type_name)
    if not t.startswith("tinyint(1)"):
        t = _INT_WIDTH.sub(r"\1", t)
    return t.encode()


def is_schema_listing(sql: str) -> bool:
    return bool(_SCHEMA_LISTING.match(sql))


def mysql8_schema_rows(rows: list[tuple]) -> list[tuple]:
    """Type (column 2) and a non-NULL Default (column 5) come back as bytes from MySQL 8."""
    out = []
    for r in rows:
        if len(r) >= 5:
            default = r[4].encode() if isinstance(r[4], str) else r[4]
            out.append((r[0], mysql8_type(r[1]), r[2], r[3], default, *r[5:]))
        else:
            out.append(r)
    return out
