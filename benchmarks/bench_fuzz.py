"""Fuzz every env's ``step`` with hostile actions, in one run: crashes, slow steps, peak memory.

  python benchmarks/bench_fuzz.py [--actions 10000] [--envs webshop,alfworld,intercode-sql] [--seed 0]

Per env, ``--actions`` actions (default 10,000) drawn from: admissible actions (so that episodes
move on to other pages and states), mutations of them (brackets, case, whitespace, newlines,
Unicode, truncation, repetition), random strings over a hostile alphabet (brackets, quotes, SQL
punctuation, control characters, lone surrogates, right-to-left marks, emoji), non-string
actions, and 1 MB inputs built to make backtracking parsers quadratic (``search[[[[...``,
``Action: x`` + a megabyte of spaces, a megabyte of newlines or of random text). Each action
also goes through ``parse_react`` as a model output would. InterCode-SQL runs on its real
MariaDB server (the env starts it).

A crash is any exception out of ``step`` (or ``parse_react``); a slow step takes over 1 s.
The last line reads ``fuzz: crashes C, slow steps S, max step T s``.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
import traceback
from collections.abc import Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")

MB = 1 << 20
SLOW_S = 1.0
HOSTILE = ["[", "]", "[[", "]]", "(", ")", "{", "}", "'", '"', "`", "```", "\\", ";", "--", "/*", "*/", "/*!", "%",
           "_", ",", ".", "*", "**", ":", "：", "=", "<", ">", "\n", "\r", "\t", " ", "   ", "\x00", "\x1b[2J", "\x7f",
           "\u200f", "\u202e", "\ufeff", "\u2028", "\xa0", "\ud800", "\udfff", "😀", "ß", "İ", "K", "ſ",
           "Action:", "Thought:", "search", "click", "buy now", "next >", "< prev", "SELECT", "FROM", "WHERE",
           "UNION", "submit", "skip", "go to", "take", "put", "open", "desk 1", "0", "-1", "1e309", "NaN", "null"]


def big_inputs(rng: random.Random) -> list[str]:
    """1 MB inputs that make backtracking parsers quadratic, or that are just large."""
    return [
        "search" + "[" * MB,
        "search[" + "[" * MB + "]",
        "click[" + "x" * MB + "]",
        "search[" + " ".join(rng.choice(["red", "shirt", "xl", "cheap"]) for _ in range(MB // 5)) + "]",
        "Action: search[a]\n" + " " * MB + "y",
        "```" + " " * MB + "y",
        "\n" * MB,
        " " * MB,
        "".join(rng.choice(HOSTILE) for _ in range(MB // 3))[:MB],
        "go to " + "desk " * (MB // 5),
        "SELECT " + "a," * (MB // 2) + "1",
    ]


def mutate(action: str, rng: random.Random) -> str:
    ops = [
        lambda a: a.upper(),
        lambda a: a.replace("[", "[[", rng.randint(1, 3)),
        lambda a: a.replace("]", "", 1),
        lambda a: a + "]" * rng.randint(1, 4),
        lambda a: " " * rng.randint(1, 40) + a + "\n" * rng.randint(0, 3),
        lambda a: a[: rng.randint(0, len(a))],
        lambda a: a * rng.randint(2, 20),
        lambda a: f"Thought: hm\nAction: {a}",
        lambda a: a.replace(" ", rng.choice(["\t", "\xa0", "  ", "\n"])),
        lambda a: a + rng.choice(HOSTILE),
        lambda a: rng.choice(HOSTILE) + a,
        lambda a: "".join(c if rng.random() > 0.2 else rng.choice(HOSTILE) for c in a),
    ]
    return rng.choice(ops)(action)


def actions(admissible: list[str], observation: str, rng: random.Random, big: list[str]) -> object:
    """One fuzzed action for the current state."""
    words = observation.split()[:200] or ["x"]
    keywords = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
    r = rng.random()
    if r < 0.01:
        return rng.choice(big)
    if r < 0.02:
        return rng.choice([None, 0, -1, 3.5, b"click[buy now]", ["search[x]"], {"a": 1}])
    if r < 0.30 and admissible:
        return rng.choice(admissible).replace("<keywords>", rng.choice([keywords, keywords, "", "[", "x" * 500]))
    if r < 0.65 and admissible:
        return mutate(rng.choice(admissible).replace("<keywords>", keywords), rng)
    return "".join(rng.choice(HOSTILE) for _ in range(rng.randint(0, 60)))


def fuzz_env(env, task_ids: list[str], n: int, rng: random.Random) -> Iterator[tuple[str, float, str | None, object]]:
    """Yields (what, seconds, error, action) for every step and every parse."""
    from hpl_envs.react import parse_react

    big = big_inputs(rng)
    obs, info = env.reset(options={"task_id": rng.choice(task_ids)})
    for _ in range(n):
        action = actions(list(info.get("admissible_actions") or []), str(obs), rng, big)
        if isinstance(action, str):
            t0 = time.perf_counter()
            try:
                parse_react(action, multiline=env.env_name == "intercode-sql")
                yield "parse", time.perf_counter() - t0, None, action
            except Exception as e:  # noqa: BLE001 - a crash is what we count
                yield "parse", time.perf_counter() - t0, _crash(e, action), action
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            obs, reward, term, trunc, info = env.step(action)
        except Exception as e:  # noqa: BLE001
            yield "step", time.perf_counter() - t0, _crash(e, action), action
            term = True
        else:
            yield "step", time.perf_counter() - t0, None, action
        yield "step_cpu", time.process_time() - c0, None, action
        if term or trunc:
            obs, info = env.reset(options={"task_id": rng.choice(task_ids)})


def _crash(e: Exception, action: object) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {str(e)[:200]} at {where.filename}:{where.lineno} for {_shown(action)}"


def _shown(action: object) -> str:
    shown = repr(action)
    return shown if len(shown) <= 120 else f"{shown[:80]}... ({len(shown)} chars)"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_env(name: str, n: int, seed: int) -> dict:
    from hpl_envs import make_env

    env = make_env(name)
    if hasattr(env, "warm_caches"):
        env.warm_caches()  # search index, spaCy: loaded on first use, not what is measured here
    split = {"webshop": "test", "alfworld": "valid_unseen", "intercode-sql": "test"}[name]
    rng = random.Random(f"{seed}:{name}")
    task_ids = env.task_ids(split)
    task_ids = rng.sample(task_ids, min(8, len(task_ids)))  # ALFWorld keeps 8 games loaded
    result = {"env": name, "steps": 0, "crashes": 0, "slow": 0, "max_step_s": 0.0, "max_parse_s": 0.0, "max_step_cpu_s": 0.0,
              "examples": [], "slowest": ""}
    t0 = time.perf_counter()
    try:
        for what, seconds, error, action in fuzz_env(env, task_ids, n, rng):
            if what == "step_cpu":  # this process's CPU time: tells a slow step from a busy machine
                result["max_step_cpu_s"] = max(result["max_step_cpu_s"], seconds)
                continue
            result["steps"] += what == "step"
            key = "max_step_s" if what == "step" else "max_parse_s"
            if seconds > result[key]:
                result[key] = seconds
                if what == "step":
                    result["slowest"] = _shown(action)
            if seconds > SLOW_S:
                result["slow"] += 1
                if len(result["examples"]) < 8:
                    result["examples"].append(f"slow {what} {seconds:.2f}s: {_shown(action)}")
            if error:
                result["crashes"] += 1
                if len(result["examples"]) < 8:
                    result["examples"].append(f"crash {what}: {error}")
    finally:
        env.close()
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actions", type=int, default=10_000, help="fuzzed actions per env")
    ap.add_argument("--envs", default="webshop,alfworld,intercode-sql")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    crashes = slow = 0
    max_step = 0.0
    for name in [e.strip() for e in args.envs.split(",") if e.strip()]:
        r = run_env(name, args.actions, args.seed)
        crashes, slow, max_step = crashes + r["crashes"], slow + r["slow"], max(max_step, r["max_step_s"])
        print(f"{name}: {r['steps']} steps in {r['wall_s']:.1f}s | crashes {r['crashes']} | steps over {SLOW_S:g}s "
              f"{r['slow']} | max step {r['max_step_s']:.3f}s ({r['max_step_cpu_s']:.3f}s CPU in this process) | max parse_react {r['max_parse_s']:.4f}s | "
              f"peak RSS so far {r['peak_rss_mb']:.0f} MB", flush=True)
        print(f"  slowest step: {r['slowest']}", flush=True)
        for ex in r["examples"]:
            print(f"  {ex}", flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"fuzz: crashes {crashes}, slow steps {slow}, max step {max_step:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
