"""The WebShop product catalog, stored once as an Arrow file and memory-mapped by workers.

WebShop's ``load_products`` parses a multi-GB JSON per process (~25 s and a full copy per
worker for the 1.18 M catalog). hpl converts the catalog once into an uncompressed Arrow IPC
file in the cache; every process memory-maps it, so workers share the pages and a product is
materialised only when a page or the reward needs it.

Inputs (first found wins): ``items_shuffle_1000.documents.jsonl`` (the search-engine document
file; its ``product`` field is WebShop's product after ``load_products``), or a raw
``items_shuffle*.json`` list, plus ``items_ins_v2*.json`` for synthetic goals and optionally
``items_human_ins.json`` for human goals.

Full scale without the 1.18 M-product download: a data root whose ``webshop/`` holds
``items_shuffle.synthetic.json`` (``{"products": N}``, see :func:`write_synthetic_full`) serves
``catalog="full"`` with the 1k catalog grown to N products (copies get fresh ASINs, no goals and
seeded perturbed texts, so every product's text is distinct and indexing costs what a real catalog
costs), so tests and benchmarks exercise the full-scale paths (cache, index, memory) here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hpl_envs.data import DataCorruptError, DataMissingError, cache_dir, data_root, file_digest, file_lock

CATALOG_VERSION = 1  # bump when the Arrow layout changes

SCHEMA = pa.schema(
    [
        ("asin", pa.string()),
        ("name", pa.string()),
        ("Title", pa.string()),
        ("Price", pa.string()),
        ("pricing", pa.list_(pa.float64())),
        ("category", pa.string()),
        ("query", pa.string()),
        ("product_category", pa.string()),
        ("Description", pa.string()),
        ("BulletPoints", pa.list_(pa.string())),
        ("Attributes", pa.list_(pa.string())),
        ("Rating", pa.string()),
        ("options_json", pa.string()),  # ordered {name: [values]}
        ("reviews_json", pa.string()),
        ("contents", pa.string()),  # what the search engine indexes
        ("instruction_text", pa.string()),  # synthetic goal text (items_ins_v2), may be null
        ("instruction_attributes", pa.list_(pa.string())),
        ("human_instructions_json", pa.string()),  # items_human_ins entries, may be null
    ]
)


def _parse_pricing(raw: Any) -> tuple[list[float], str]:
    """WebShop's price parsing: '$19.99 - $27.99' -> [19.99, 27.99], '$19.99 to $27.99'."""
    if isinstance(raw, list):
        pricing = [float(x) for x in raw]
    elif not raw:
        pricing = []
    else:
        pricing = [float(Decimal(re.sub(r"[^\d.]", "", p))) for p in str(raw).split("$")[1:]]
    if not pricing:
        return [100.0], "$100.0"
    if len(pricing) == 1:
        return pricing, f"${pricing[0]}"
    return pricing[:2], f"${pricing[0]} to ${pricing[1]}"


def _options_from_raw(customization: Any) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    if customization:
        for name, contents in customization.items():
            if contents is None:
                continue
            options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
    return options


def _search_contents(p: dict) -> str:
    """The text WebShop indexes for a raw product (used only when no documents file exists)."""
    parts = [p.get("Title", ""), p.get("Description", ""), " ".join(p.get("BulletPoints", []))]
    for values in p.get("options", {}).values():
        parts.append(", and ".join(values))
    return " ".join(parts).lower()


def _normalise(product: dict, contents: str | None) -> dict:
    """Fill the fields WebShop's ``load_products`` adds, from either input format."""
    p = dict(product)
    if "Title" not in p:  # raw items_shuffle record
        p["Title"] = p["name"]
        p["Description"] = p.get("full_description", "")
        p["Reviews"] = []
        p["Rating"] = "N.A."
        sd = p.get("small_description", [])
        p["BulletPoints"] = sd if isinstance(sd, list) else [sd]
        p["pricing"], p["Price"] = _parse_pricing(p.get("pricing"))
        p["options"] = _options_from_raw(p.get("customization_options"))
        p["query"] = p.get("query", "").lower().strip()
    p["contents"] = contents if contents is not None else _search_contents(p)
    return p


