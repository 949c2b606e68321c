"""ALFWorld (TextWorld PDDL) as a Gymnasium env with exact, replay-free snapshots."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import itertools
import json
import os
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpl_envs.alfworld.games import SPLIT_ALIASES, SPLITS, Game, discover
from hpl_envs.core import ActionResult, EnvUnavailableError, EpisodeState, HplTextEnv, TaskNotFoundError
from hpl_envs.data import DataCorruptError, cache_dir

try:
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    from textworld.envs.pddl import PddlEnv, textgen
except ImportError as e:  # pragma: no cover - exercised where alfworld is missing
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

_LOAD_SERIAL = itertools.count(1)

if _IMPORT_ERROR is None:

    class _PddlEnv(PddlEnv):
        """TextWorld's PddlEnv whose ``load`` closes the game file (the original's
        ``json.load(open(path))`` leaves it to the garbage collector: a ResourceWarning per game)."""

        def load(self, filename_or_data: Any) -> None:
            if not isinstance(filename_or_data, str | os.PathLike):
                return super().load(filename_or_data)
            with open(filename_or_data, encoding="utf-8") as f:
                super().load(json.load(f))
            self._game_file = str(filename_or_data)


def _install_parse_memo() -> None:
    """TextWorld re-parses the same grammar strings with tatsu at every step (~85 % of a step).
    The parse is a pure function of the text, so memoise it (returning fresh copies, since the
    derivation mutates the symbols). Behaviour is unchanged; tests compare against plain TextWorld."""
    if getattr(textgen, "_hpl_memo", False):
        return
    original = textgen._parse_and_convert
    cache: dict = {}

    def parse_and_convert(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(*args, **kwargs)
        return copy.deepcopy(cache[key])

    textgen._parse_and_convert = parse_and_convert
    textgen._hpl_memo = True


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off: fast-downward's translator allocates millions of small
    objects, and the collections they trigger were ~25 % of a translation's CPU time. What the
    translator leaves behind is collected once, when the collector is re-enabled."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _install_translation_cache() -> None:
    """Loading a game translates its PDDL to SAS+ with fast-downward's Python translator four times
    (two variants, in ``load`` and again in ``reset``): ~0.9 s, the whole cost of a load. The
    translation is a pure function of (domain, problem, optimize); keep results in memory and on disk
    in the cache, so a game translates once per machine."""
    import hashlib
    import pickle

    import fast_downward

    if getattr(fast_downward, "_hpl_memo", False):
        return
    original = fast_downward.pddl2sas
    memory: dict = {}
    folder = cache_dir() / "alfworld-sas"

    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        key = hashlib.sha256(f"{optimize}\0{domain}\0{problem}".encode()).hexdigest()
        if key in memory:
            return copy.deepcopy(memory[key])
        path = folder / f"{key}.pkl"
        result = None
        if path.exists():
            try:
                result = pickle.loads(path.read_bytes())
            except Exception:  # noqa: BLE001 - a torn cache file is recomputed
                result = None
        if result is None:
            with _gc_paused():
                result = original(domain, problem, verbose=verbose, optimize=optimize)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
                tmp.replace(path)
            except OSError:
                pass
        memory[key] = result
        if len(memory) > 64:
            memory.pop(next(iter(memory)))
        return copy.deepcopy(result)

    fast_downward.pddl2sas = pddl2sas
    fast_downward._hpl_memo = True


def _memoise_command_derivation(grammar) -> None:
    """Command templates ('take {o} from {r}', 'go to [{r.name | receptacleatlocation(...)}]') only
    depend on the action's arguments (receptacle locations never change in ALFWorld), so their
    derivation is cached per (template, arguments). Templates with grammar symbols ('#...#'), whose
    text depends on the state, are always derived."""
    original = grammar.derive
    cache: dict = {}

    def derive(start, context={}):  # noqa: B006 - mirrors TextWorld's signature
        if "#" in start:
            return original(start, context)
        key = (start, tuple(sorted((ph.name, var.name) for ph, var in context.get("mapping", {}).items())))
        if key not in cache:
            cache[key] = original(start, context)
        return cache[key]

    grammar.derive = derive


def process_observation(text: str) -> str:
    """ETO/IPR's ``process_ob``: drop the 'You arrive at loc N. ' prefix of old game files."""
    if text.startswith("You arrive at loc "):
        text = text[text.find(". ") + 2:]
    return text


def initial_observation(feedback: str) -> str:
    """ETO/IPR drop the '-= Welcome to TextWorld, ALFRED! =-' banner: room description + task."""
    return "\n".join(feedback.split("\n\n")[1:])


