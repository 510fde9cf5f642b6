"""YAML read the strict way: safe types only, and a key given twice in one mapping is an error
naming the key and both lines (PyYAML would keep the last one silently)."""

import yaml

from .errors import EdgeError

_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:               # '<<: *base' may be overridden by the keys beside it
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:                         # an unhashable key: the constructor reports it
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first + 1})", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(path):
    """The document in `path`; EdgeError naming the file (and line) when it cannot be read as
    strict YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise EdgeError(f"not valid YAML: {' '.join(str(exc).split())}", path) from None
    except UnicodeDecodeError as exc:
        raise EdgeError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except RecursionError:
        raise EdgeError("nested too deeply", path) from None
    except OSError as exc:
        raise EdgeError(f"cannot read: {exc.strerror or exc}", path) from None
