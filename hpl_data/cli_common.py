"""The command-line tools' error boundary and argument checks, shared by every ``hpl-*`` CLI.

A user's mistake (a bad flag value, a missing or unreadable file, an output path that cannot be
written, a server that is down) ends as one line ``hpl-xxx: <what is wrong, how to fix it>`` on
stderr and exit status 2, before any work starts where it can be checked up front, and whatever
``--quiet`` says. Anything else is a bug: one line asking for ``--debug``, which shows the full
traceback (for the expected errors too). Standard library only: ``hpl_train`` uses it as well.

SIGINT (Ctrl-C) and SIGTERM (what Slurm, Kubernetes and Ray send on preemption) stop a command the
same orderly way: one line, exit status 128 + the signal's number (130, 143). SIGTERM takes
Ctrl-C's path: inside ``asyncio.run`` its main task is cancelled (every ``finally`` runs: env
workers are stopped, finished shards stay), elsewhere :class:`Terminated` is raised.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

EXIT_USAGE = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
MAX_CONCURRENCY = 4096  # episodes in flight; more only holds memory (a run has fewer tasks than this anyway)


class CliError(ValueError):
    """An expected failure (usually a mistake in what the user asked for); the message says what
    is wrong and how to fix it."""


# OSError covers missing/unreadable files (DataMissingError is a FileNotFoundError), ValueError bad
# values (DataCorruptError, json/Unicode decode errors, hpl_train's DataError). CLIs add their own.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line through the boundary (argparse prints the
    usage block first); subcommand parsers inherit it. ``--debug`` is taken by :func:`run_cli`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._subparsers is None and "--debug" not in self._option_string_actions:
            self.add_argument("--debug", action="store_true",
                              help="show the traceback of any error (for bug reports)")

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt so that the same clean-up runs."""


class _SigtermAsInterrupt:
    """While installed (main thread only), SIGTERM goes where SIGINT goes, and is remembered."""

    def __init__(self) -> None:
        self.received = False
        self.previous = None

    def __enter__(self) -> _SigtermAsInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _on_sigterm(self, signum: int, frame) -> None:
        self.received = True
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt):  # Python's (raises KeyboardInterrupt) or asyncio.run's (cancels its task)
            on_interrupt(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job of a script) or not Python's to handle
            raise Terminated()


def one_line(message: str) -> str:
    """Multi-line messages (install hints, paths) joined so that one error is one line."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return "; ".join(parts) or "(no message)"


def run_cli(prog: str, body: Callable[[list[str]], int], argv: list[str] | None = None,
            expected: tuple[type[BaseException], ...] = ()) -> int:
    """``body(argv)`` inside the boundary; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HPL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    sigterm = _SigtermAsInterrupt()
    try:
        with sigterm:
            return body(argv)
    except KeyboardInterrupt as e:
        if debug:
            raise
        terminated = sigterm.received or isinstance(e, Terminated)
        print(f"{prog}: {'terminated (SIGTERM)' if terminated else 'interrupted (SIGINT)'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except (CliError, *EXPECTED_ERRORS, *expected) as e:
        if debug:
            raise
        print(f"{prog}: {one_line(_describe(e))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a bug: say so in one line, the traceback is one flag away
        if debug:
            raise
        print(f"{prog}: internal error ({type(e).__name__}: {one_line(str(e))[:300]}); this is a bug: rerun with "
              "--debug for the traceback and report it", file=sys.stderr)
        return EXIT_BUG


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror and str(e.filename) not in str(e.args[-1]):
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]  # str(KeyError) adds quotes
    return str(e) or type(e).__name__


# --- argparse value types -----------------------------------------------------------------------
def positive_int(text: str) -> int:
    """``--limit``, ``--max-turns``, ...: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """``--episode-timeout`` and other durations: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def max_workers() -> int:
    """Env worker processes worth starting here: each holds its own env (hundreds of MB for some)."""
    return max(8, 2 * (os.cpu_count() or 1))


def worker_count(text: str) -> int:
    """``--workers``: a whole number >= 1 (how many this machine can hold is :func:`check_local_workers`)."""
    return positive_int(text)


def check_local_workers(value: int) -> None:
    """Local env workers are processes on this machine, each with its own env: cap them (on a Ray
    cluster, ``--ray``, the cluster's CPUs are the limit instead)."""
    cap = max_workers()
    if value > cap:
        raise CliError(f"--workers {value}: {value} worker processes is more than this machine can use: at most {cap} "
                       f"here ({os.cpu_count()} CPUs), each a process with its own env; on a cluster add --ray ADDRESS")


RAY_INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'hpl[ray]'"


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """``--ray [auto|ADDRESS]`` and ``--ray-cpus-per-worker``, the same for every CLI that runs envs."""
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                        help="env workers as Ray actors spread over a cluster: ADDRESS (host:port of the head, "
                             "as `ray start --head` prints it) or auto (the running cluster, else a local one); "
                             "--workers is then the number of actors")
    parser.add_argument("--ray-cpus-per-worker", type=positive_float, default=1.0,
                        help="CPUs each Ray env actor reserves (default 1)")


def check_ray(args: argparse.Namespace) -> None:
    """With ``--ray``: Ray must be importable (else one line with the install hint); without it,
    the local worker cap applies."""
    if args.ray is None:
        check_local_workers(args.workers)
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise CliError(RAY_INSTALL_HINT) from None
    from hpl_data.workers.ray import check_reachable

    try:
        check_reachable(args.ray)
    except (ValueError, ConnectionError) as e:
        raise CliError(str(e)) from None


def concurrency(text: str) -> int:
    value = positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"at most {MAX_CONCURRENCY} episodes in flight, got {value}")
    return value


# --- output paths ----------------------------------------------------------------------------------
def check_output(path: Path, kind: str, flag: str = "--out") -> Path:
    """Fail before any work if ``path`` cannot become a file (``kind="file"``) or a directory
    (``kind="dir"``): it is the wrong kind of thing, a parent is a file, or nothing may be written."""
    path = Path(path)
    if path.exists():
        if kind == "file" and path.is_dir():
            raise CliError(f"{flag} {path} is a directory; name a file (e.g. {path / 'summary.json'})")
        if kind == "dir" and not path.is_dir():
            raise CliError(f"{flag} {path} is an existing file, and a directory is written there; "
                             "name a new or existing directory")
        target = path
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise CliError(f"{flag} {path}: {target} is a file, so nothing can be created under it; "
                             "choose another path")
    if not os.access(target if target.is_dir() else target.parent, os.W_OK):
        raise CliError(f"{flag} {path}: no permission to write in {target}")
    return path


def out_location(value: str) -> Path | str:
    """A URI stays a string (a Path would fold its '//'); anything else is a folder."""
    from hpl_data.storage import Output, is_uri

    if is_uri(value):
        try:
            Output(value)  # a one-line error now for a scheme pyarrow does not know
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
        return value
    return Path(value)