@dataclass
class _Snapshot:
    """Planner and Python-side state of a loaded game at one point."""

    state_id: int
    facts: dict
    vars_by_name: dict
    vars_by_type: dict
    var_counts: Any
    moves: int
    game_state: Any  # TextWorld GameState with admissible commands (only valid for this load)
    operators: dict


@dataclass
class AlfWorldState(EpisodeState):
    observation: str
    won: bool = False
    actions: list[str] = field(default_factory=list)
    load_token: tuple | None = None  # (pid, load serial): where the planner snapshot is valid
    snapshot: _Snapshot | None = field(default=None, repr=False)

    def copy(self) -> AlfWorldState:
        return replace(self, actions=list(self.actions))

    def __getstate__(self):  # the planner snapshot never leaves the process; replay is the fallback
        state = dict(self.__dict__)
        state["snapshot"] = None
        return state


class _LoadedGame:
    """One game loaded in-process: TextWorld's PDDL env with ALFWorld's wrappers."""

    def __init__(self, game: Game, slot=None) -> None:
        try:
            data = json.loads(game.path.read_text(encoding="utf-8"))
            missing = {"pddl_domain", "grammar", "pddl_problem"} - set(data)
            if missing:
                raise DataCorruptError(f"{game.path}: not an ALFWorld tw-pddl game (missing {sorted(missing)})")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataCorruptError(f"{game.path}: cannot read the game file ({e})") from e
        if slot is None:  # a new TextWorld env, with its own copy of fast-downward's library
            infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
            slot = AlfredInfos(AlfredDemangler(_PddlEnv(infos)))
        self.env = slot
        try:
            self.env.load(str(game.path))
            state = self.env.reset()
        except Exception as e:  # noqa: BLE001 - TextWorld raises many kinds on bad PDDL
            raise DataCorruptError(f"{game.path}: TextWorld could not load this game ({type(e).__name__}: {e})") from e
        self.pddl = self.env.unwrapped
        _memoise_command_derivation(self.pddl._logic.grammar)
        lib = self.pddl.downward_lib
        lib.get_state_id.restype = ctypes.c_int
        lib.get_state_id.argtypes = []
        lib.set_state_id.restype = None
        lib.set_state_id.argtypes = [ctypes.c_int]
        self.lib = lib
        self.token = (os.getpid(), next(_LOAD_SERIAL))
        self.walkthrough = list(data.get("walkthrough") or [])
        self.initial_feedback = state.feedback
        self.initial = self.snapshot()

    def snapshot(self) -> _Snapshot:
        ps = self.pddl._pddl_state
        return _Snapshot(
            state_id=self.lib.get_state_id(),
            facts={k: set(v) for k, v in ps._facts.items()},
            vars_by_name=dict(ps._vars_by_name),
            vars_by_type={k: set(v) for k, v in ps._vars_by_type.items()},
            var_counts=copy.copy(ps._var_counts),
            moves=self.pddl._moves,
            game_state=self.pddl.state,
            operators=dict(ps._operators),
        )

    def restore(self, snap: _Snapshot) -> None:
        ps = self.pddl._pddl_state
        self.lib.set_state_id(snap.state_id)
        ps._facts = defaultdict(set, {k: set(v) for k, v in snap.facts.items()})
        ps._vars_by_name = dict(snap.vars_by_name)
        ps._vars_by_type = defaultdict(set, {k: set(v) for k, v in snap.vars_by_type.items()})
        ps._var_counts = copy.copy(snap.var_counts)
        ps._operators = dict(snap.operators)
        self.pddl._moves = snap.moves
        self.pddl.state = snap.game_state

    def step(self, command: str):
        state, _, _ = self.env.step(command)
        return state

    # Libraries are never dlclose'd: closing and re-opening copies of libdownward crashed the process
    # after a few dozen games. Evicted games hand their env (and library) to the next game instead.


