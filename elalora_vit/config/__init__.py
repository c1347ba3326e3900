"""Reading configuration files: every YAML the project reads (``--config`` and its
``base:`` files, ``--set`` values, a run folder's ``config.yaml``, search spaces) goes
through the one bounded reader of :mod:`.reading`."""

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

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "ConfigInputError", "YamlInputError", "load_yaml", "read_yaml_file",
           "read_yaml_text", "yaml_error_line"]
