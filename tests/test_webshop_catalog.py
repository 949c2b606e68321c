"""The catalog loader accepts WebShop's raw ``items_shuffle*.json`` as well as the documents file."""

import json

from hpl_envs.webshop.catalog import Catalog, build_table


def raw_record(p: dict) -> dict:
    """A product as it appears in the raw items_shuffle file (before WebShop's load_products)."""
    pricing = p["pricing"]
    price = f"${pricing[0]}" if len(pricing) == 1 else f"${pricing[0]} - ${pricing[1]}"
    return {"asin": p["asin"], "name": p["name"], "full_description": p["full_description"], "pricing": price,
            "images": p["images"], "product_category": p["product_category"], "average_rating": p["average_rating"],
            "small_description": p["small_description"], "customization_options": p["customization_options"],
            "category": p["category"], "query": p["query"].upper() + "  ", "page": p["page"]}


def test_raw_catalog_equals_documents_catalog(tmp_path, data_dir):
    docs = data_dir / "webshop" / "items_shuffle_1000.documents.jsonl"
    attrs = data_dir / "webshop" / "items_ins_v2_1000.json"
    lines = docs.read_text().splitlines()[:150]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    raw = [raw_record(json.loads(line)["product"]) for line in lines]
    raw.append(dict(raw[0]))  # duplicate ASINs are skipped, as WebShop does
    (tmp_path / "items.json").write_text(json.dumps(raw))
    a = Catalog(build_table({"products": tmp_path / "docs.jsonl", "attributes": attrs}))
    b = Catalog(build_table({"products": tmp_path / "items.json", "attributes": attrs}))
    assert len(a) == len(b) == 150
    for i in range(150):
        pa, pb = a.product(i), b.product(i)
        for field in ("asin", "Title", "Price", "pricing", "options", "BulletPoints", "Attributes", "Description",
                      "query", "category", "product_category"):
            assert getattr(pa, field) == getattr(pb, field), (i, field)
