"""The search's winner leaves as a policy folder whatever its family (``save_best_policy``)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import safetensors.torch
import torch
import yaml
from test_collator import TEXTS  # tests/meta is on sys.path (pytest's prepend mode)

from maskpolicy import MaskingCollator, load_policy, read_card, save_policy
from maskpolicy.meta.config import build_policy
from maskpolicy.meta.search.final import FinalConfiguration, save_best_policy
from maskpolicy.meta.search.trial import ARTIFACT_LOADER
from maskpolicy.policies import LearnedPolicy, PMIPolicy, SpanPolicy, TokenBatch
from maskpolicy.tasks.text.tokenization import train_wordpiece

SPAN_NODE = {"_target_": "maskpolicy.policies.SpanPolicy", "rate": 0.2, "p": 0.3, "max_length": 10, "unit": "token",
             "schedule": {"kind": "linear", "start": 0.3, "end": 0.15, "at": 0.5, "steps": None}}


def winner(tmp_path: Path, node: dict, tables: list[dict] | None = None) -> FinalConfiguration:
    """A finished final configuration as ``run_finals`` returns it: its first run's results and directory."""
    run = SimpleNamespace(policy=SimpleNamespace(params=node), pretrain=SimpleNamespace(tables=tables or []))
    directory = tmp_path / "final" / "seed-1"
    directory.mkdir(parents=True, exist_ok=True)
    return FinalConfiguration("best", "best", "search", 0, {}, node, runs=[run], directories=[directory])


def batch() -> TokenBatch:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (4, 30), generator=generator)
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(30).repeat(4, 1) // 2)


def test_a_heuristic_winner_is_a_policy_folder_and_keeps_its_yaml(tmp_path):
    folder = save_best_policy(winner(tmp_path, SPAN_NODE), tmp_path / "out")
    assert folder == tmp_path / "out" / "best_policy"
    card = read_card(folder)
    assert card["policy"] == {"name": "span", "params": {"rate": 0.2, "p": 0.3, "max_length": 10, "unit": "token"}}
    assert card["schedule"] == SPAN_NODE["schedule"]
    assert yaml.safe_load((tmp_path / "out" / "best_policy.yaml").read_text()) == SPAN_NODE
    expected = SpanPolicy(0.2, p=0.3).select(batch(), torch.Generator().manual_seed(1))
    assert torch.equal(load_policy(folder).select(batch(), torch.Generator().manual_seed(1)), expected)


def test_a_pmi_winner_keeps_the_tables_and_the_tokenizer_of_its_run(tmp_path):
    tokenizer = train_wordpiece(TEXTS, vocab_size=160)
    fitted = MaskingCollator(tokenizer, "pmi", min_count=2).fit(TEXTS)
    cache = tmp_path / "pmi-tables.safetensors"
    safetensors.torch.save_file({k: t.contiguous() for k, t in fitted.policy.tables.items()}, cache)
    best = winner(tmp_path, {"_target_": "maskpolicy.policies.PMIPolicy", "rate": 0.15, "min_count": 2},
                  [{"kind": "pmi", "source": "built", "path": str(cache)}])
    tokenizer.save_pretrained(best.directories[0] / "pretrained")
    folder = save_best_policy(best, tmp_path / "out")
    card = read_card(folder)
    assert card["fitted_tables"] and card["tokenizer"]["vocab_size"] == len(tokenizer)
    features = fitted.tokenize(TEXTS[:4])
    loaded = MaskingCollator.from_pretrained(folder, tokenizer, seed=3)
    expected = MaskingCollator(tokenizer, fitted.policy, seed=3)(features)
    assert torch.equal(loaded(features)["labels"], expected["labels"])


def test_a_pmi_winner_without_cached_tables_keeps_its_parameters_and_says_so(tmp_path, caplog):
    best = winner(tmp_path, {"_target_": "maskpolicy.policies.PMIPolicy", "rate": 0.15},
                  [{"kind": "pmi", "source": "built", "path": None}])
    with caplog.at_level(logging.WARNING, logger="maskpolicy.meta.search.final"):
        folder = save_best_policy(best, tmp_path / "out")
    assert not read_card(folder)["fitted_tables"] and "collator.fit(texts)" in caplog.text
    assert isinstance(load_policy(folder), PMIPolicy) and load_policy(folder).tables is None


def test_a_learned_winner_is_rewritten_in_the_new_layout_with_its_training(tmp_path):
    best = winner(tmp_path, {})
    policy = LearnedPolicy(0.3, hidden_size=8, embedding_dim=8, seed=2)
    artifact = save_policy(policy, best.directories[0] / "learning" / "policy", {"method": "supervised"})
    best.runs[0].policy.params.update({"_target_": ARTIFACT_LOADER, "path": str(artifact)})
    folder = save_best_policy(best, tmp_path / "out")
    card = read_card(folder)
    assert card["format_version"] == 2 and card["training"] == {"method": "supervised"}
    assert yaml.safe_load((tmp_path / "out" / "best_policy.yaml").read_text()) == {
        "_target_": ARTIFACT_LOADER, "path": str(folder.resolve())}
    features = torch.randint(1, 3, (2, 9, 6))
    view = TokenBatch(torch.zeros(2, 9, dtype=torch.long), torch.ones(2, 9, dtype=torch.bool), features=features,
                      feature_names=policy.features)
    with torch.no_grad():
        assert torch.equal(load_policy(folder).logits(view), policy.logits(view))


def test_policy_artifact_config_builds_a_heuristic_winner_too(tmp_path):
    folder = save_best_policy(winner(tmp_path, SPAN_NODE), tmp_path / "out")
    policy, _ = build_policy({"_target_": ARTIFACT_LOADER, "path": str(folder), "rate": 0.4, "sampling": None,
                              "temperature": None})
    assert isinstance(policy, SpanPolicy) and (policy.rate, policy.p) == (0.4, 0.3)
