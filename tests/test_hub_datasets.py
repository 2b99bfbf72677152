"""The hub helpers benchmarks and the corpus reader share (scircuits.hub_offline, hub_unreachable,
hub_nothing_cached, datasets_cache, hub_cache): the environment read as `datasets` and
huggingface_hub read it, and a probe that leaves proxied or unparsable endpoints to `datasets`."""

from __future__ import annotations

import os

import pytest

import scircuits

HF_VARIABLES = (
    "HF_DATASETS_OFFLINE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "HF_DATASETS_CACHE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ENDPOINT",
)
PROXIES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in HF_VARIABLES + PROXIES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("variables", "offline"),
    [
        ({}, False),
        ({"TRANSFORMERS_OFFLINE": "1"}, True),
        ({"HF_HUB_OFFLINE": "yes"}, True),
        ({"HF_DATASETS_OFFLINE": "0", "HF_HUB_OFFLINE": "1"}, False),  # datasets' own flag first
        ({"HF_DATASETS_OFFLINE": "1"}, True),
    ],
)
def test_offline_is_read_in_datasets_order(clean_env, variables, offline):
    for name, value in variables.items():
        clean_env.setenv(name, value)
    assert scircuits.hub_offline() is offline


def test_caches_follow_hf_home_with_a_tilde_and_the_hub_variables(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("HF_HOME", "~/hf")
    assert scircuits.datasets_cache() == str(tmp_path / "hf" / "datasets")
    assert scircuits.hub_cache() == str(tmp_path / "hf" / "hub")
    clean_env.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old"))
    assert scircuits.hub_cache() == str(tmp_path / "old")
    clean_env.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert scircuits.hub_cache() == str(tmp_path / "new")
    (tmp_path / "hf" / "datasets" / "openai___gsm8k").mkdir(parents=True)
    assert not scircuits.hub_nothing_cached("openai/gsm8k")
    assert scircuits.hub_nothing_cached("openai/other")
    assert not scircuits.hub_nothing_cached(str(tmp_path))  # a local folder is read, not fetched


def test_the_probe_names_an_unreachable_endpoint(clean_env):
    clean_env.setenv("HF_ENDPOINT", "https://hub.invalid")  # RFC 2606: never resolves
    reason = scircuits.hub_unreachable()
    assert reason is not None and reason.startswith("the hub cannot be reached (hub.invalid:")


@pytest.mark.parametrize(
    ("endpoint", "proxy"),
    [
        ("https://hub.invalid", ("HTTPS_PROXY", "http://proxy.invalid:3128")),
        ("http://mirror.invalid", ("HTTP_PROXY", "http://proxy.invalid:3128")),
        ("http://mirror.invalid", ("all_proxy", "socks5://proxy.invalid:1080")),
    ],
)
def test_a_proxied_endpoint_is_left_to_datasets(clean_env, endpoint, proxy):
    clean_env.setenv("HF_ENDPOINT", endpoint)
    clean_env.setenv(*proxy)
    assert scircuits.hub_unreachable() is None
    clean_env.setenv("NO_PROXY", endpoint.split("//")[1])  # bypassed: probed directly again
    clean_env.setenv("no_proxy", endpoint.split("//")[1])
    assert scircuits.hub_unreachable() is not None


def test_an_endpoint_that_cannot_be_parsed_is_left_to_datasets(clean_env):
    clean_env.setenv("HF_ENDPOINT", "https://hub.invalid:port")
    assert scircuits.hub_unreachable() is None
    assert "HF_ENDPOINT" in os.environ
