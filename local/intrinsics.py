"""Resolve the CloudFormation intrinsic functions a translated template uses in its properties.

Only what a resource's properties or a function's environment needs locally: `Ref`,
`Fn::GetAtt`, `Fn::Sub`, `Fn::Join`, `Fn::Select`, `Fn::Split`, `Fn::If` with the template's
`Conditions` (`Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or`), and `Fn::ToJsonString`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")
_NO_VALUE = object()


class UnresolvableIntrinsic(ValueError):
    """An intrinsic names something the local cloud does not know; the template needs a fix."""


@dataclass
class Physical:
    """What `Ref` and `Fn::GetAtt` give for one resource."""

    ref: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    """Everything intrinsics may refer to: parameters, pseudo parameters, resources."""

    parameters: dict[str, str]
    resources: dict[str, Physical]
    conditions: Mapping[str, Any] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name].ref
        raise UnresolvableIntrinsic(f"Ref to {name!r}: no such parameter or resource")

    def get_att(self, name: str, attribute: str) -> str:
        resource = self.resources.get(name)
        if resource is None:
            raise UnresolvableIntrinsic(f"Fn::GetAtt {name}.{attribute}: no such resource")
        if attribute not in resource.attributes:
            raise UnresolvableIntrinsic(
                f"Fn::GetAtt {name}.{attribute}: the local cloud knows only "
                f"{sorted(resource.attributes)} of {name}"
            )
        return resource.attributes[attribute]

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            raise UnresolvableIntrinsic(f"condition {name!r} is not defined in Conditions")
        return bool(resolve(self.conditions[name], self))


def resolve(value: Any, context: Context) -> Any:
    """`value` with every intrinsic function replaced by its local value."""
    if isinstance(value, list):
        items = [resolve(item, context) for item in value]
        return [item for item in items if item is not _NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((name, argument),) = value.items()
        handler = _FUNCTIONS.get(name)
        if handler is not None:
            return handler(argument, context)
    resolved = {key: resolve(item, context) for key, item in value.items()}
    return {key: item for key, item in resolved.items() if item is not _NO_VALUE}


def _ref(argument: Any, context: Context) -> Any:
    if argument == "AWS::NoValue":
        return _NO_VALUE
    return context.ref(str(argument))


def _get_att(argument: Any, context: Context) -> str:
    if isinstance(argument, str):
        argument = argument.split(".", 1)
    name, attribute = (resolve(part, context) for part in argument)
    return context.get_att(str(name), str(attribute))


def _sub(argument: Any, context: Context) -> str:
    if isinstance(argument, list):
        text, variables = argument[0], resolve(argument[1], context)
    else:
        text, variables = argument, {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return str(variables[name])
        if "." in name:
            resource, attribute = name.split(".", 1)
            return context.get_att(resource, attribute)
        return context.ref(name)

    return _SUB_VAR.sub(replace, str(text)).replace("${!", "${")


def _join(argument: Any, context: Context) -> str:
    delimiter, items = argument
    return str(delimiter).join(str(item) for item in resolve(items, context))


def _select(argument: Any, context: Context) -> Any:
    index, items = resolve(argument, context)
    return items[int(index)]


def _split(argument: Any, context: Context) -> list[str]:
    delimiter, text = resolve(argument, context)
    return str(text).split(str(delimiter))


def _if(argument: Any, context: Context) -> Any:
    name, when_true, when_false = argument
    return resolve(when_true if context.condition(name) else when_false, context)


def _equals(argument: Any, context: Context) -> bool:
    left, right = resolve(argument, context)
    return bool(left == right)


def _not(argument: Any, context: Context) -> bool:
    return not resolve(argument[0], context)


def _and(argument: Any, context: Context) -> bool:
    return all(resolve(item, context) for item in argument)


def _or(argument: Any, context: Context) -> bool:
    return any(resolve(item, context) for item in argument)


def _condition(argument: Any, context: Context) -> bool:
    return context.condition(str(argument))


def _to_json(argument: Any, context: Context) -> str:
    return json.dumps(resolve(argument, context), separators=(",", ":"))


_FUNCTIONS = {
    "Ref": _ref,
    "Fn::GetAtt": _get_att,
    "Fn::Sub": _sub,
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::If": _if,
    "Fn::Equals": _equals,
    "Fn::Not": _not,
    "Fn::And": _and,
    "Fn::Or": _or,
    "Condition": _condition,
    "Fn::ToJsonString": _to_json,
}
