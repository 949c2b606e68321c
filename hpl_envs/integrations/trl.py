"""hpl's envs as TRL ``GRPOTrainer(environment_factory=...)`` environments.

TRL (>= 1.16) builds one instance per rollout by calling the factory with no arguments, exposes
every public method of the class except ``reset`` and ``get_reward`` as a tool (its name, type
hints and Google-style docstring become the tool's JSON schema), calls ``reset(**row)`` with the
dataset row before generating (the returned text is appended to the last user message) and
``get_reward()`` once the rollout is over. So each class below has exactly its env's actions as
public methods; everything else is a property or private.

A tool returns what the env shows after the action, bad input included: WebShop shows the same
page again (the original's answer to an unknown element), ALFWorld says ``Nothing happens.``,
InterCode-SQL returns ``Error executing query: ...``. Nothing a model sends raises into the
trainer. Nothing here imports TRL: the classes only follow its protocol.

``functools.partial(WebShopToolEnv, split="dev", seed=3)`` is a factory with other arguments;
:func:`task_prompts` yields the dataset rows (one per task of a split) that ``reset`` reads. Each
env's profile names its class (``EnvProfile.tool_env``; :func:`adapter` loads it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, ClassVar

from hpl_envs.core import HplTextEnv
from hpl_envs.registry import EnvProfile, load_entry_point, make_env, profile


class ToolEnv:
    """One hpl env behind TRL's environment protocol: one episode at a time, its actions as tools.

    ``reset(task_id=...)`` starts that task (the :func:`task_prompts` rows carry it); without one it
    draws a task of ``split`` with the instance's own ``random.Random(seed)``, so instances built
    with the same seed draw the same sequence. ``get_reward()`` is the env's own episode reward (0
    until the episode ends with a scored action). Extra keyword arguments go to the env's
    constructor (``make_env``), e.g. ``max_turns`` or WebShop's ``catalog``.
    """

    env_name: ClassVar[str] = ""
    intro: ClassVar[str] = ""  # the user message of a dataset row: the task's rules, not the task

    def __init__(self, split: str = "train", seed: int = 0, **env_kwargs: Any) -> None:
        self._profile: EnvProfile = profile(self.env_name)
        self._env: HplTextEnv = make_env(self._profile.name, **env_kwargs)
        self._split = split
        self._task_ids = self._env.task_ids(split)  # raises on an unknown split
        if not self._task_ids:
            raise ValueError(f"{self._profile.name}: split {split!r} has no tasks")
        self._rng = random.Random(seed)
        self._info: dict[str, Any] = {}
        self._actions: list[str] = []
        self._reward = 0.0

    # --- TRL's protocol ----------------------------------------------------------------
    def reset(self, task_id: str | int | None = None, **row: Any) -> str:
        """Start an episode of ``task_id`` (else a task drawn from the split); returns the
        instruction and the first observation. Other dataset columns (``prompt``, ...) are ignored."""
        if task_id is None:
            task_id = self._rng.choice(self._task_ids)
        observation, self._info = self._env.reset(options={"task_id": str(task_id)})
        self._actions, self._reward = [], 0.0
        return self._first_message(observation, self._info)

    def get_reward(self) -> float:
        """The env's reward of the episode so far (the sum of its step rewards)."""
        return self._reward

    # --- what a caller may read (properties: TRL exposes only functions as tools) --------
    @property
    def env(self) -> HplTextEnv:
        """The hpl env underneath (its snapshots, task data, ...)."""
        return self._env

    @property
    def info(self) -> dict[str, Any]:
        """The env's ``info`` after the last reset or action."""
        return self._info

    @property
    def actions(self) -> tuple[str, ...]:
        """The env actions the tools took in this episode, in order."""
        return tuple(self._actions)

    @property
    def done(self) -> bool:
        """The episode is over (terminated or out of turns): tools now change nothing."""
        return bool(self._info) and self._env.episode_over

    @property
    def won(self) -> bool:
        return bool(self._info.get("won", False))

    # --- for the tools --------------------------------------------------------------------
    def _first_message(self, observation: str, info: dict[str, Any]) -> str:
        return observation

    def _act(self, action: str) -> str:
        """One env action; its observation is the tool's result."""
        if not self._info:
            return "No episode is running: the environment has not been reset."
        if self._env.episode_over:
            return f"The episode is over (reward {self._reward:g}); actions change nothing now."
        observation, reward, _, truncated, self._info = self._env.step(action)
        self._actions.append(action)
        self._reward += reward
        if truncated:
            observation += f"\n[The episode is over: {self._env.max_turns} actions taken.]"
        return observation


