"""The Flower-aware part of fedmedlora: strategy, ClientApp, ServerApp and the in-process simulation driver.

Modules:
    strategy     ``FedMedLoRAStrategy`` (a ``flwr.serverapp.strategy.FedAvg`` subclass) + reply validation;
                 the maths lives in ``fedmedlora.aggregation``.
    client_app   ``app``: the ClientApp a hospital runs (reads ITS site's data from ``context.node_config``).
    server_app   ``app``: the ServerApp the coordinator runs (initial adapter, rounds, logs, checkpoints, resume).
    simulation   ``run_federation(cfg, run_dir)``: ServerApp + ClientApps in one process through Flower Messages.

Nothing in this package is imported by the pure core; importing ``fedmedlora.federation`` itself loads nothing.
"""
