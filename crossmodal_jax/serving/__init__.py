"""The local web demo (`python -m crossmodal_jax.serve --workdir=DIR`): a page and a JSON API over
a trained workdir's `Pipeline`, with concurrent requests batched into shared model calls.

    server.py   HTTP: routes, status codes, body limits (standard library only)
    app.py      the requests: checked, batched, answered (`Demo`)
    batcher.py  dynamic batching on one model thread (`Batcher`)
    uploads.py  uploaded files checked from their headers, written to temporary files
    page.html   the page: one file, inline CSS and JS, nothing fetched from elsewhere

In Python: `make_server(Pipeline.from_workdir(DIR), port=0).start()` serves on a free port.
"""

from crossmodal_jax.serving.app import Demo
from crossmodal_jax.serving.batcher import Batcher, Busy
from crossmodal_jax.serving.server import DemoServer, make_server

__all__ = ["Batcher", "Busy", "Demo", "DemoServer", "make_server"]