class WebShopToolEnv(ToolEnv):
    """WebShop: search the store and click through results to buy what the instruction asks for.

    Two tools rather than one action string: ``search(query)`` and ``click(element)`` are the
    original's two action types, and a model fills a free-text query and a value copied from the
    page more reliably than it writes ``search[...]``/``click[...]`` syntax.
    """

    env_name = "webshop"
    intro = ("You are shopping on a web store. Use the search and click tools to find and buy the product that"
             " best matches the instruction; each tool returns the new page as text, with its parts separated by"
             " [SEP]. Buying (click 'buy now' on a product page) ends the episode and scores the purchase.\n\n")

    def search(self, query: str) -> str:
        """Search the store: type keywords into the search bar (works on every page).

        Args:
            query: The keywords to search for, e.g. "unscented lip balm pack of 2".

        Returns:
            The first page of results (10 of the top 50 products: id, name and price of each).
        """
        return self._act("search[" + " ".join(str(query).splitlines()) + "]")

    def click(self, element: str) -> str:
        """Click an element of the current page, written as the page shows it.

        Args:
            element: A product id (e.g. "b09qkp7xqb"), an option value (e.g. "large"), or a button:
                "buy now", "next >", "< prev", "back to search", "description", "features", "reviews".

        Returns:
            The new page; the same page again if the element is not on it.
        """
        return self._act(f"click[{element}]")


class AlfWorldToolEnv(ToolEnv):
    """ALFWorld: act in a simulated household until the task is done.

    One ``act(command)`` tool rather than one per verb: ALFWorld's commands are short sentences
    (``take mug 1 from desk 1``, ``move mug 1 to shelf 1``, ``heat egg 1 with microwave 1``) whose
    shapes differ per verb, and the env lists and parses them as text; splitting them into typed
    arguments would only add ways to get the syntax wrong. The env's own ``Nothing happens.``
    answers a command it cannot do.
    """

    env_name = "alfworld"
    intro = ("You are in a household. Complete the task in the first observation by calling act with one text"
             " command at a time: go to {recep}, open {recep}, close {recep}, take {obj} from {recep}, move {obj}"
             " to {recep}, use {lamp}, heat {obj} with {microwave}, cool {obj} with {fridge}, clean {obj} with"
             " {sink}, examine {something}, inventory, look. Use the names you see, e.g. 'desk 1'. The episode"
             " ends when the task is done.\n\n")

    def act(self, command: str) -> str:
        """Do one thing in the household.

        Args:
            command: One command, e.g. "go to desk 1", "take mug 1 from desk 1", "move mug 1 to shelf 1",
                "open fridge 1", "heat egg 1 with microwave 1", "look", "inventory".

        Returns:
            What happens ("Nothing happens." if the command cannot be done here).
        """
        return self._act(str(command))


class InterCodeSqlToolEnv(ToolEnv):
    """InterCode-SQL: answer a question about a database by running SQL, then submit.

    ``execute(sql)`` runs one statement and ``submit()`` scores the last result, as the original's
    two kinds of action do; ``execute`` never submits (text the env would read as ``submit`` or
    ``skip`` is answered with an error instead).
    """

    env_name = "intercode-sql"
    intro = ("Answer the question about a MySQL database. Run SQL statements with execute and read each result;"
             " when the last result answers the question, call submit: the last result is your answer.\n\n")

    def execute(self, sql: str) -> str:
        """Run one SQL statement on the task's database.

        Args:
            sql: One MySQL statement, e.g. "SHOW TABLES", "DESC singer" or "SELECT count(*) FROM singer".

        Returns:
            The result rows as a list of tuples, or "Error executing query: <the server's message>".
        """
        sql = str(sql)
        if sql.startswith("submit") or sql.strip().lower() == "skip":
            return f"Error executing query: {sql.strip()!r} is not SQL; call submit to submit the last result."
        return self._act(sql)

    def submit(self) -> str:
        """Submit the last result as the answer; this ends the episode.

        Returns:
            The submitted result.
        """
        return self._act("submit")

    def _first_message(self, observation: str, info: dict[str, Any]) -> str:
        return f"Question: {observation}"


def adapter(env: str) -> type[ToolEnv]:
    """The TRL environment class of an env name (aliases accepted), as its profile names it."""
    p = profile(env)
    if p.tool_env is None:
        raise ValueError(f"{p.name}: no TRL environment class (EnvProfile.tool_env)")
    return load_entry_point(p.tool_env)


def task_prompts(env: str, split: str, *, limit: int | None = None, shuffle_seed: int | None = None,
                 with_environment: bool = False, **env_kwargs: Any) -> Iterator[dict[str, Any]]:
    """The dataset rows GRPOTrainer expects, one per task of ``split`` (in the split's order, or
    shuffled by ``shuffle_seed``; the first ``limit``): ``{"prompt": [user message], "task_id": id}``,
    plus ``"environment": <env name>`` for a dict ``environment_factory`` mixing envs.

    ``datasets.Dataset.from_list(list(task_prompts("webshop", "train")))`` is a ``train_dataset``;
    the trainer repeats each row ``num_generations`` times, so a GRPO group plays one task.
    """
    cls = adapter(env)
    task_ids = list(make_env(cls.env_name, **env_kwargs).task_ids(split))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(task_ids)
    for task_id in task_ids[:limit]:
        row: dict[str, Any] = {"prompt": [{"role": "user", "content": cls.intro}], "task_id": str(task_id)}
        if with_environment:
            row["environment"] = cls.env_name
        yield row
