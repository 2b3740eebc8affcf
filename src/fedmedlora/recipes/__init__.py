"""Orchestration: the settings a user runs, put together from the core, ``fedmedlora.lm`` and ``federation``.

``local`` (zero-shot, single-site, centralized, new-site adaptation, local-only: ``run_setting``), ``evaluate``
(extraction + scoring of any adapter on benchmark sites), ``extract`` (raw notes → predictions), ``study`` (every
setting in one comparison) and ``encoder_study`` (the encoder baseline rows). Only the CLI imports this package.
"""
