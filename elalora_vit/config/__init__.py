"""A run's configuration, in one package:

- :mod:`.schema`: the dataclasses, every default declared once (``TrainConfig`` and its sections);
- :mod:`.reading`: the one bounded YAML reader every path uses (``--config`` and its ``base:``
  files, ``--set`` values, a run folder's ``config.yaml``, search spaces);
- :mod:`.loading`: defaults, then a file and its ``base:`` chain, then dotted overrides;
- :mod:`.overrides`: ``--set KEY=VALUE``;
- :mod:`.convert` and :mod:`.checks`: type conversion, and the checks, each error naming the key.
"""

from .reading import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    ConfigInputError,
    YamlInputError,
    load_yaml,
    read_yaml_file,
    read_yaml_text,
    yaml_error_line,
)
from .schema import (
    ADAPTER_METHODS,
    LR_SCHEDULES,
    METHODS,
    PRECISIONS,
    SHARED_ADAPTER_FIELDS,
    TRACKERS,
    AdapterConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    upgrade_deprecated_keys,
)
from .checks import MAX_EPOCHS, canonical_task, steps_of
from .convert import LIST_LENGTHS, describe_type, field_types
from .loading import load_config, read_yaml
from .overrides import parse_override

__all__ = [
    "ADAPTER_METHODS", "LIST_LENGTHS", "LR_SCHEDULES", "MAX_BYTES", "MAX_DEPTH", "MAX_EPOCHS", "MAX_NODES", "METHODS",
    "PRECISIONS", "SHARED_ADAPTER_FIELDS", "TRACKERS", "AdapterConfig", "ConfigInputError", "DataConfig",
    "ModelConfig", "OptimConfig", "TrainConfig", "YamlInputError", "canonical_task", "describe_type", "field_types",
    "load_config", "load_yaml", "parse_override", "read_yaml", "read_yaml_file", "read_yaml_text", "steps_of",
    "upgrade_deprecated_keys", "yaml_error_line",
]