def _read_json(path: Path, expect: type, what: str) -> Any:
    """A whole JSON file of the expected top-level type; any problem is one error naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataCorruptError(f"{path}: not UTF-8 text (a binary file?): {e.reason} at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise DataCorruptError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except OSError as e:
        raise DataCorruptError(f"{path}: cannot read {what} ({e.strerror or e})") from e
    if not isinstance(value, expect):
        raise DataCorruptError(f"{path}: expected {what} as a JSON {'object' if expect is dict else 'array'}, "
                               f"got a JSON {type(value).__name__}")
    return value


def _read_products(path: Path) -> list[tuple[dict, str | None]]:
    out: list[tuple[dict, str | None]] = []
    if not path.name.endswith(".jsonl"):
        return [(p, None) for p in _read_json(path, list, "a list of products")]
    try:
        if path.name.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataCorruptError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                    out.append((doc["product"], doc.get("contents")))
    except (KeyError, TypeError, AttributeError) as e:
        raise DataCorruptError(f"{path}: unexpected record layout ({e!r})") from e
    except UnicodeDecodeError as e:
        raise DataCorruptError(f"{path}: not UTF-8 text (a binary file?): {e.reason} at byte {e.start}") from e
    except OSError as e:
        raise DataCorruptError(f"{path}: cannot read the products ({e.strerror or e})") from e
    return out


SYNTHETIC_SPEC = "items_shuffle.synthetic.json"
FULL_CATALOG_PRODUCTS = 1_180_000  # WebShop's full catalog: 1,181,436 products


def write_synthetic_full(root: Path, products: int = FULL_CATALOG_PRODUCTS, source: Path | None = None) -> Path:
    """Make ``root`` a data root whose ``catalog="full"`` is the 1k catalog of ``source`` (default:
    the data root) replicated to ``products`` products: links to its 1k files plus the spec file."""
    base = Path(root) / "webshop"
    base.mkdir(parents=True, exist_ok=True)
    src = (source or data_root()) / "webshop"
    for name in ("items_shuffle_1000.documents.jsonl", "items_shuffle_1000.json", "items_ins_v2_1000.json",
                 "items_human_ins.json"):
        if (src / name).exists() and not (base / name).exists():
            (base / name).symlink_to((src / name).resolve())
    (base / SYNTHETIC_SPEC).write_text(json.dumps({"products": int(products)}))
    return Path(root)


def find_sources(root: Path | None = None, size: str = "1k") -> dict[str, Path | None]:
    """Locate the catalog files under ``root/webshop`` for the ``1k`` or ``full`` catalog."""
    base = (root or data_root()) / "webshop"
    real_full = ("items_shuffle.documents.jsonl", "items_shuffle.json")
    if size == "full" and (base / SYNTHETIC_SPEC).exists() and not any((base / n).exists() for n in real_full):
        return {**find_sources(root, "1k"), "synthetic": base / SYNTHETIC_SPEC}
    if size == "1k":
        products = [base / "items_shuffle_1000.documents.jsonl", base / "items_shuffle_1000.json"]
        attrs = [base / "items_ins_v2_1000.json"]
    elif size == "full":
        products = [base / "items_shuffle.documents.jsonl", base / "items_shuffle.json"]
        attrs = [base / "items_ins_v2.json"]
    else:
        raise ValueError(f"webshop catalog size must be '1k' or 'full', got {size!r}")
    found = next((p for p in products if p.exists()), None)
    if found is None:
        raise DataMissingError(
            f"webshop: no catalog in {base} (looked for {', '.join(p.name for p in products)}).\n"
            "  Set HPL_DATA_DIR, or run `hpl-data download webshop`"
            + (" --full" if size == "full" else "")
            + " on a machine with internet access."
        )
    attr = next((p for p in attrs if p.exists()), None)
    if attr is None:
        raise DataMissingError(
            f"webshop: missing {attrs[0]} (goal instructions). Run `hpl-data download webshop`."
        )
    human = base / "items_human_ins.json"
    sources = {"products": found, "attributes": attr, "human": human if human.exists() else None}
    for path in sources.values():
        if path is not None and not path.is_file():
            raise DataCorruptError(f"{path}: is a directory, not a JSON file; remove it and run "
                                   "`hpl-data download webshop`")
    return sources


def build_table(sources: dict[str, Path | None]) -> pa.Table:
    """Parse the source files into one Arrow table (catalog order, duplicates dropped)."""
    attributes = _read_json(sources["attributes"], dict, "goals (an object mapping ASIN -> instruction)")
    human = None
    if sources.get("human"):
        human = _read_json(sources["human"], dict, "human goals (an object mapping ASIN -> instructions)")
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    seen: set[str] = set()
    for i, (raw, contents) in enumerate(_read_products(Path(sources["products"]))):
        asin = raw.get("asin", "nan") if isinstance(raw, dict) else None
        if not isinstance(asin, str):
            raise DataCorruptError(f"{sources['products']}: product #{i}: "
                                   + (f"asin {asin!r} is not a string" if isinstance(raw, dict) else "not a JSON object"))
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue  # WebShop skips these too
        seen.add(asin)
        attr = attributes.get(asin, {})
        if not isinstance(attr, dict):
            raise DataCorruptError(f"{sources['attributes']}: the entry of {asin} is not a JSON object")
        try:
            p = _normalise(raw, contents)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataCorruptError(f"{sources['products']}: product {asin}: unexpected layout ({e!r})") from e
        human_ins = (human or {}).get(asin, p.get("instructions"))
        cols["asin"].append(asin)
        cols["name"].append(p["name"])
        cols["Title"].append(p["Title"])
        cols["Price"].append(p["Price"])
        cols["pricing"].append([float(x) for x in p["pricing"]])
        cols["category"].append(p["category"])
        cols["query"].append(p["query"])
        cols["product_category"].append(p["product_category"])
        cols["Description"].append(p["Description"])
        cols["BulletPoints"].append([str(b) for b in p["BulletPoints"]])
        cols["Attributes"].append(list(attr.get("attributes", ["DUMMY_ATTR"])))
        cols["Rating"].append(str(p.get("Rating", "N.A.")))
        cols["options_json"].append(json.dumps(p["options"]))
        cols["reviews_json"].append(json.dumps(p.get("Reviews", [])))
        cols["contents"].append(p["contents"])
        cols["instruction_text"].append(attr.get("instruction"))
        cols["instruction_attributes"].append(attr.get("instruction_attributes"))
        cols["human_instructions_json"].append(json.dumps(human_ins) if human_ins else None)
    if not cols["asin"]:
        raise DataCorruptError(f"{sources['products']}: no products")
    return pa.table(cols, schema=SCHEMA)


def _synthetic_size(spec: Path, base_rows: int) -> int:
    raw = _read_json(spec, dict, 'a synthetic catalog spec ({"products": N})')
    n = raw.get("products")
    if not isinstance(n, int) or isinstance(n, bool) or not base_rows <= n <= 99_999 * base_rows or base_rows > 99_999:
        raise DataCorruptError(f"{spec}: 'products' must be an integer from {base_rows} (the 1k catalog) "
                               f"to {99_999 * base_rows}, got {n!r}")
    return n


SYNTHETIC_VERSION = 2  # bump when synthetic_batches changes (v1: copies of the 1k texts); keys the cache
SYNTHETIC_REPLACE_RATE = 0.15  # share of a copy's words swapped for words drawn from the 1k catalog
SYNTHETIC_CODE_RATE = 0.5  # share of copies whose name gains a model code ('kx482'), as real names do
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class _TextPerturber:
    """Seeded per-copy perturbation of the 1k catalog's texts, so every copy's name, description,
    features and search contents are distinct and cost what a real product's cost to analyse.

    Words are whitespace-separated; each is swapped, with probability ``SYNTHETIC_REPLACE_RATE``,
    for a word drawn from the 1k catalog's ASCII words (frequent words stay frequent, and the share
    of ASCII texts, which analyse faster, stays the real one);
    some names gain a two-letter-three-digit model code, which grows the vocabulary as model
    numbers do. ``contents`` is rebuilt from the perturbed fields as WebShop indexes a raw
    product (title, description, features, options; lower-cased)."""

    def __init__(self, base: pa.Table, seed: int) -> None:
        self.seed = seed
        self.n = base.num_rows
        names, titles = base.column("name").to_pylist(), base.column("Title").to_pylist()
        self.title_is_name = [a == b for a, b in zip(names, titles)]
        bullets = [b or [] for b in base.column("BulletPoints").to_pylist()]
        self.bullet_counts = np.array([len(b) for b in bullets])
        self.options = [json.loads(o) for o in base.column("options_json").to_pylist()]
        # one flat word array per field: names, titles, descriptions, bullets (row-major)
        self.fields = {
            "name": names,
            "Title": titles,
            "Description": [d or "" for d in base.column("Description").to_pylist()],
            "BulletPoints": [b for row in bullets for b in row],
        }
        vocab: dict[str, int] = {}
        self.flat, self.ptr = {}, {}
        for field, texts in self.fields.items():
            ids, ptr = [], [0]
            for text in texts:
                ids.extend(vocab.setdefault(w, len(vocab)) for w in text.split())
                ptr.append(len(ids))
            self.flat[field], self.ptr[field] = np.array(ids, dtype=np.int64), ptr
        self.words = np.array(list(vocab), dtype=object)
        # ASCII word ids, as often as they occur: an ASCII text stays ASCII, so the share of texts
        # that need the slower Unicode word breaking is the 1k catalog's
        ascii_word = np.array([w.isascii() for w in vocab], dtype=bool)
        pool = np.concatenate(list(self.flat.values()))
        self.pool = pool[ascii_word[pool]]

    def _perturb(self, field: str, rng: np.random.Generator) -> list[str]:
        ids = self.flat[field].copy()
        swap = rng.random(len(ids)) < SYNTHETIC_REPLACE_RATE
        ids[swap] = self.pool[rng.integers(len(self.pool), size=int(swap.sum()))]
        words, ptr = self.words[ids].tolist(), self.ptr[field]
        return [" ".join(words[ptr[i]:ptr[i + 1]]) for i in range(len(ptr) - 1)]

    def copy(self, r: int) -> dict[str, list]:
        """Copy ``r``'s perturbed text columns (same rows as the 1k table)."""
        rng = np.random.default_rng([self.seed, r])
        names, titles = self._perturb("name", rng), self._perturb("Title", rng)
        has_code = rng.random(self.n) < SYNTHETIC_CODE_RATE
        code_letters = rng.integers(26, size=(self.n, 2))
        code_digits = rng.integers(1000, size=self.n)
        for i in np.flatnonzero(has_code):
            names[i] += f" {_LETTERS[code_letters[i, 0]]}{_LETTERS[code_letters[i, 1]]}{code_digits[i]:03d}"
        titles = [names[i] if self.title_is_name[i] else titles[i] for i in range(self.n)]
        descriptions = self._perturb("Description", rng)
        flat_bullets = self._perturb("BulletPoints", rng)
        ends = np.cumsum(self.bullet_counts).tolist()
        bullets = [flat_bullets[e - c:e] for e, c in zip(ends, self.bullet_counts.tolist())]
        contents = [_search_contents({"Title": t, "Description": d, "BulletPoints": b, "options": o})
                    for t, d, b, o in zip(titles, descriptions, bullets, self.options)]
        return {"name": names, "Title": titles, "Description": descriptions, "BulletPoints": bullets,
                "contents": contents}


