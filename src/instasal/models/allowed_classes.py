"""Resolving class names that a model file asks for, so that nothing but an allowed class comes out.

nnU-Net's ``plans.json`` and a MONAI bundle's ``_target_`` name classes by dotted strings, which
the libraries resolve with :func:`pydoc.locate`: import the longest importable prefix, then walk
the rest by ``getattr``. That walk goes through whatever a module re-exports, so a name that
*starts* with an allowed package can still end anywhere (``torch.nn.functional.torch.serialization
.os.system``). :func:`allowed_class` resolves a name the same way and accepts it only when

- every step before the last is a real module inside the allowed package (imported under its own
  name: not an attribute, not an alias registered under another name),
- exactly one attribute step remains, and
- it gives a class, a subclass of :class:`torch.nn.Module`, defined inside the allowed package.

A name accepted here resolves, under :func:`pydoc.locate`, to that same class.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from torch import nn

from instasal.errors import ModelError

__all__ = ["allowed_class", "is_inside"]


def is_inside(name: str, package: str) -> bool:
    """Whether dotted ``name`` is ``package`` itself or lies below it.

    >>> is_inside("torch.nn.modules", "torch.nn"), is_inside("torch.nnx", "torch.nn")
    (True, False)
    """
    return name == package or name.startswith(package + ".")


def _real_module(name: str) -> ModuleType | None:
    """The module imported under exactly ``name``, or None when no such module exists."""
    try:
        module = importlib.import_module(name)
    except (ImportError, RuntimeError):  # missing, or an allowed package failing to import
        return None
    if sys.modules.get(name) is not module or module.__name__ != name:
        return None
    return module


def allowed_class(name: object, packages: Sequence[str], *, where: str) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass that dotted ``name`` names inside one of ``packages``.

    Parameters
    ----------
    name
        The dotted name as the model file holds it.
    packages
        Allowed packages (``"torch.nn"``); the name, each module it walks through and the class's
        ``__module__`` must all lie inside one of them.
    where
        The file and role named in the refusal (``"plans.json: nonlin"``).

    Raises
    ------
    ModelError
        When the name does not resolve, walks through anything but real submodules of an allowed
        package, or gives anything but a ``torch.nn.Module`` subclass defined inside it.
    """
    if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
        raise ModelError(f"{where}: {name!r} is not a dotted class name")
    package = next((p for p in packages if is_inside(name, p)), None)
    allowed = " or ".join(packages)
    if package is None:
        raise ModelError(f"{where}: {name!r} is not under {allowed}")
    parts = name.split(".")
    module: ModuleType | None = None
    steps = 0
    while steps < len(parts):
        found = _real_module(".".join(parts[: steps + 1]))
        if found is None:
            break
        module, steps = found, steps + 1
    if module is None or steps < package.count(".") + 1 or len(parts) - steps != 1:
        raise ModelError(
            f"{where}: {name!r} does not name a class of a module in {package} "
            "(only module.Class names are followed, never attributes a module re-exports)"
        )
    found_class = getattr(module, parts[-1], None)
    if not (isinstance(found_class, type) and issubclass(found_class, nn.Module)):
        raise ModelError(f"{where}: {name!r} is not a torch.nn.Module class")
    if not is_inside(found_class.__module__, package):
        raise ModelError(
            f"{where}: {name!r} is {found_class.__module__}.{found_class.__qualname__}, "
            f"defined outside {package}"
        )
    return found_class
