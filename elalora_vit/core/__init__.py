"""The backbone-agnostic ElaLoRA core: adapters, target matching, importance,
schedule, rank allocators, regulariser, adapter I/O, and the warning for a
training loop that never steps its allocator.

Nothing here imports timm, torchvision or the data code.
"""

from .adapter_io import (
    AdapterFileError,
    load_adapters,
    merge_adapters,
    read_adapter_metadata,
    save_adapters,
    unmerge_adapters,
)
from .allocator import AdaLoRAAllocator, RankAllocator, RoundRecord, plan_round
from .config import ConfigError, ElaLoRAConfig
from .importance import ImportanceTracker
from .layer import AdaptedLinear, AdapterRef, LoRALinear, SVDLinear
from .optim_state import reset_optimizer_slot
from .param_groups import adapter_param_groups
from .regularizer import orthogonal_regularization
from .schedule import adjustment_steps, check_schedule, is_adjustment_step, phase, ranks_to_move
from .watch import AllocatorNotSteppedWarning
from .targets import (
    TargetError,
    adapted_layers,
    find_adapters,
    match_targets,
    patch_model,
    unpatch_model,
    unwrap_model,
)

__all__ = [
    "AdaLoRAAllocator",
    "AdaptedLinear",
    "AdapterFileError",
    "AdapterRef",
    "AllocatorNotSteppedWarning",
    "ConfigError",
    "ElaLoRAConfig",
    "ImportanceTracker",
    "LoRALinear",
    "RankAllocator",
    "RoundRecord",
    "SVDLinear",
    "TargetError",
    "adapted_layers",
    "adapter_param_groups",
    "adjustment_steps",
    "check_schedule",
    "find_adapters",
    "is_adjustment_step",
    "load_adapters",
    "match_targets",
    "merge_adapters",
    "orthogonal_regularization",
    "patch_model",
    "phase",
    "plan_round",
    "ranks_to_move",
    "read_adapter_metadata",
    "reset_optimizer_slot",
    "save_adapters",
    "unmerge_adapters",
    "unpatch_model",
    "unwrap_model",
]
