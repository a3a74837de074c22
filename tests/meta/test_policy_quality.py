"""benchmarks/policy_quality.py: its command-line contract on SQuAD-format files a user names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "policy_quality.py"
FIRST, LAST = ["Ada", "Bram", "Cora", "Dax"], ["Quill", "Tollo", "Venn", "Ormo"]
CITIES = ["Norvane", "Keswith", "Palrith", "Tessaly", "Olwen", "Quarry"]
# 16 people: four paragraphs per article are enough for SquadTask's train/dev/test split of subjects
FACTS = [(f"{FIRST[i % 4]} {LAST[i // 4]}", CITIES[i % 6], 1950 + 3 * i) for i in range(16)]


def article(title: str, facts, answerable: bool = True) -> dict:
    paragraphs = []
    for person, city, year in facts:
        context = f"{person} was born in {city} in {year}. The family later moved to the coast near the harbour."
        qas = [{"id": f"{person}-city", "question": f"Where was {person} born?",
                "answers": [{"text": city, "answer_start": context.index(city)}] if answerable else [],
                "is_impossible": not answerable},
               {"id": f"{person}-year", "question": f"When was {person} born?",
                "answers": [{"text": str(year), "answer_start": context.index(str(year))}] if answerable else [],
                "is_impossible": not answerable}]
        paragraphs.append({"context": context, "qas": qas})
    return {"title": title, "paragraphs": paragraphs}


def write(path: Path, *articles: dict) -> Path:
    path.write_text(json.dumps({"version": "test", "data": list(articles)}))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--seeds", "0", "--learn", "learning.supervised.epochs=2",
                           *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_named_files_print_one_json_object_last_keyed_by_policy(tmp_path):
    train = write(tmp_path / "a.json", article("People A", FACTS[:8]))
    evaluate = write(tmp_path / "c.json", article("People C", FACTS[8:]))
    done = run("--train", str(train), "--eval", str(evaluate))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"learned", "learned_topk", "entity", "whole_word", "span", "random"} <= set(result)
    for quality in result.values():
        assert set(quality) == {"precision", "recall"}
        assert 0 <= quality["precision"] <= 1 and 0 <= quality["recall"] <= 1
    # every fact here is a capitalised name or a year, so the rule tagger's spans are exactly the answers and more
    assert result["entity"]["precision"] > result["random"]["precision"]


@pytest.mark.slow
def test_leave_one_article_out_skips_and_names_an_article_without_answerable_questions(tmp_path):
    files = write(tmp_path / "three.json", article("People A", FACTS[:4]), article("People B", FACTS[4:8]),
                  article("Unanswerable", FACTS[8:12], answerable=False))
    done = run("--files", str(files))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped 1 article(s) with no answerable question: Unanswerable" in done.stdout
    assert "People A seed 0" in done.stdout and "People B seed 0" in done.stdout


def test_an_eval_file_without_answerable_questions_is_a_clear_error(tmp_path):
    train = write(tmp_path / "a.json", article("People A", FACTS[:8]))
    evaluate = write(tmp_path / "c.json", article("Unanswerable", FACTS[8:], answerable=False))
    done = run("--train", str(train), "--eval", str(evaluate))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"--eval {evaluate}: no answerable question in these files" in done.stderr


def test_train_without_eval_is_refused():
    done = run("--train", "a.json")
    assert done.returncode == 2 and "--train and --eval go together" in done.stderr
