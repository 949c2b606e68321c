"""WebShop's pages as text, without HTML: what ``WebAgentTextEnv(observation_mode="text")`` shows.

The original renders Jinja templates to HTML and parses them back with BeautifulSoup; the text
observation is the page's visible strings joined with `` [SEP] ``, and the clickables are the
buttons (class ``btn``), product links and option radios, keyed by lower-cased text (radios by
their value). These helpers emit the same strings and clickables directly. One BeautifulSoup
rule matters for exactness: a text node made only of ASCII whitespace collapses to ``'\\n'``
(dropped) when it holds a newline and to ``' '`` (an empty entry) otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pprint import pformat

from hpl_envs.webshop.catalog import Product

SEP = " [SEP] "
PRODUCT_WINDOW = 10
END_BUTTON = "Buy Now"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BACK_TO_SEARCH = "Back to Search"
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")
_ASCII_SPACE = str.maketrans("", "", " \n\t\x0c\r")


@dataclass(frozen=True)
class Clickable:
    kind: str  # "button" | "product" | "option"
    name: str = ""  # option group for radios


def visible(text: str) -> str | None:
    """How one HTML text node appears in the text observation (None: not at all)."""
    if text == "":
        return None
    if text.translate(_ASCII_SPACE) == "":
        return None if "\n" in text else ""
    return text.strip()


def _texts(*nodes: str | None) -> list[str]:
    out = []
    for node in nodes:
        if node is None:
            continue
        v = visible(node)
        if v is not None:
            out.append(v)
    return out


def _html_safe_json(obj) -> str:
    """Flask's ``tojson`` filter: sorted keys, ASCII, and <, >, &, ' escaped as \\u00XX."""
    s = json.dumps(obj, sort_keys=True, ensure_ascii=True)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")


def _instruction(instruction: str) -> list[str]:
    return _texts("Instruction:", instruction)


def search_page(instruction: str) -> tuple[list[str], dict[str, Clickable]]:
    texts = _texts("WebShop", "Instruction: ", instruction, "Search")
    return texts, {"search": Clickable("button")}


def results_page(instruction: str, page: int, total: int, products: list[Product]):
    texts = _instruction(instruction) + _texts(BACK_TO_SEARCH, f"Page {page} (Total results: {total})")
    clickables = {BACK_TO_SEARCH.lower(): Clickable("button")}
    if page > 1:
        texts += _texts(PREV_PAGE)
        clickables[PREV_PAGE.lower()] = Clickable("button")
    texts += _texts(NEXT_PAGE)
    clickables[NEXT_PAGE.lower()] = Clickable("button")
    for p in products:
        texts += _texts(p.asin, p.Title, p.Price)
    for p in products:
        clickables[p.asin.lower()] = Clickable("product")
    return texts, clickables


def item_page(instruction: str, product: Product, show_attrs: bool = False):
    texts = _instruction(instruction) + _texts(BACK_TO_SEARCH, PREV_PAGE)
    for name, values in product.options.items():
        texts += _texts(name, *values)
    texts += _texts(product.Title, f"Price: {product.Price}", f"Rating: {product.Rating}")
    buttons = [BACK_TO_SEARCH, PREV_PAGE, "Description", "Features", "Reviews"]
    if show_attrs:
        buttons.append("Attributes")
    buttons.append(END_BUTTON)
    texts += _texts(*buttons[2:])
    clickables = {b.lower(): Clickable("button") for b in buttons}
    for name, values in product.options.items():
        for value in values:
            clickables[value] = Clickable("option", name)
    return texts, clickables


def sub_page(instruction: str, product: Product, which: str):
    texts = _instruction(instruction) + _texts(BACK_TO_SEARCH, PREV_PAGE)
    if which == "Description":
        texts += _texts(product.Description)
    elif which == "Features":
        texts += _texts(*(f" {b}" for b in product.BulletPoints))
    elif which == "Reviews":
        for r in product.Reviews:
            score = r.get("score", 0)
            texts += _texts(f'"{r.get("title", "")}"', str(score), r.get("body", ""))
    elif which == "Attributes":
        texts += _texts(*(f" {a}" for a in product.Attributes))
        texts += _texts(product.category, product.query, product.product_category)
    clickables = {BACK_TO_SEARCH.lower(): Clickable("button"), PREV_PAGE.lower(): Clickable("button")}
    return texts, clickables


def done_page(asin: str, options: dict, reward: float):
    """The purchase page. The server passes neither goal nor attrs, so they render as None/''."""
    texts = _texts(
        "Thank you for shopping with us!", "Your code: ", "None", " (Paste it in your MTurk interface.)",
        "Purchased", "asin", asin, "options", _html_safe_json(options),
        "attrs", "None", "category", "None", "query", "None", "product category", "None",
        "Target", "asin", "options", "attrs", "price upper", "instuction text", "category",
        "product category", "query", "Goal ", pformat(None), "Reward",
        "Your score (min 0.0, max 1.0)", str(reward), "Reward Details ", pformat(None),
    )
    return texts, {}
