"""The Flower-aware part of fedmedlora: the message contract, strategies, ClientApp, ServerApp, simulation.

Modules:
    messages     the wire contract (record/metric/config names, ``ArrayRecord`` conversion, reply validation).
    strategies   one ``FedAvg`` subclass per aggregation rule (``make_strategy``); the maths is
                 ``fedmedlora.aggregation``, the transport ``fedmedlora.compression.Transport``.
    site         which site a node serves, its data folder, seeds and cached examples.
    client_app   ``app``: the ClientApp a hospital runs (reads ITS site's data from ``context.node_config``).
    server_eval  the coordinator's validation loss and round F1 on its labelled set.
    recorder     what every round writes (round record, message log, adapter, checkpoint).
    checkpoint   the resume point and the checks before resuming.
    server_app   ``app``: the ServerApp the coordinator runs (``run_server`` puts the above together).
    simulation   ``run_federation(cfg, run_dir)``: ServerApp + ClientApps in one process through Flower Messages.

Layer: above the pure core and ``fedmedlora.lm``; below the orchestration (``fedmedlora.recipes``) and the CLI.
Importing ``fedmedlora.federation`` itself loads nothing.
"""