def synthetic_batches(base: pa.Table, products: int, rows_per_batch: int = 1 << 16, seed: int = 0):
    """The 1k table grown to ``products`` rows: copy 0 is the 1k catalog itself; copy r > 0 gets
    ASINs ``Z<r:04><row:05>`` (unique, sorting after every real ASIN), no goals, and its own
    seeded perturbation of the texts (:class:`_TextPerturber`), so no two products share a text."""
    yield base
    n, copies, done = base.num_rows, [], base.num_rows
    perturber = _TextPerturber(base, seed)
    no_goal = {name: pa.nulls(n, SCHEMA.field(name).type)
               for name in ("instruction_text", "instruction_attributes", "human_instructions_json")}
    for r in range(1, -(-products // n)):
        copy = base.set_column(0, "asin", pa.array([f"Z{r:04d}{i:05d}" for i in range(n)], pa.string()))
        for name, values in perturber.copy(r).items():
            copy = copy.set_column(SCHEMA.get_field_index(name), name, pa.array(values, SCHEMA.field(name).type))
        for name, col in no_goal.items():
            copy = copy.set_column(SCHEMA.get_field_index(name), name, col)
        copies.append(copy.slice(0, products - done))
        done += copies[-1].num_rows
        if sum(c.num_rows for c in copies) >= rows_per_batch or done >= products:
            yield pa.concat_tables(copies).combine_chunks()
            copies = []


def write_arrow(table: pa.Table | Any, path: Path) -> None:
    """Write a table, or an iterable of tables, atomically: a temporary file renamed into place."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            for part in [table] if isinstance(table, pa.Table) else table:
                writer.write_table(part, max_chunksize=1 << 16)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_arrow(path: Path, mmap: bool = True) -> pa.Table:
    """Memory-map an Arrow IPC file: zero-copy, pages shared between processes (``mmap=False``
    reads it into this process's memory instead, for comparison)."""
    source = pa.memory_map(str(path), "r") if mmap else pa.OSFile(str(path), "rb")
    return pa.ipc.open_file(source).read_all()


def build_lock(path: Path):
    """The lock held while building ``path``: concurrent workers wait for one builder, and the
    kernel drops it when a builder dies, so a killed build blocks nobody."""
    return file_lock(path.with_name(path.name + ".lock"))


@dataclass
class Product:
    """One product, with WebShop's field names (``Title``, ``BulletPoints``, ...)."""

    asin: str
    name: str
    Title: str
    Price: str
    pricing: list[float]
    category: str
    query: str
    product_category: str
    Description: str
    BulletPoints: list[str]
    Attributes: list[str]
    Rating: str
    options: dict[str, list[str]]
    Reviews: list[dict]


class Catalog:
    """Products by row index or ASIN, plus the per-product seeded price.

    Prices: WebShop draws a range-priced product's price with ``random.uniform`` before any
    seed, so two processes disagree. hpl draws it from a generator seeded by the ASIN, so the
    same product has the same price in every process and run.
    """

    def __init__(self, table: pa.Table, key: str = "", index_path: Path | None = None) -> None:
        self.table = table
        self.key = key
        self._cols = {name: table.column(name) for name in table.column_names}
        self._n = table.num_rows
        self._sorted_asins, self._order, self._rank = _asin_index(table, index_path)
        self.product = lru_cache(maxsize=4096)(self._product)

    def __len__(self) -> int:
        return self._n

    def asin(self, i: int) -> str:
        return self._cols["asin"][i].as_py()

    def index(self, asin: str) -> int:
        """Row of ``asin`` (binary search over a sorted, memory-mapped ASIN array)."""
        key = asin.encode("utf-8", "replace") if isinstance(asin, str) else b""
        if not key or len(key) > 10:
            raise KeyError(asin)
        j = int(np.searchsorted(self._sorted_asins, key))
        if j >= self._n or self._sorted_asins[j] != key:
            raise KeyError(asin)
        return int(self._order[j])

    def __contains__(self, asin: object) -> bool:
        try:
            self.index(asin)  # type: ignore[arg-type]
            return True
        except KeyError:
            return False

    def _product(self, i: int) -> Product:
        c = self._cols
        return Product(
            asin=self.asin(i),
            name=c["name"][i].as_py(),
            Title=c["Title"][i].as_py(),
            Price=c["Price"][i].as_py(),
            pricing=c["pricing"][i].as_py(),
            category=c["category"][i].as_py(),
            query=c["query"][i].as_py(),
            product_category=c["product_category"][i].as_py(),
            Description=c["Description"][i].as_py() or "",
            BulletPoints=c["BulletPoints"][i].as_py() or [],
            Attributes=c["Attributes"][i].as_py() or [],
            Rating=c["Rating"][i].as_py(),
            options=json.loads(c["options_json"][i].as_py()),
            Reviews=json.loads(c["reviews_json"][i].as_py()),
        )

    def asin_rank(self) -> np.ndarray:
        """Each row's position in ascending ASIN order (the docid order search ties follow)."""
        return self._rank

    def by_asin(self, asin: str) -> Product:
        return self.product(self.index(asin))

    def price(self, i: int) -> float:
        return product_price(self.asin(i), self._cols["pricing"][i].as_py())

    def rows_where(self, column: str, value: str) -> list[int]:
        """Rows whose ``column`` equals ``value`` (for list columns: contains it), in catalog order."""
        import pyarrow.compute as pc

        col = self._cols[column]
        if pa.types.is_list(col.type):
            flat = pc.list_flatten(col)
            parents = pc.list_parent_indices(col)
            hits = pc.filter(parents, pc.equal(flat, value))
            return sorted(set(hits.to_pylist()))
        return pc.indices_nonzero(pc.fill_null(pc.equal(col, value), False)).to_pylist()


_ASIN_INDEX = (".asins.npy", ".order.npy", ".rank.npy")


def _asin_index(table: pa.Table, path: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ASINs (S10), their rows and each row's ASIN rank; saved beside the Arrow file and
    memory-mapped, so a worker opening a 1.18 M catalog does not build a Python dict of every ASIN."""
    if path is not None and path.with_suffix(".rank.npy").exists():  # written last
        try:
            return tuple(np.load(path.with_suffix(s), mmap_mode="r") for s in _ASIN_INDEX)  # type: ignore[return-value]
        except (OSError, ValueError):
            pass
    asins = np.concatenate([np.asarray(c.to_numpy(zero_copy_only=False), dtype="S10")
                            for c in table.column("asin").chunks])
    order = np.argsort(asins, kind="stable").astype(np.int64)
    sorted_asins = asins[order]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    if path is not None:
        for suffix, arr in zip(_ASIN_INDEX, (sorted_asins, order, rank)):
            tmp = path.with_suffix(f"{suffix}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr)
            tmp.replace(path.with_suffix(suffix))
    return sorted_asins, order, rank


def product_price(asin: str, pricing: list[float]) -> float:
    """WebShop's ``generate_product_prices`` with a per-ASIN seed instead of global state."""
    if not pricing:
        return 100.0
    if len(pricing) == 1:
        return pricing[0]
    return random.Random(f"webshop-price:{asin}").uniform(*pricing[:2])


_LOADED: dict[tuple, Catalog] = {}


def _catalog_parts(sources: dict[str, Path | None]):
    """The catalog's table, or (synthetic) its record batches, built from the source files."""
    table = build_table(sources)
    if not sources.get("synthetic"):
        return table
    return synthetic_batches(table, _synthetic_size(sources["synthetic"], table.num_rows))


def catalog_key(sources: dict[str, Path | None]) -> str:
    """The digest that keys a catalog's cached Arrow file and search index: its source files, and
    for a synthetic catalog the version of the generator that grows it."""
    digest = file_digest([p for p in sources.values() if p])
    if sources.get("synthetic"):
        digest = hashlib.sha256(f"{digest}:synthetic-v{SYNTHETIC_VERSION}".encode()).hexdigest()[:16]
    return digest


def load_catalog(root: Path | None = None, size: str = "1k", mmap: bool = True) -> Catalog:
    """Load (building the Arrow cache on first use, one builder at a time) and memoise per process."""
    sources = find_sources(root, size)
    stamp = (mmap, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sources.values() if p))
    if stamp in _LOADED:
        return _LOADED[stamp]
    digest = catalog_key(sources)
    path = cache_dir() / f"webshop-catalog-v{CATALOG_VERSION}-{size}-{digest}.arrow"
    try:
        table = read_arrow(path, mmap)
    except (pa.ArrowInvalid, OSError):  # missing, torn or foreign: (re)build it under the lock
        with build_lock(path):
            try:
                table = read_arrow(path, mmap)  # another worker built it while we waited
            except (pa.ArrowInvalid, OSError):
                path.unlink(missing_ok=True)
                for stale in path.parent.glob(path.stem + ".*.tmp"):
                    stale.unlink(missing_ok=True)  # a killed build's leftovers
                write_arrow(_catalog_parts(sources), path)
                table = read_arrow(path, mmap)
            Catalog(table, key=digest, index_path=path)  # its ASIN index too, before others open it
    catalog = Catalog(table, key=digest, index_path=path)
    _LOADED[stamp] = catalog
    return catalog
