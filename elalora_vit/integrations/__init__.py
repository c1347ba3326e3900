"""Adapters to other training frameworks, each in its own module and importing its framework
only there: ``elalora_vit.integrations.hf`` (HuggingFace ``transformers`` ``Trainer``)."""
