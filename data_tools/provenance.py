"""Versions recorded in every artifact, so a result can be traced to the code that made it."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def toolkit_version() -> str:
    """The installed toolkit's version ("0+unknown" when it runs uninstalled), recorded in every artifact written."""
    try:
        return metadata.version("image-toolkit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def library_versions() -> dict[str, str]:
    """Versions of the toolkit and the libraries whose numerics matter."""
    versions = {"image-toolkit": toolkit_version(), "python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "faiss-cpu", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["platform"] = sys.platform
    return versions
