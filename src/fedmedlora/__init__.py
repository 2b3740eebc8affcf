"""fedmedlora: federated LoRA fine-tuning of LLMs for clinical information extraction.

Importing the package loads no torch, transformers or flwr: the core (schema, prompts, parsing, metrics,
aggregation) is pure Python + numpy, and the heavy adapters are imported only where they are used.
"""

__version__ = "0.1.0"
