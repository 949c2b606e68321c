"""Refresh the ``original`` outputs in tests/fixtures/webshop_goal_vectors.json by running WebShop's
own ``engine/goal.py`` (a checkout at 64fa2a5, not part of hpl) in a venv with spaCy 3.0.8 +
en_core_web_sm 3.0.0 and thefuzz 0.19: hpl's ``sm-3.0.0`` tagger, the nearest pipeline to WebShop's pin
(spaCy 3.3.0) obtainable, not the authors' own (see webshop_build_tagger.py).

The inputs recreate the cases of WebShop's tests/web-agent-site/engine/test_goal.py. With that
pipeline the original does not pass all of that file's assertions ("Name 1" has no NOUN/PROPN token,
so title_score is 0.2, not 1; 0.4 and 0.278 where it expects 0.333 and 0.3): the fixture keeps
what the original code actually returns (``original``) beside what the file asserts (``asserted``,
scored per pipeline by webshop_spacy_pipelines.py); other keys are left as they are.

  /tmp/venv-spacy308/bin/python benchmarks/webshop_record_goal_vectors.py WEBSHOP_CHECKOUT tests/fixtures/webshop_goal_vectors.json
"""

import json
import sys

sys.path.insert(0, sys.argv[1])
from web_agent_site.engine import goal as original  # noqa: E402

path = sys.argv[2]
with open(path, encoding="utf-8") as f:
    vectors = json.load(f)
for c in vectors["type"]:
    c["original"] = original.get_type_reward(c["purchased"], c["goal"])
for c in vectors["attribute"]:
    c["original"] = list(original.get_attribute_reward(c["purchased"], {"attributes": c["goal"]}))
for c in vectors["option"]:
    c["original"] = list(original.get_option_reward(c["purchased"], c["goal"]))
for c in vectors["reward"]:
    c["original"] = original.get_reward(c["purchased"], c["goal"], c["price"], c["options"])
    c["original_verbose"] = original.get_reward(c["purchased"], c["goal"], c["price"], c["options"], verbose=True)[1]
with open(path, "w", encoding="utf-8") as f:
    json.dump(vectors, f, indent=1, ensure_ascii=False)
