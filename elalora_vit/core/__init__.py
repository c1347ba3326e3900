"""The backbone-agnostic ElaLoRA core: adapters, target matching, importance,
schedule, rank allocators, regulariser, adapter I/O, the method registry, and the
warning for a training loop that never steps its allocator.

Nothing here imports timm, torchvision or the data code.
"""

from .adapter_io import (
    AdapterFileError,
    BackboneMismatchError,
    check_backbone_fingerprint,
    load_adapters,
    merge_adapters,
    merged_inference,
    read_adapter_metadata,
    save_adapters,
    unmerge_adapters,
)
from .allocator import AdaLoRAAllocator, RankAllocator, RoundRecord, plan_round
from .config import ConfigError, ElaLoRAConfig
from .fingerprint import backbone_fingerprint
from .importance import ImportanceTracker
from .layer import AdaptedLinear, AdapterRef, LoRALinear, SVDLinear
from .optim_state import reset_optimizer_slot
from .pretrained import (
    disable_adapter,
    from_pretrained,
    load_allocator_state,
    print_trainable_parameters,
    save_pretrained,
    trainable_parameters,
)
from .named import active_adapter, adapter_names, delete_adapter, load_adapter, set_adapter
from .param_groups import adapter_param_groups
from .regularizer import orthogonal_regularization
from .schedule import adjustment_steps, check_schedule, is_adjustment_step, phase, ranks_to_move
from .inject import patch_model, unpatch_model
from .layer import adapted_layers, find_adapters, unwrap_model
from .registry import Method, get_method, method_names, register_method
from .targets import TargetError, match_targets
from .watch import AllocatorNotSteppedWarning

__all__ = [
    "AdaLoRAAllocator",
    "AdaptedLinear",
    "AdapterFileError",
    "AdapterRef",
    "BackboneMismatchError",
    "AllocatorNotSteppedWarning",
    "ConfigError",
    "ElaLoRAConfig",
    "ImportanceTracker",
    "LoRALinear",
    "Method",
    "RankAllocator",
    "RoundRecord",
    "SVDLinear",
    "TargetError",
    "active_adapter",
    "adapted_layers",
    "adapter_names",
    "adapter_param_groups",
    "adjustment_steps",
    "backbone_fingerprint",
    "check_backbone_fingerprint",
    "check_schedule",
    "delete_adapter",
    "disable_adapter",
    "from_pretrained",
    "load_allocator_state",
    "print_trainable_parameters",
    "save_pretrained",
    "trainable_parameters",
    "find_adapters",
    "get_method",
    "is_adjustment_step",
    "load_adapter",
    "load_adapters",
    "match_targets",
    "merge_adapters",
    "merged_inference",
    "method_names",
    "orthogonal_regularization",
    "patch_model",
    "phase",
    "plan_round",
    "ranks_to_move",
    "read_adapter_metadata",
    "register_method",
    "reset_optimizer_slot",
    "save_adapters",
    "set_adapter",
    "unmerge_adapters",
    "unpatch_model",
    "unwrap_model",
]
