"""Adapters to other training frameworks and formats, each in its own module and importing
its framework only there: ``elalora_vit.integrations.hf`` (HuggingFace ``transformers``
``Trainer``), ``elalora_vit.integrations.peft`` (PEFT LoRA folders, both ways) and
``elalora_vit.integrations.lightning`` (PyTorch Lightning)."""
