"""YAML as tasktune reads specs and config files: PyYAML's safe loader, except that a key given twice in one
mapping is an error (PyYAML keeps the last silently: `n: 20` then `n: 30` made 30 records, and a second slot of one
name replaced the first without a word). Merge keys (`<<: *base`) still override as YAML defines them.

Specs (`load_spec_text`) also read plain scalars as YAML 1.2 does: only true/false are booleans and integers are
decimal, so slot values `[on, off, yes, 010, 0x1F]` stay the text written (PyYAML's YAML 1.1 made them True, False,
True, 8 and 31, and values collapsed silently). Floats are YAML 1.2's core-schema floats as well: `1e-3`, `1E2`,
`0.001e0` and `1.0e308` are numbers (YAML 1.1 wants a dot and a signed exponent, so they were text and `rate: 1e-3`
was refused as "not of type 'number'"); what YAML 1.1 already read as a float still is. Config files (`load`) keep
PyYAML's resolution: their values are parsed by each option's type."""

from __future__ import annotations

from typing import Any

import re

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing duplicate keys with a ConstructorError at the second one (its line in the mark)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The YAML document in `text`, read safely; duplicate keys raise yaml.YAMLError (a ConstructorError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


class SpecLoader(UniqueKeyLoader):
    """UniqueKeyLoader with YAML 1.2's core-schema booleans and integers (see the module's docstring)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                 list("-+0123456789"))
#: YAML 1.2 core-schema floats with a dot or an exponent (a bare `010` is neither an integer above nor a float:
#: text). Tried after PyYAML's own float and the integer resolvers, so those resolve as before.
FLOAT_12 = re.compile(r"^[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$")
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+.0123456789"))


def load_spec_text(text: str) -> Any:
    """A spec's YAML document: duplicate keys refused, YAML 1.2 booleans and integers."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 (a SafeLoader subclass)
