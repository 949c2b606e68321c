"""Pages generated from code at build time (never committed): one page per env, from its class
docstring (Gymnasium's template) and its registry profile, and the CLI reference, from each CLI's
argparse parser. Imported by ``gen_pages.py`` (run by mkdocs-gen-files) and by ``tests/test_docs.py``
(which checks the flags that docs name against the same parsers).
"""

from __future__ import annotations

import argparse
import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTES = REPO / "docs" / "_notes"


@dataclass(frozen=True)
class Cli:
    """A command whose flags the reference lists: its name and the module holding ``build_parser()``."""

    command: str
    module: str
    slug: str


CLIS = (
    Cli("hpl-gen", "hpl_data.cli_gen", "hpl-gen"),
    Cli("hpl-eval", "hpl_data.cli_eval", "hpl-eval"),
    Cli("hpl-eval compare", "hpl_data.compare", "hpl-eval-compare"),
    Cli("hpl-data", "hpl_data.cli_data", "hpl-data"),
    Cli("hpl-train", "hpl_train.cli", "hpl-train"),
    Cli("hpl-serve", "hpl_data.cli_serve", "hpl-serve"),
)


def parser_of(cli: Cli) -> argparse.ArgumentParser:
    return importlib.import_module(cli.module).build_parser()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{name: parser}`` of a parser's subcommands (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--flag`` a parser accepts (its subcommands' excluded)."""
    return {s for a in parser._actions for s in a.option_strings}


def resolve(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The parser a command line (``["hpl-data", "view", ...]``) reaches, and the words after it."""
    for cli in sorted(CLIS, key=lambda c: -len(c.command.split())):
        head = cli.command.split()
        if words[: len(head)] == head:
            parser, rest = parser_of(cli), words[len(head):]
            subs = subparsers(parser)
            if subs and rest and rest[0] in subs:
                parser, rest = subs[rest[0]], rest[1:]
            return parser, rest
    return None


def parse_known(words: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """A documented command line parsed by its CLI's parser (placeholders such as ``...`` kept as extras)."""
    parser, _ = resolve(words)
    head = next(c for c in CLIS if words[: len(c.command.split())] == c.command.split())
    return parser.parse_known_args([w for w in words[len(head.command.split()):] if w != "..."])


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped, brackets escaped (``[#model]`` is no link reference)."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]").replace("\n", " ")


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(action, argparse._StoreFalseAction):
        return ""
    return f"`{action.default}`" if not isinstance(action.default, list) or action.default else ""


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            name += " {" + ", ".join(str(c) for c in action.choices) + "}"
        help_text = (action.help or "") % {"default": action.default} if action.help else ""
        rows.append(f"| {name} | {_default(action)} | {_cell(help_text)} |")
    return rows


def cli_page(cli: Cli) -> str:
    """The reference page of one CLI: usage, description and every argument, read from its parser."""
    parser = parser_of(cli)
    lines = [f"# `{cli.command}`", "", f"Generated from `{cli.module}.build_parser()`.", "",
             "```text", parser.format_usage().strip(), "```", ""]
    if parser.description:
        lines += ["```text", parser.description.strip(), "```", ""]
    lines += _arguments_table(parser)
    for name, sub in subparsers(parser).items():
        lines += ["", f"## `{cli.command} {name}`", "", "```text", sub.format_usage().strip(), "```", ""]
        if sub.description or sub.format_help():
            lines += _arguments_table(sub)
    return "\n".join(lines) + "\n"


def cli_index() -> str:
    lines = ["# Command-line tools", "",
             "Every page here is generated from the CLI's own argparse parser at build time, so it cannot "
             "drift from the code. Each CLI parses its flags into a typed config and calls library code.", ""]
    lines += [f"- [`{c.command}`]({c.slug}.md)" for c in CLIS]
    lines += ["", "Bad input (an unknown env, agent or split, missing data, a count below 1, an `--out` that "
              "cannot be written, ...) gives one line `hpl-xxx: what is wrong` on stderr and exit code 2, "
              "before any work starts (also with `--quiet`); anything else is a bug and says so in one "
              "line, and `--debug` shows its traceback (`hpl_data/cli_common.py`)."]
    return "\n".join(lines) + "\n"


def class_docstring(env_name: str) -> tuple[str, str]:
    """(class name, docstring) of an env, read from its source without importing it (importing
    ALFWorld's env needs the alfworld extra; the docs build must not)."""
    from hpl_envs.registry import profile

    module, cls = profile(env_name).entry_point.split(":")
    source = REPO / (module.replace(".", "/") + ".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return cls, ast.get_docstring(node) or ""
    raise LookupError(f"{cls} not found in {source}")


def _profile_table(env_name: str) -> list[str]:
    from hpl_envs.registry import ALIASES, profile

    p = profile(env_name)
    aliases = ", ".join(f"`{a}`" for a, n in ALIASES.items() if n == p.name) or "none"
    _, t2, t3 = p.length_thresholds
    rows = [
        ("Gymnasium id", f"`{p.gym_id}`"),
        ("`--env` name (aliases)", f"`{p.name}` ({aliases})"),
        ("class", f"`{p.entry_point.replace(':', '.')}`"),
        ("max turns (default)", str(p.max_turns)),
        ("`hpl-eval` default splits", ", ".join(f"`{s}`" for s in p.eval_splits)),
        ("success", "`won`" if p.success_key == "won" else "reward == 1.0"),
        ("episode outcome range", f"{p.reward_range[0]} to {p.reward_range[1]}"
         + "".join(f"; with `{k}={v!r}`: {r[0]} to {r[1]}" for k, by in p.reward_range_when.items()
                   for v, r in by.items())),
        ("expert bar (trajectories kept for pairs)", f"reward >= {p.expert_min_reward}"),
        ("curriculum group-length buckets", f"B1 <= {t2} actions, B2 <= {t3}, B3 longer"),
        ("multi-line actions", "yes" if p.multiline_actions else "no"),
    ]
    return ["| profile (`hpl_envs.registry`) | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def env_page(env_name: str) -> str:
    """Gymnasium's env page: summary, the profile, the docstring's sections, then fidelity and speed."""
    from hpl_envs.registry import profile

    cls, doc = class_docstring(env_name)
    summary, _, body = doc.partition("\n\n")
    title = profile(env_name).gym_id.split("/")[-1].rsplit("-v", 1)[0]  # hpl/WebShop-v0 -> WebShop
    lines = [f"# {title}", "", summary.strip(), "", *_profile_table(env_name), "",
             f"Generated from the docstring of `{cls}` and its `EnvProfile`.", "", body.strip(), ""]
    notes = NOTES / f"{env_name}.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines)


def env_names() -> list[str]:
    from hpl_envs.registry import PROFILES

    return list(PROFILES)


def profile_entry(env_name: str) -> str:
    """``module:Class`` of an env (its source holds the docstring its page is generated from)."""
    from hpl_envs.registry import profile

    return profile(env_name).entry_point
