"""The timm Vision Transformer backbone, in three parts:

- :mod:`.factory`: :func:`create_backbone` builds a timm model with a head sized for
  the task and fills it with pre-trained weights from the Hugging Face hub (probed
  first, so an offline machine fails fast) or from a local file;
- :mod:`.weights`: :func:`load_backbone_checkpoint` reads the original Google ViT
  ``.npz``, ``.safetensors`` and ``.pth``/``.pt``/``.bin`` files;
- :mod:`.facts`: what the training code asks of a ViT: the default adapter targets
  (:func:`default_targets`), the head to train in full (:func:`head_module_names`)
  and where an adapter sits (:func:`block_index_and_kind`);

and :func:`resolve_data_config` (:mod:`.data_config`): the input size, interpolation,
mean and std the model's weights expect. Every failure raises :class:`BackboneError`.
"""

from .data_config import DataSpec, check_input_size, resolve_data_config
from .errors import BackboneError
from .facts import block_index_and_kind, default_targets, head_module_names
from .factory import DEFAULT_MODEL, create_backbone, create_run_backbone
from .weights import CHECKPOINT_EXTENSIONS, load_backbone_checkpoint

__all__ = [
    "DEFAULT_MODEL",
    "CHECKPOINT_EXTENSIONS",
    "BackboneError",
    "DataSpec",
    "create_backbone",
    "create_run_backbone",
    "load_backbone_checkpoint",
    "default_targets",
    "head_module_names",
    "resolve_data_config",
    "check_input_size",
    "block_index_and_kind",
]
