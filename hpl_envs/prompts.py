"""Instructions and in-context examples, hpl's own or ETO/IPR's files from the data root.

The first user message follows ETO/IPR's layout (instruction, one worked example, then
"Now, it's your turn and here is the task."), so models trained on their data see the format
they expect.
"""

from __future__ import annotations

import json

from hpl_envs.data import DataCorruptError, require

TEMPLATE = """{instruction}
---
Here is an example.

{examples}
---

Now, it's your turn and here is the task.
{task}"""

DEFAULT_INSTRUCTIONS = {
    "webshop": (
        "You are shopping on a web store and must buy the product that best matches the"
        " instruction.\nEach turn you see the current page as text; clickable elements are"
        " separated by [SEP].\nAvailable actions:\nsearch[keywords]  (type keywords into the"
        " search bar)\nclick[value]  (click a button, a product id or an option shown on the"
        " page)\nAn invalid action changes nothing. Buying ends the episode.\nAnswer in this"
        " format:\nThought: <your reasoning>\nAction: <one action>"
    ),
    "alfworld": (
        "You are in a household and must complete the task given in the first observation.\n"
        "Each turn you see what happened after your last action. Useful actions:\n"
        "go to {recep}; open {recep}; close {recep}; take {obj} from {recep}; move {obj} to {recep};\n"
        "use {lamp}; heat {obj} with {microwave}; cool {obj} with {fridge}; clean {obj} with {sink};\n"
        "examine {something}; inventory; look.\n"
        "Use the exact object and receptacle names you see, e.g. 'desk 1'. An action that cannot be done"
        " gives 'Nothing happens.'\nAnswer in this format:\nThought: <your reasoning>\nAction: <one action>"
    ),
    "intercode-sql": (
        "You answer questions about a MySQL database by running SQL.\n"
        "Each turn, run one SQL statement and read its result, or submit when the last result answers"
        " the question: the last result you produced is your answer.\nAnswer in this format:\n"
        "Thought: <your reasoning>\nAction: ```sql\n<one SQL statement>\n```\nor\n"
        "Thought: <your reasoning>\nAction: submit"
    ),
}

# Our own worked examples (not copied from ETO/IPR); same shape as their ICL files.
DEFAULT_ICL = {
    "webshop": [
        [
            {"role": "user", "content": "WebShop [SEP] Instruction: [SEP] i want a pack of 2 unscented"
             " lip balms, and price lower than 20.00 dollars [SEP] Search"},
            {"role": "assistant", "content": "Thought: I should search for unscented lip balm.\n"
             "Action: search[unscented lip balm pack of 2]"},
            {"role": "user", "content": "Observation:\nInstruction: [SEP] i want a pack of 2 unscented"
             " lip balms, and price lower than 20.00 dollars [SEP] Back to Search [SEP] Page 1"
             " (Total results: 50) [SEP] Next > [SEP] B01EXAMPLE [SEP] Natural Unscented Lip Balm,"
             " 2 Pack [SEP] $7.99 [SEP] B02EXAMPLE [SEP] Tinted Lip Gloss Set [SEP] $24.00"},
            {"role": "assistant", "content": "Thought: The first result is unscented, a 2 pack and"
             " under 20 dollars.\nAction: click[b01example]"},
            {"role": "user", "content": "Observation:\nInstruction: [SEP] i want a pack of 2 unscented"
             " lip balms, and price lower than 20.00 dollars [SEP] Back to Search [SEP] < Prev"
             " [SEP] size [SEP] 1 count [SEP] 2 count [SEP] Natural Unscented Lip Balm, 2 Pack"
             " [SEP] Price: $7.99 [SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP]"
             " Reviews [SEP] Buy Now"},
            {"role": "assistant", "content": "Thought: I need the pack of 2, so I pick '2 count'.\n"
             "Action: click[2 count]"},
            {"role": "user", "content": "Observation:\nInstruction: [SEP] i want a pack of 2 unscented"
             " lip balms, and price lower than 20.00 dollars [SEP] Back to Search [SEP] < Prev"
             " [SEP] size [SEP] 1 count [SEP] 2 count [SEP] Natural Unscented Lip Balm, 2 Pack"
             " [SEP] Price: $7.99 [SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP]"
             " Reviews [SEP] Buy Now"},
            {"role": "assistant", "content": "Thought: Everything matches; I buy it.\n"
             "Action: click[buy now]"},
        ]
    ],
    "alfworld": [
        [
            {"role": "user", "content": "You are in the middle of a room. Looking quickly around you, you see a"
             " cabinet 1, a countertop 1, a fridge 1, a sinkbasin 1, and a stoveburner 1.\nYour task is to: put a"
             " clean mug in cabinet."},
            {"role": "assistant", "content": "Thought: A mug is probably on the countertop. I will look there"
             " first.\nAction: go to countertop 1"},
            {"role": "user", "content": "Observation: You arrive at countertop 1. On the countertop 1, you see a"
             " mug 2, and a spoon 1."},
            {"role": "assistant", "content": "Thought: There is the mug.\nAction: take mug 2 from countertop 1"},
            {"role": "user", "content": "Observation: You pick up the mug 2 from the countertop 1."},
            {"role": "assistant", "content": "Thought: I have to clean it in the sink.\nAction: go to sinkbasin 1"},
            {"role": "user", "content": "Observation: You arrive at sinkbasin 1. On the sinkbasin 1, you see"
             " nothing."},
            {"role": "assistant", "content": "Thought: Now clean it.\nAction: clean mug 2 with sinkbasin 1"},
            {"role": "user", "content": "Observation: You clean the mug 2 using the sinkbasin 1."},
            {"role": "assistant", "content": "Thought: Now put it in the cabinet.\nAction: go to cabinet 1"},
            {"role": "user", "content": "Observation: You arrive at cabinet 1. The cabinet 1 is open. In it, you"
             " see nothing."},
            {"role": "assistant", "content": "Thought: The cabinet is open.\nAction: move mug 2 to cabinet 1"},
        ]
    ],
    "intercode-sql": [
        [
            {"role": "user", "content": "How many albums did each artist release? List artist names with counts."},
            {"role": "assistant", "content": "Thought: I first need to know the tables.\nAction: ```sql\nSHOW"
             " TABLES\n```"},
            {"role": "user", "content": "Observation: [('album',), ('artist',)]"},
            {"role": "assistant", "content": "Thought: I need the columns of album.\nAction: ```sql\nDESC"
             " album\n```"},
            {"role": "user", "content": "Observation: [('AlbumId', b'int', 'NO', 'PRI', None, ''), ('Title',"
             " b'text', 'YES', '', None, ''), ('ArtistId', b'int', 'YES', 'MUL', None, '')]"},
            {"role": "assistant", "content": "Thought: I join album and artist and count per artist.\nAction:"
             " ```sql\nSELECT T2.Name, COUNT(*) FROM album AS T1 JOIN artist AS T2 ON T1.ArtistId ="
             " T2.ArtistId GROUP BY T2.Name\n```"},
            {"role": "user", "content": "Observation: [('AC/DC', 2), ('Accept', 2), ('Aerosmith', 1)]"},
            {"role": "assistant", "content": "Thought: That answers the question.\nAction: submit"},
        ]
    ],
}

