"""A hostile site for the deployment tests: a resident site worker whose train replies are poisoned.

    python tests/hostile_worker.py SOCKET scale|nan

It runs the real handler, then multiplies every uploaded tensor by 1e6 (``scale``) or puts a NaN in one (``nan``),
so the node's real ClientApp sends a poisoned but well-formed reply: what a compromised hospital could do.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from fedmedlora.federation import site_handlers, site_worker
from fedmedlora.federation.messages import ARRAYS_KEY, from_record, to_record


def poisoned_train(kind: str):
    def train(msg, ctx):
        reply = site_handlers.train(msg, ctx)
        arrays = from_record(reply.content[ARRAYS_KEY], "own reply")
        if kind == "scale":
            arrays = {k: v * np.float32(1e6) for k, v in arrays.items()}
        else:
            first = sorted(arrays)[0]
            arrays[first] = arrays[first].copy()
            arrays[first].flat[0] = np.nan
        reply.content[ARRAYS_KEY] = to_record(arrays)
        return reply

    return train


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path, kind = sys.argv[1], sys.argv[2]
    site_worker.serve(path, handlers={"train": poisoned_train(kind), "evaluate": site_handlers.evaluate})
