"""Encoder (BERT-style) token-classification baseline: single-site, centralized and federated.

Owns: ``bio`` (pure span ↔ BIO alignment), ``model`` (loading an HF encoder as a token classifier, optional LoRA,
tensor state exchange) and ``train`` (featurisation, training, prediction, ``run_encoder_setting``).
Importing this package loads no torch: ``model`` and ``train`` import torch/transformers/peft themselves.
"""

from fedmedlora.encoder.bio import IGNORE_INDEX, AlignStats, BioScheme, spans_to_tags, tags_to_spans

__all__ = ["IGNORE_INDEX", "AlignStats", "BioScheme", "spans_to_tags", "tags_to_spans"]