FILE_NAMES = {"intercode-sql": "intercode_sql"}


def load_prompt(env: str, source: str = "default") -> tuple[str, list[list[dict]]]:
    """(instruction, ICL conversations) for ``env`` from ``default``, ``ipr`` or ``eto``."""
    if source == "default":
        if env not in DEFAULT_INSTRUCTIONS:
            raise ValueError(f"no default prompt for env {env!r}")
        return DEFAULT_INSTRUCTIONS[env], DEFAULT_ICL[env]
    if source not in ("ipr", "eto"):
        raise ValueError(f"prompt source must be default, ipr or eto, got {source!r}")
    stem = FILE_NAMES.get(env, env)
    inst = require(f"prompts/{source}/instructions/{stem}_inst.txt", env).read_text(encoding="utf-8")
    icl_path = require(f"prompts/{source}/icl_examples/{stem}_icl.json", env)
    try:
        icl = json.loads(icl_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataCorruptError(f"{icl_path}: not valid JSON ({e.msg})") from e
    # ETO's ALFWorld file marks assistant turns with "from": "gpt"; normalise to roles.
    convs = []
    for conv in icl:
        msgs = []
        for k, m in enumerate(conv):
            role = m.get("role") or ("assistant" if m.get("from") in ("gpt", "assistant") else "user")
            msgs.append({"role": role if "role" in m or "from" in m else ("user" if k % 2 == 0 else "assistant"),
                         "content": m.get("content", m.get("value", ""))})
        convs.append(msgs)
    return inst, convs


def first_message(env: str, task_observation: str, source: str = "default", n_examples: int = 1) -> str:
    """The first user message: instruction, example(s), then the task's first observation."""
    instruction, icl = load_prompt(env, source)
    parts = []
    for conv in icl[:n_examples]:
        for j, m in enumerate(conv):
            sep = "\n\n" if (m["role"] == "user" and j > 0) else "\n"
            parts.append(m["content"] + sep)
    examples = "".join(parts).rstrip("\n")
    return TEMPLATE.format(instruction=instruction.rstrip("\n"), examples=examples, task=task_observation)


def initial_messages(env: str, task_observation: str, source: str = "default") -> list[dict]:
    return [{"role": "user", "content": first_message(env, task_observation, source)}]
