"""Encoder (BERT-style) token-classification baseline: single-site, centralized and federated.

Owns: ``bio`` (pure span ↔ BIO alignment), ``model`` (loading an HF encoder as a token classifier, optional LoRA,
tensor state exchange), ``settings`` (``EncoderSettings``), ``features`` (featurisation, collation, masked loss),
``train`` (training / prediction loops, ``load_models``, ``predict_sentences``), ``federated`` (in-process FedAvg
rounds) and ``run`` (``run_encoder_setting``: the four settings, scoring, result files).
Importing this package loads no torch: the submodules other than ``bio`` import torch/transformers/peft themselves.
"""

from fedmedlora.encoder.bio import IGNORE_INDEX, AlignStats, BioScheme, spans_to_tags, tags_to_spans

__all__ = ["IGNORE_INDEX", "AlignStats", "BioScheme", "spans_to_tags", "tags_to_spans"]
