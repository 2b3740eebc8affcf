"""The ClientApp a hospital (site) runs: train the LoRA adapter on the site's own notes, send back tensors only.

What a site does with a message is in ``fedmedlora.federation.site_handlers`` (local training, evaluation, the
site's state between rounds). This module is the Flower entry point around it and stays light: it imports flwr and
the message contract only, because on the Deployment Engine a fresh ClientApp process starts for every message.

* Default (and the simulation): the handler runs in this process, loading the model through the process-wide
  ``fedmedlora.lm.session`` cache.
* Node config ``site-worker=<socket>`` (``fedmedlora deploy supernode --resident-model``): the message goes to the
  site's resident worker (``fedmedlora.federation.site_worker``), which keeps the model loaded between rounds and
  runs the same handler. If the worker is not reachable the handler runs here instead, with a warning.

SecAgg+ (``federation.secure_aggregation``) runs as Flower's ``secaggplus_mod`` around ``train``, in this process.

Reply: ``arrays`` (only the rule's upload tensors), ``metrics`` (numbers), ``info`` (``site`` name). No text, no
token ids, no pickles (the contract: ``fedmedlora.federation.messages``).
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmedlora.federation import site_worker
from fedmedlora.federation.secure_aggregation import secure_aggregation_mod

log = logging.getLogger(__name__)

app = ClientApp()


def _run(kind: str, msg: Message, context: Context) -> Message:
    path = context.node_config.get(site_worker.WORKER_NODE_KEY)
    if path:
        try:
            return site_worker.forward(str(path), kind, msg, context)
        except site_worker.WorkerUnavailable as err:
            log.warning("%s; running the %s handler in the ClientApp process instead (slower)", err, kind)
    from fedmedlora.federation import site_handlers

    handler = site_handlers.train if kind == "train" else site_handlers.evaluate
    return handler(msg, context)


@app.train(mods=[secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    """One round of local training at this site (``site_handlers.train``)."""
    return _run("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: the global adapter's loss on this site's dev split (``site_handlers.evaluate``)."""
    return _run("evaluate", msg, context)


__all__ = ["app"]
