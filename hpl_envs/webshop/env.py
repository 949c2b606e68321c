"""WebShop as an embedded, forkable Gymnasium env."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpl_envs.core import ActionResult, EpisodeState, HplTextEnv, TaskNotFoundError
from hpl_envs.webshop import pages
from hpl_envs.webshop.catalog import Catalog, load_catalog
from hpl_envs.webshop.goals import Goal, ProductPrices, build_goals, product_disjoint_splits, split_range
from hpl_envs.webshop.reward import RewardModel, canonical_tagger, resolve_tagger
from hpl_envs.webshop.search import SEARCH_RETURN_N, SearchEngine

BASE_URL = "http://127.0.0.1:3000"
PAGE_NAMES = ("search_results", "item_page", "item_sub_page", "done")
MAX_ACTION_CHARS = 10_000  # far above any real action; longer ones are invalid (the page stays)


def parse_action(action: str) -> tuple[str, str | None]:
    """WebShop's ``parse_action``: ``re.match(r"(.+)\\[(.+)\\]", action)`` -> (name, arg), else
    (action, None), computed in linear time (the regex backtracks quadratically on ``[[[[...``).

    '.' stops at the first newline, so only the first line counts. The greedy name ends at the
    last '[' that leaves room for a non-empty argument before the line's last ']', and the
    argument runs up to that last ']'.
    """
    newline = action.find("\n")
    line = action if newline < 0 else action[:newline]
    close = line.rfind("]")
    open_ = line.rfind("[", 1, close - 1) if close >= 3 else -1
    if open_ < 1:
        return action, None
    return line[:open_], line[open_ + 1:close]


def page_name(url: str | None) -> str | None:
    """The original decides the current page by substring search in the URL; so do we."""
    if url is None:
        return None
    for name in PAGE_NAMES:
        if name in url:
            return name
    return ""


@dataclass
class WebShopState(EpisodeState):
    """Everything an episode depends on; ``get_state`` returns a deep copy of it."""

    url: str
    page: str = "index"  # which page is displayed: index/search_results/item_page/item_sub_page/done
    keywords: list[str] | None = None
    page_num: int | None = None
    asin: str | None = None
    asins: set[str] = field(default_factory=set)
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None
    results: list[int] = field(default_factory=list)
    results_key: tuple[str, ...] | None = None
    actions: dict[str, int] = field(default_factory=dict)
    reward: float = 0.0
    reward_info: dict | None = None
    random_searches: int = 0
    # The rendered page (texts, clickables) travels with a snapshot so a restore needs no render.
    view: tuple | None = field(default=None, compare=False, repr=False)

    def copy(self) -> WebShopState:
        """An independent copy (containers copied; their items are immutable)."""
        return replace(self, keywords=None if self.keywords is None else list(self.keywords),
                       asins=set(self.asins), options=dict(self.options), results=list(self.results),
                       actions=dict(self.actions),
                       reward_info=None if self.reward_info is None else dict(self.reward_info))


class _Shared:
    """Catalog, goals, search engine and reward model: loaded once per process, shared by envs."""

    _cache: dict[tuple, _Shared] = {}

    def __init__(self, catalog: Catalog, goals: list[Goal], spacy_model: str | None,
                 fix_option_normalisation: bool, prices: ProductPrices | None = None,
                 catalog_size: str = "1k", tagger: str | None = None) -> None:
        self.catalog = catalog
        self.catalog_size, self.tagger = catalog_size, tagger
        self.goals = goals
        self.prices = prices or ProductPrices(catalog)
        self._search: SearchEngine | None = None
        self._reward_args = (spacy_model, fix_option_normalisation)
        self._reward: RewardModel | None = None
        self.category_index: dict[str, list[int]] | None = None

    @property
    def search(self) -> SearchEngine:
        if self._search is None:
            self._search = SearchEngine.for_catalog(self.catalog)
        return self._search

    @property
    def reward(self) -> RewardModel:
        if self._reward is None:
            tagger, table = resolve_tagger(self.catalog, self.catalog_size, self.tagger, self._reward_args[0])
            self._reward = RewardModel(*self._reward_args, tagger=tagger, tagger_table=table)
        return self._reward

    @classmethod
    def get(cls, data_root: Path | None, catalog_size: str, goals: str, spacy_model: str | None,
            fix_option_normalisation: bool, prices: str = "per-product", price_seed: int | None = None,
            tagger: str | None = None) -> _Shared:
        key = (str(data_root), catalog_size, goals, spacy_model, fix_option_normalisation, prices, price_seed, tagger)
        if key not in cls._cache:
            catalog = load_catalog(data_root, catalog_size)
            product_prices = ProductPrices(catalog, prices, price_seed)
            cls._cache[key] = cls(catalog, build_goals(catalog, goals, product_prices), spacy_model,
                                  fix_option_normalisation, product_prices, catalog_size, tagger)
        return cls._cache[key]


class WebShopEnv(HplTextEnv):
    r"""
    Follow a shopping instruction by searching a product catalog, opening a product, choosing its
    options and buying it.

    ## Description
    WebShop (Yao et al., 2022) as a pure-Python reimplementation of ``web_agent_site``'s
    ``WebAgentTextEnv`` in ``observation_mode="text"``: the same pages, the same `` [SEP] ``-joined
    observations, action parsing and reward, with BM25 search in-process (no Java), a memory-mapped
    catalog and exact snapshots (``get_state()`` carries the rendered page, so a restore renders
    nothing). A task is a goal (instruction, target product, options, price cap) by its index.

    ## Action Space
    A string (``FreeText``). ``search[keywords]`` (on any page, as in the original; results are the
    top 50 by BM25, 10 per page) or ``click[value]``, where value is a clickable of the current page:
    a lower-cased button (``back to search``, ``next >``, ``< prev``, ``description``, ``features``,
    ``reviews``, ``attributes``, ``buy now``), a product ASIN, or an option value. Parsing is the
    original's ``(.+)\[(.+)\]`` on the first line. ``info["admissible_actions"]`` lists them
    (``search[<keywords>]`` where the search bar is shown). Anything else, or an action over
    ``MAX_ACTION_CHARS`` (10,000) characters, is invalid: the page stays and
    ``info["action_valid"]`` is False.

    ## Observation Space
    A string: the page's texts joined by `` [SEP] ``: the search page, a results page (instruction,
    ``Back to Search``, ``Page n (Total results: N)``, ASIN / name / price per product), a product
    page (options, title, price, rating, sub-page buttons, ``Buy Now``), a sub-page, or the page
    after a purchase (``Thank you for shopping with us!`` with the purchase and reward).

    ## Starting State
    The search page of the task's goal: ``WebShop [SEP] Instruction: [SEP] <instruction> [SEP]
    Search``. ``reset(options={"task_id": "17"})`` picks goal 17; ``reset(seed=...)`` without a task
    id draws a goal uniformly from all goals with the env's ``np_random``. ``task_ids(split)``:
    ``test`` goals[0:500], ``dev`` [500:1500], ``train`` the rest, ``all`` (``split_mode="webshop"``),
    or the product-disjoint split (``split_mode="product"``).

    ## Rewards
    0 on every step until ``click[buy now]``; then WebShop's ``get_reward`` of the purchase
    (``reward.py``): the share of matched attributes, options and price cap, times a type factor
    (1, 0.5, 0.1 or 0 by query/category match and title-noun overlap), in [0, 1].

    ## Episode End
    - Termination: ``click[buy now]`` on a product page (a purchase).
    - Truncation: ``max_turns`` actions (default 10) without a purchase; reward 0.

    After either, ``step`` raises ``RuntimeError("webshop: episode is over; call reset()")``.

    ## Information
    Common keys (every hpl env, after ``reset`` and every ``step``):

    - ``task_id`` (str): the goal index as given to ``reset``.
    - ``task_type`` (str): the goal's product category (e.g. ``beauty``, ``garden``).
    - ``instruction`` (str): the goal's instruction text.
    - ``admissible_actions`` (list[str]): ``search[<keywords>]`` where a search bar is shown, then
      every ``click[...]`` of the page.
    - ``won`` (bool): reward == 1.0 (only on the purchase step).
    - ``action_valid`` (bool): the action was parsed and changed the page (True after reset).
    - ``turn`` (int): actions taken.

    WebShop's own keys:

    - ``page`` (str): ``index``, ``search_results``, ``item_page``, ``item_sub_page`` or ``done``.
    - ``url`` (str): the original server's URL of the page (``http://127.0.0.1:3000/...``; nothing
      listens there).
    - ``reward_parts`` (dict, after a purchase): ``get_reward``'s verbose info: ``r_type``,
      ``r_att``, ``w_att``, ``query_match``, ``category_match``, ``title_score``, and where the goal
      has them ``r_option``/``w_option`` and ``r_price``/``w_price``.
    - ``purchased`` (dict, after a purchase): ``{"asin": str, "options": {name: value}}``.

    ## Arguments
    ```python
    import gymnasium as gym
    import hpl_envs  # registers the ids
    gym.make("hpl/WebShop-v0", catalog="1k", goals="synthetic", max_turns=10)
    # or: hpl_envs.make_env("webshop", ...); hpl-eval / hpl-gen: --env-arg catalog='"full"'
    ```

    - ``catalog="1k"``: ``"1k"`` (WebShop's 1,000-product catalog) or ``"full"`` (all products).
    - ``goals="synthetic"``: ``"synthetic"`` (the original's default: one goal per product option
      combination, templated instructions) or ``"human"`` (the crowd-written instructions); shuffled
      with the original's seed either way.
    - ``max_turns=10``: actions before truncation (the registry's default, the HPL paper's).
    - ``spacy_model=None``: the spaCy pipeline for the type reward's noun matching (live tagger).
    - ``fix_option_normalisation=False``: opt-in fix of the original's colour-normalisation quirk.
    - ``show_attrs=False``: add an ``Attributes`` button (a sub-page with the product's attributes).
    - ``data_root=None``: the data folder (default ``$HPL_DATA_DIR``).
    - ``split_mode="webshop"``: ``"webshop"`` (the original's split by goal position) or
      ``"product"`` (no product in two splits).
    - ``prices="per-product"``: range prices and goal price caps seeded per ASIN, the same in every
      process; ``"original"`` with ``price_seed``: the original's global-random draws replayed from
      ``random.seed(price_seed)`` (``goals.py``).
    - ``price_seed=None``: the seed for ``prices="original"``.
    - ``tagger=None``: POS tokens of product names for the type reward: a shipped table named by
      its pipeline (``"md-3.7.1"``, ``"sm-3.0.0"``, ``"sm-3.8.0"``, ...; ``reward.TABLE_TAGGERS``),
      ``"live"`` (the installed pipeline), or None: ``"md-3.7.1"`` (the pipeline that best reproduces
      WebShop's own test assertions) when its table covers the catalog and no ``spacy_model`` is
      given, else ``"live"``. ``"original"`` is deprecated (a warning): it is ``"sm-3.0.0"``.
    - ``render_mode=None``: ``"ansi"`` makes ``render()`` return the observation.

    ## Version History
    * v0: initial release, faithful to WebShop @ 64fa2a5 (text mode, synthetic or human goals).
    """

    env_name = "webshop"
    splits = ("train", "dev", "test", "all")
    state_type = WebShopState
    _state: WebShopState | None

    def __init__(self, catalog: str = "1k", goals: str = "synthetic", max_turns: int = 10,
                 spacy_model: str | None = None, fix_option_normalisation: bool = False,
                 show_attrs: bool = False, data_root: str | Path | None = None,
                 split_mode: str = "webshop", prices: str = "per-product", price_seed: int | None = None,
                 tagger: str | None = None, render_mode: str | None = None) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        tagger = canonical_tagger(tagger)  # checked; the deprecated "original" mapped with a warning
        self.shared = _Shared.get(Path(data_root) if data_root else None, catalog, goals,
                                  spacy_model, fix_option_normalisation, prices, price_seed, tagger)
        self.show_attrs = show_attrs
        if split_mode not in ("webshop", "product"):
            raise ValueError(f"webshop: split_mode must be 'webshop' or 'product', got {split_mode!r}")
        self.split_mode = split_mode
        self._view: tuple[list[str], dict[str, pages.Clickable]] | None = None

    def warm_caches(self) -> None:
        _ = self.shared.search, self.shared.reward

    # --- tasks ---------------------------------------------------------------------
    @property
    def goals(self) -> list[Goal]:
        return self.shared.goals

    def task_ids(self, split: str) -> list[str]:
        if self.split_mode == "product" and split != "all":
            self._check_split(split)
            return [str(i) for i in product_disjoint_splits(self.goals)[split]]
        return [str(i) for i in split_range(split, len(self.goals))]

    def goal(self, task_id: str | int) -> Goal:
        try:
            idx = int(task_id)
            if idx < 0:
                raise ValueError
            return self.goals[idx]
        except (ValueError, IndexError):
            raise TaskNotFoundError(f"webshop: no task {task_id!r} (ids are 0..{len(self.goals) - 1})") from None

    def task_type(self, task_id: str) -> str:
        return self.goal(task_id).category

    def instruction(self, task_id: str) -> str:
        return self.goal(task_id).instruction_text

    def _default_task_ids(self) -> range:
        return range(len(self.goals))

    # --- the episode (HplTextEnv's hooks) --------------------------------------------
    def _reset_task(self, task_id: str) -> WebShopState:
        self.goal(task_id)  # validates
        self._view = None
        return WebShopState(task_id=task_id, url=f"{BASE_URL}/{task_id}")

    def _apply_action(self, action: str) -> ActionResult:
        s = self._state
        _, clickables = self._page()
        name, arg = parse_action(action) if len(action) <= MAX_ACTION_CHARS else (action, None)
        if arg is not None:
            arg = arg.lower()
        valid = False
        if name == "search" and arg:
            self._search(arg.split(" "))
            valid = True
        elif name == "click" and arg in clickables and arg != "search":
            valid = self._click(arg, clickables[arg])
        if valid:
            self._view = None
        bought = s.page == "done"
        return ActionResult(reward=s.reward if bought else 0.0, terminated=bought, action_valid=valid,
                            won=bool(bought and s.reward == 1.0))

    def _extra_info(self) -> dict[str, Any]:
        s = self._state
        info: dict[str, Any] = {"page": s.page, "url": s.url}
        if s.done:
            info["reward_parts"] = dict(s.reward_info or {})
            info["purchased"] = {"asin": s.asin, "options": dict(s.options)}
        return info

    # --- snapshots -----------------------------------------------------------------
    def get_state(self) -> WebShopState:
        state = super().get_state()
        state.view = self._page()
        return state

    def _restore(self, state: WebShopState) -> None:
        self.goal(state.task_id)
        super()._restore(state)
        self._view = state.view

    # --- observation ---------------------------------------------------------------
    @property
    def observation(self) -> str:
        return pages.SEP.join(self._page()[0])

    def admissible_actions(self) -> list[str]:
        """``search[<keywords>]`` where a search bar is shown, then every valid click."""
        _, clickables = self._page()
        acts = ["search[<keywords>]"] if self._require_state().page == "index" else []
        return acts + [f"click[{c}]" for c in clickables if c != "search"]

    def _page(self):
        if self._view is None:
            self._view = self._render()
        return self._view

    def _render(self):
        s = self._require_state()
        instruction = self.goal(s.task_id).instruction_text
        cat = self.shared.catalog
        if s.page == "index":
            return pages.search_page(instruction)
        if s.page == "search_results":
            window = s.results[(s.page_num - 1) * pages.PRODUCT_WINDOW:s.page_num * pages.PRODUCT_WINDOW]
            return pages.results_page(instruction, s.page_num, len(s.results),
                                      [cat.product(i) for i in window])
        if s.page == "item_page":
            return pages.item_page(instruction, cat.by_asin(s.asin), self.show_attrs)
        if s.page == "item_sub_page":
            return pages.sub_page(instruction, cat.by_asin(s.asin), s.sub_page)
        if s.page == "done":
            return pages.done_page(s.asin, s.options, s.reward)
        raise AssertionError(s.page)

    # --- the server's transitions (SimServer.receive) -------------------------------
    def _count(self, key: str) -> None:
        s = self._state
        s.actions[key] = s.actions.get(key, 0) + 1

    def _search(self, keywords: list[str], page: int = 1) -> None:
        s = self._state
        s.page, s.page_num, s.keywords = "search_results", page, keywords
        s.asin, s.options = None, {}
        self._count("search")
        key = tuple(keywords)
        if key != s.results_key or keywords[0] == "<r>":
            s.results = self._top_n(keywords)
            s.results_key = key
        s.url = f"{BASE_URL}/search_results/{s.task_id}/{'+'.join(keywords)}/{page}"

    def _top_n(self, keywords: list[str]) -> list[int]:
        """WebShop's ``get_top_n_product_from_keywords`` including its special prefixes."""
        cat = self.shared.catalog
        head = keywords[0]
        if head == "<r>":  # random products; the original is unseeded, hpl seeds per task/search
            self._state.random_searches += 1
            rng = random.Random(f"webshop-r:{self._state.task_id}:{self._state.random_searches}")
            return rng.sample(range(len(cat)), k=min(SEARCH_RETURN_N, len(cat)))
        if head in ("<c>", "<q>", "<a>"):
            # The original raises on a missing argument and, for <a>, always (no attribute map).
            if len(keywords) < 2:
                return []
            arg = keywords[1].strip() if head == "<c>" else " ".join(keywords[1:]).strip()
            col = {"<c>": "category", "<q>": "query", "<a>": "Attributes"}[head]
            return cat.rows_where(col, arg)
        return self.shared.search.search(" ".join(keywords), SEARCH_RETURN_N)

    def _click(self, arg: str, clickable: pages.Clickable) -> bool:
        s = self._state
        where = page_name(s.url)
        if arg == pages.END_BUTTON.lower():
            return self._buy()
        if arg == pages.BACK_TO_SEARCH.lower():
            s.page, s.keywords, s.page_num, s.asin, s.sub_page = "index", None, None, None, None
            s.asins, s.options, s.actions = set(), {}, {}
            s.url = f"{BASE_URL}/{s.task_id}"
            return True
        if arg == pages.NEXT_PAGE.lower() and where == "search_results":
            self._search(s.keywords, s.page_num + 1)
            return True
        if arg == pages.PREV_PAGE.lower() and where == "search_results":
            self._search(s.keywords, s.page_num - 1)
            return True
        if arg == pages.PREV_PAGE.lower() and where == "item_sub_page":
            return self._item_page(arg, clickable)
        if arg == pages.PREV_PAGE.lower() and where == "item_page":
            self._search(s.keywords, s.page_num)
            return True
        for sub in pages.SUB_PAGES:
            if arg == sub.lower():
                if s.asin is None:
                    return False  # the original raises KeyError here
                self._count(sub)
                s.page, s.sub_page = "item_sub_page", sub
                kw = "+".join(s.keywords or [])
                s.url = f"{BASE_URL}/item_sub_page/{s.task_id}/{s.asin}/{kw}/{s.page_num}/{sub}/{s.options}"
                return True
        return self._item_page(arg, clickable)

    def _item_page(self, arg: str, clickable: pages.Clickable) -> bool:
        s = self._state
        asin, options = s.asin, dict(s.options)
        if clickable.kind == "product":
            asin = arg.upper()
        elif clickable.kind == "option":
            options[clickable.name.lower()] = arg
        if asin is None or asin not in self.shared.catalog:
            return False  # the original raises KeyError (no product to show)
        if clickable.kind == "product":
            self._count("asin")
            s.asins.add(asin)
        elif clickable.kind == "option":
            self._count("options")
        s.asin, s.options, s.page, s.sub_page = asin, options, "item_page", None
        kw = "+".join(s.keywords or [])
        s.url = f"{BASE_URL}/item_page/{s.task_id}/{asin}/{kw}/{s.page_num}/{json.dumps(options)}"
        return True

    def _buy(self) -> bool:
        s = self._state
        if s.asin is None:
            return False
        cat = self.shared.catalog
        idx = cat.index(s.asin)
        reward, parts = self.shared.reward.reward(cat.product(idx), self.goal(s.task_id),
                                                  self.shared.prices.price(idx), s.options)
        self._count("purchase")
        s.reward, s.reward_info, s.page = reward, parts, "done"
        s.url = f"{BASE_URL}/done/{s.task_id}/{s.asin}/{s.options}"
        return True

    # --- protocol fingerprint ----------------------------------------------------------
    def protocol_parts(self, task_ids: list[str]) -> dict[str, Any]:
        """What a WebShop result depends on beyond the code: catalog files, the goals (instruction,
        product, price bound, options) behind the task ids, the split rule and the reward options."""
        import hashlib

        import spacy

        goals = [self.goal(t) for t in task_ids]
        goal_text = json.dumps([[g.asin, g.instruction_text, g.price_upper, g.goal_options, g.attributes]
                                for g in goals], sort_keys=True, default=str)
        return {
            "data_files": {"catalog_sources_sha256": self.shared.catalog.key},
            "catalog_products": len(self.shared.catalog),
            "goals_total": len(self.goals),
            "goals_sha256": hashlib.sha256(goal_text.encode()).hexdigest()[:16],
            "split_definition": "webshop: test goals[0:500], dev [500:1500], train rest" if self.split_mode == "webshop"
            else "product: no product in two splits (ASIN-hash order)",
            "reward_options": {"fix_option_normalisation": self.shared.reward.fix_option_normalisation},
            "spacy_pipeline": self.shared.reward.spacy_model,
            "spacy_version": spacy.__version__,
            "show_attrs": self.show_attrs,
        }
