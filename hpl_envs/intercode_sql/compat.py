"""Make a MariaDB server look like the MySQL 8.0 server InterCode was recorded on.

Debian ships MariaDB, not MySQL. Query results agree, but two things an agent reads differ:

* error messages: MariaDB 10.11 says ``Unknown column 'x' in 'SELECT'`` where MySQL 8 says
  ``... in 'field list'`` (and ``'IN/ALL/ANY'`` where MySQL 8 says ``'IN/ALL/ANY subquery'``), names
  itself in syntax errors, and reports a missing function, or a database outside the Spider set, as
  a privilege error for hpl's read-only account (InterCode's admin account saw
  ``FUNCTION db.f does not exist`` and ``Unknown database 'x'``);
* schema listings (``DESCRIBE t``, ``SHOW COLUMNS``): MariaDB prints integer display widths
  (``int(11)``). The type and default columns come back as ``bytes`` or ``str`` depending on the
  client library's version: InterCode's GPT-4 recordings show ``b'int'`` and ``b''``, its GPT-3.5
  (ReAct) recordings ``'int'`` (``describe_types="bytes"`` / ``"str"``).

With ``mysql8_compat=True`` (the default) the env rewrites both, so observations match what models
trained on InterCode data have seen. Everything else (rows, values) is the server's own.
"""

from __future__ import annotations

import re

_CLAUSES = {"SELECT": "field list", "WHERE": "where clause", "ON": "on clause", "ORDER BY": "order clause",
            "GROUP BY": "group statement", "HAVING": "having clause", "IN/ALL/ANY": "IN/ALL/ANY subquery"}
_UNKNOWN_COL = re.compile(r"^(Unknown column '.*' in) '(SELECT|WHERE|ON|ORDER BY|GROUP BY|HAVING|IN/ALL/ANY)'$",
                          re.DOTALL)
_AMBIGUOUS = re.compile(r"^(Column '.*' in) (SELECT|WHERE|ON|ORDER BY|GROUP BY|HAVING) (is ambiguous)$", re.DOTALL)
_ROUTINE_DENIED = re.compile(r"^execute command denied to user '[^']*'@'[^']*' for routine '([^']+)'$")
_DATABASE_DENIED = re.compile(r"^Access denied for user '[^']*'@'[^']*' to database '([^']+)'$")
_TABLE_DENIED = re.compile(r"^\w+ command denied to user '[^']*'@'[^']*' for table `([^`]+)`\.`[^`]+`$")
DESCRIBE_TYPES = ("bytes", "str")
_SCHEMA_LISTING = re.compile(r"^\s*(?:DESC|DESCRIBE|EXPLAIN)\s+[`\w.]+\s*;?\s*$|^\s*SHOW\s+(?:FULL\s+)?(?:COLUMNS|FIELDS)\b",
                             re.IGNORECASE)
_INT_WIDTH = re.compile(r"^(tinyint|smallint|mediumint|int|integer|bigint|year)\(\d+\)")


def mysql8_error(msg: str) -> str:
    """MariaDB's message for the read-only account -> what MySQL 8 told InterCode's admin account."""
    m = _UNKNOWN_COL.match(msg)
    if m:
        return f"{m.group(1)} '{_CLAUSES[m.group(2)]}'"
    m = _AMBIGUOUS.match(msg)
    if m:
        return f"{m.group(1)} {_CLAUSES[m.group(2)]} {m.group(3)}"
    m = _ROUTINE_DENIED.match(msg)
    if m:
        return f"FUNCTION {m.group(1)} does not exist"
    m = _DATABASE_DENIED.match(msg) or _TABLE_DENIED.match(msg)
    if m:  # the account may read every Spider database, so a denial means one outside the sandbox
        return f"Unknown database '{m.group(1)}'"
    return (msg.replace("corresponds to your MariaDB server version", "corresponds to your MySQL server version")
            .replace("This version of MariaDB", "This version of MySQL"))


def mysql8_type(type_name: str | bytes, as_bytes: bool = True) -> bytes | str:
    """'int(11)' -> b'int', 'int(11) unsigned' -> b'int unsigned'; tinyint(1) keeps its width."""
    t = type_name.decode() if isinstance(type_name, (bytes, bytearray)) else str(type_name)
    if not t.startswith("tinyint(1)"):
        t = _INT_WIDTH.sub(r"\1", t)
    return t.encode() if as_bytes else t


def is_schema_listing(sql: str) -> bool:
    return bool(_SCHEMA_LISTING.match(sql))


def mysql8_schema_rows(rows: list[tuple], describe_types: str = "bytes") -> list[tuple]:
    """Type (column 2) and a non-NULL Default (column 5) as MySQL 8 shows them, as ``bytes``
    (the connector InterCode's GPT-4 runs used) or ``str`` (its GPT-3.5 runs)."""
    if describe_types not in DESCRIBE_TYPES:
        raise ValueError(f"intercode-sql: describe_types must be one of {DESCRIBE_TYPES}, got {describe_types!r}")
    as_bytes = describe_types == "bytes"
    out = []
    for r in rows:
        if len(r) >= 5:
            default = r[4]
            if as_bytes and isinstance(default, str):
                default = default.encode()
            elif not as_bytes and isinstance(default, (bytes, bytearray)):
                default = default.decode()
            out.append((r[0], mysql8_type(r[1], as_bytes), r[2], r[3], default, *r[5:]))
        else:
            out.append(r)
    return out