class AlfWorldEnv(HplTextEnv):
    """
    Household tasks in text: find, take, clean, heat, cool, look at and place objects.

    ## Description
    ALFWorld (Shridhar et al., 2021) on TextWorld's PDDL engine, with ALFWorld 0.4.2's demangled
    object names: six task types (``pick_and_place_simple``, ``look_at_obj_in_light``,
    ``pick_clean_then_place_in_recep``, ``pick_heat_then_place_in_recep``,
    ``pick_cool_then_place_in_recep``, ``pick_two_obj_and_place``). Observations are ETO/IPR's.
    A task is one game file, id ``<split>/<task dir>/<trial>``.

    ## Action Space
    A string (``FreeText``); one of ``info["admissible_actions"]`` (e.g. ``go to desk 1``,
    ``take alarmclock 2 from desk 1``, ``use desklamp 1``), compared after ``strip()``. Anything
    else is passed to TextWorld, which answers ``Nothing happens.``, and ``info["action_valid"]`` is
    False; text with a newline does nothing (TextWorld's PDDL env reads one line).

    ## Observation Space
    A string: TextWorld's feedback to the last action, without the ``You arrive at loc N.`` prefix
    of old game files (ETO/IPR's ``process_ob``).

    ## Starting State
    The game's initial state; the observation is the room description followed by ``Your task is
    to: <instruction>`` (the ``-= Welcome to TextWorld, ALFRED! =-`` banner dropped, as ETO/IPR do).
    ``reset(options={"task_id": ...})`` picks a game; ``reset(seed=...)`` without one draws a
    ``valid_unseen`` game uniformly with the env's ``np_random``. ``task_ids(split)``: ``train``,
    ``valid_seen`` (alias ``dev``), ``valid_unseen`` (alias ``test``).

    ## Rewards
    1.0 on the step that completes the task, else 0.

    ## Episode End
    - Termination: the task is completed (``won``).
    - Truncation: ``max_turns`` actions (default 30, the HPL paper's; ETO/IPR use 40) without it.

    After either, ``step`` raises ``RuntimeError("alfworld: episode is over; call reset()")``.

    ## Information
    Common keys (every hpl env, after ``reset`` and every ``step``):

    - ``task_id`` (str): the game's id.
    - ``task_type`` (str): one of the six task types above (from the game's folder name).
    - ``instruction`` (str): the ``Your task is to: ...`` text of the first observation.
    - ``admissible_actions`` (list[str]): TextWorld's admissible commands in the current state.
    - ``won`` (bool): the task is completed (only on the terminating step).
    - ``action_valid`` (bool): the action was admissible (True after reset).
    - ``turn`` (int): actions taken.

    ALFWorld's own keys:

    - ``restored_by`` (str): how the env's last ``set_state`` restored a snapshot: ``"snapshot"``
      (in-process, microseconds), ``"replay"`` (the actions replayed from reset), or ``""`` if this
      env has not restored one.

    ## Snapshots
    ``get_state()`` saves the planner's state id (each game holds its own fast-downward library) and
    the Python-side facts; ``set_state()`` restores them in microseconds. A snapshot that comes from
    another process (pickled) carries its action history instead and is restored by deterministic
    replay from reset; ``info["restored_by"]`` says which happened.

    ## Arguments
    ```python
    import gymnasium as gym
    import hpl_envs  # registers the ids
    gym.make("hpl/ALFWorld-v0", max_turns=30, cache_games=8)
    # or: hpl_envs.make_env("alfworld", ...); hpl-eval / hpl-gen: --env-arg cache_games=16
    ```

    - ``max_turns=30``: actions before truncation (the registry's default, the HPL paper's).
    - ``cache_games=8``: games kept loaded per env (least recently used evicted; a reload is ~1 s
      the first time on a machine, then the translated PDDL comes from the cache).
    - ``data_root=None``: the data folder holding ``alfworld/json_2.1.1`` (default ``$HPL_DATA_DIR``).
    - ``render_mode=None``: ``"ansi"`` makes ``render()`` return the observation.

    ## Version History
    * v0: initial release (alfworld 0.4.2, textworld 1.7, tw-pddl games of json_2.1.1).
    """

    env_name = "alfworld"
    splits = (*SPLITS, *SPLIT_ALIASES)
    state_type = AlfWorldState
    _state: AlfWorldState | None

    def __init__(self, max_turns: int = 30, cache_games: int = 8, data_root: str | Path | None = None,
                 render_mode: str | None = None) -> None:
        if _IMPORT_ERROR is not None:
            raise EnvUnavailableError(
                f"alfworld env needs the alfworld and textworld packages ({_IMPORT_ERROR}).\n"
                "  pip install 'hpl[alfworld]'   (builds fast-downward: needs cmake and a C++ compiler)")
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        _install_parse_memo()
        _install_translation_cache()
        self.games = discover(Path(data_root) if data_root else None)
        self.by_id = {g.task_id: g for split in self.games.values() for g in split}
        self.cache_games = max(1, int(cache_games))
        self._loaded: OrderedDict[str, _LoadedGame] = OrderedDict()
        self.last_restore = ""

    # --- tasks -------------------------------------------------------------------------
    def task_ids(self, split: str) -> list[str]:
        self._check_split(split)
        return [g.task_id for g in self.games[SPLIT_ALIASES.get(split, split)]]

    def game(self, task_id: str) -> Game:
        if task_id not in self.by_id:
            raise TaskNotFoundError(f"alfworld: no task {task_id!r} (ids look like 'valid_seen/<task>/<trial>')")
        return self.by_id[task_id]

    def _load(self, task_id: str) -> _LoadedGame:
        if task_id in self._loaded:
            self._loaded.move_to_end(task_id)
            return self._loaded[task_id]
        game = self.game(task_id)
        slot = None
        if len(self._loaded) >= self.cache_games:
            _, old = self._loaded.popitem(last=False)
            slot = old.env
        loaded = _LoadedGame(game, slot)
        self._loaded[task_id] = loaded
        return loaded

    def task_type(self, task_id: str) -> str:
        return self.game(task_id).task_type

    def instruction(self, task_id: str) -> str:
        """The ``Your task is to: ...`` line of the game's first observation."""
        for line in self._load(task_id).initial_feedback.splitlines():
            if line.startswith("Your task is to: "):
                return line[len("Your task is to: "):]
        return ""

    def _default_task_ids(self) -> list[str]:
        return self.task_ids("valid_unseen")

    # --- the episode (HplTextEnv's hooks) -------------------------------------------------
    def _reset_task(self, task_id: str) -> AlfWorldState:
        game = self._load(task_id)
        game.restore(game.initial)
        return AlfWorldState(task_id=task_id, observation=initial_observation(game.initial_feedback),
                             load_token=game.token)

    @property
    def observation(self) -> str:
        return self._require_state().observation

    def _apply_action(self, action: str) -> ActionResult:
        s = self._state
        game = self._game_for_state()
        command = action.strip()
        valid = command in (game.pddl.state["_valid_commands"] or [])
        # TextWorld's PDDL env only understands single-line commands; others do nothing, as it would
        state = game.step(command if "\n" not in command else "\n")
        s.actions.append(action)
        s.observation = process_observation(state.feedback)
        s.won = bool(state["won"])
        return ActionResult(reward=1.0 if s.won else 0.0, terminated=s.won, action_valid=valid, won=s.won)

    def _game_for_state(self) -> _LoadedGame:
        game = self._load(self._state.task_id)
        if self._state.load_token != game.token:
            raise RuntimeError("alfworld: env state does not belong to the loaded game")
        return game

    def admissible_actions(self) -> list[str]:
        game = self._game_for_state()
        return list(game.pddl.state["admissible_commands"])

    def _extra_info(self) -> dict[str, Any]:
        return {"restored_by": self.last_restore}

    # --- snapshots -----------------------------------------------------------------------
    def get_state(self) -> AlfWorldState:
        out = super().get_state()
        out.snapshot = self._game_for_state().snapshot()
        return out

    def _restore(self, state: AlfWorldState) -> None:
        game = self._load(state.task_id)
        if state.snapshot is not None and state.load_token == game.token:
            game.restore(state.snapshot)
            self._state = state.copy()
            self._state.snapshot = None
            self.last_restore = "snapshot"
            return
        # another process (or an evicted game): replay the actions from reset, deterministically
        self.reset(options={"task_id": state.task_id})
        for action in state.actions:
            self.step(action)
        if (self._state.observation, self._state.won) != (state.observation, state.won):
            raise RuntimeError(f"alfworld: replaying {state.task_id} did not reproduce the snapshot")
        self.last_restore = "replay"

    def walkthrough(self, task_id: str) -> list[str]:
        return list(self._load(task_id).walkthrough)

    def replan(self) -> list[str]:
        """A plan from the current state, by ALFWorld's planner (fast-downward)."""
        game = self._game_for_state()
        return game.pddl._pddl_state.replan(game.pddl._entity_infos)

    def close(self) -> None:
        self._loaded.clear()

    # --- protocol fingerprint ----------------------------------------------------------
    def protocol_parts(self, task_ids: list[str]) -> dict[str, Any]:
        """What an ALFWorld result depends on beyond the code: the game files behind the task ids and
        the alfworld / textworld versions that interpret them."""
        from importlib.metadata import version

        from hpl_envs.data import file_digest

        return {
            "data_files": {"games_sha256": file_digest([self.game(t).path for t in task_ids]) if task_ids else ""},
            "split_definition": "alfworld json_2.1.1/<split> tw-pddl games (dev = valid_seen, test = valid_unseen)",
            "alfworld_version": version("alfworld"),
            "textworld_version": version("textworld"),
        }
