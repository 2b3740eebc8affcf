"""The language-model layer: base model + LoRA, adapter I/O, local training, generation, the model session.

Modules:
    model       load a base causal LM (HF folder, hub id, GGUF, the offline SmolLM2 default), attach LoRA,
                render prompts (one renderer for training and inference).
    adapter_io  adapter state <-> named numpy arrays; PEFT adapter folders + ``fedmedlora.json`` metadata.
    train       ``train_local`` (one site's LoRA training), ``validation_loss``, ``TrainSettings``.
    generate    batched greedy generation.
    session     ``Session`` (a loaded model to train, generate and save with) and its process-wide cache.

Layer: imports torch, transformers and peft; above the pure core, below ``federation``, ``recipes`` and the CLI;
never imports flwr. Importing ``fedmedlora.lm`` itself loads nothing.
"""
