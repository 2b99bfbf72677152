"""Where Hugging Face datasets are cached, whether they are read offline, and whether the hub can be
reached: answered without importing `datasets` (slow to import, and absent without the hf extra).

For a benchmark or corpus that reads a hub dataset: with nothing cached and the hub unreachable,
``datasets`` retries for half a minute before failing, so a reader probes first.

>>> import scircuits
>>> reason = None if scircuits.hub_offline() else scircuits.hub_unreachable()
>>> reason is None or reason.startswith("the hub cannot be reached")
True
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """HF_DATASETS_OFFLINE, or else HF_HUB_OFFLINE, or else TRANSFORMERS_OFFLINE set true (the order
    in which `datasets` and huggingface_hub read them)."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        flag = os.environ.get(name)
        if flag is not None:
            return flag.strip().lower() in TRUE
    return False


def _hf_home() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface"))


def datasets_cache() -> str:
    """Where `datasets` keeps the datasets it has read, found as `datasets` finds it."""
    return os.path.expanduser(os.environ.get("HF_DATASETS_CACHE") or os.path.join(_hf_home(), "datasets"))


def hub_cache() -> str:
    """Where downloaded hub files are kept."""
    return os.path.expanduser(
        os.environ.get("HF_HUB_CACHE")
        or os.environ.get("HUGGINGFACE_HUB_CACHE")
        or os.path.join(_hf_home(), "hub")
    )


def hub_nothing_cached(dataset: str) -> bool:
    """Neither cache holds anything under the dataset id's name (and it is no local folder)."""
    if os.path.exists(dataset):
        return False
    name = dataset.rsplit("/", 1)[-1].lower()
    for folder in (datasets_cache(), hub_cache()):
        try:
            if any(name in entry.lower() for entry in os.listdir(folder)):
                return False
        except OSError:
            continue
    return True


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached now (its name does not resolve, or no connection within 5 s), or
    None. Through a proxy (``HTTPS_PROXY``, ``HTTP_PROXY`` for an http endpoint, ``ALL_PROXY``, the
    system's settings), or with an endpoint that cannot be parsed, the answer is left to `datasets`."""
    try:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host = endpoint.hostname or "huggingface.co"
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    except ValueError:
        return None
    proxies = getproxies()
    if (proxies.get(endpoint.scheme) or proxies.get("all")) and not proxy_bypass(host):
        return None
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"the hub cannot be reached ({host}: {exc.strerror or exc})"
    return None
