"""Run by mkdocs-gen-files during ``mkdocs build``: writes the env pages and the CLI reference
(from the code, at build time; nothing generated is committed)."""

import os
import sys
from pathlib import Path

import mkdocs_gen_files

os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: the same pages on every machine
sys.path.insert(0, str(Path(__file__).resolve().parent))
import docgen  # noqa: E402

for name in docgen.env_names():
    with mkdocs_gen_files.open(f"envs/{name}.md", "w") as f:
        f.write(docgen.env_page(name))

with mkdocs_gen_files.open("reference/cli/index.md", "w") as f:
    f.write(docgen.cli_index())
for cli in docgen.CLIS:
    with mkdocs_gen_files.open(f"reference/cli/{cli.slug}.md", "w") as f:
        f.write(docgen.cli_page(cli))
