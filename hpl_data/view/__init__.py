"""``hpl-data view``: one self-contained HTML report of hpl-gen datasets and hpl-eval runs.

The file opens from disk with no server and no network: data, script and styles are embedded
(the data as JSON and gzip+base64 blocks, decompressed by the browser's own DecompressionStream).
Sections: overview (tables, histograms, curriculum buckets, MC rollouts, expert filter, protocol),
pair browser, episode browser and the eval table.
"""

from hpl_data.view.collect import ViewInputError, collect
from hpl_data.view.report import render_html, serve, write_report

__all__ = ["ViewInputError", "collect", "render_html", "serve", "write_report"]
