"""Targeted cumulative scores: log p(x_A | x_rest) = Σ_m S_m with masks drawn inside A only.

Exact on PPCA and the HMM against log p(x) − log p(x_rest); on a tiny masked LM, golden values
and the masks the model receives.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from maskpolicy.meta.scoring.estimate import estimate_mll
from maskpolicy.meta.scoring.estimators import Exhaustive, MLLError, Rates, Stratified
from maskpolicy.meta.scoring.predictors import MaskedLMPredictor
from maskpolicy.meta.scoring.targets import check_target, exact_target_log_likelihood, position_mask
from maskpolicy.meta.scoring.text import answer_documents, entity_documents, score_targets, target_documents
from maskpolicy.tasks.base import Document, QAExample, TaskError
from maskpolicy.tasks.data.tagging import RuleTagger
from maskpolicy.tasks.tractable.hmm import HMMTask, tiny_masked_lm
from maskpolicy.tasks.tractable.ppca import PPCATask

TRACTABLE = {"ppca": lambda: PPCATask(dim=8, n_sequences=40, seed=2),
             "hmm": lambda: HMMTask(length=8, n_sequences=40, seed=2)}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ragged_targets(batch: int, length: int) -> torch.Tensor:
    """Per row a different target, about 40% of positions; rows 0 and 1 empty, row 2 one position, row 3 all."""
    targets = torch.rand(batch, length, generator=seeded(7)) < 0.4
    targets[:2] = False
    targets[2] = False
    targets[2, 5] = True
    targets[3] = True
    return targets


TARGET_SETS = {
    "single position": lambda batch, length: position_mask([3], batch, length),
    "positions 1, 4, 6": lambda batch, length: position_mask([1, 4, 6], batch, length),
    "first and last": lambda batch, length: position_mask([0, length - 1], batch, length),
    "ragged with empty rows": ragged_targets,
}


# -- exactness on the tractable models ---------------------------------------------------


@pytest.mark.parametrize("target", TARGET_SETS)
@pytest.mark.parametrize("model", TRACTABLE)
def test_exhaustive_targeted_estimate_is_the_exact_conditional_log_likelihood(model, target):
    task = TRACTABLE[model]()
    data = task.data()
    scored = TARGET_SETS[target](*data.shape)
    estimate = estimate_mll(task.masked_log_probs, data, scored, Exhaustive(), target="positions")
    exact = exact_target_log_likelihood(task, data, scored)
    torch.testing.assert_close(estimate.per_sequence, exact, rtol=1e-8, atol=0)
    assert estimate.tokens == int(scored.sum()) and estimate.total_stderr == 0.0
    assert estimate.empty_sequences == int((~scored.any(1)).sum())
    assert estimate.nats_per_token == pytest.approx(float(exact.sum()) / int(scored.sum()), rel=1e-8)


@pytest.mark.parametrize("model", TRACTABLE)
def test_a_single_position_target_is_its_one_conditional(model):
    task = TRACTABLE[model]()
    data = task.data()
    scored = position_mask([3], *data.shape)
    estimate = estimate_mll(task.masked_log_probs, data, scored, Exhaustive())
    torch.testing.assert_close(estimate.per_sequence, task.masked_log_probs(data, scored)[:, 3], rtol=1e-12, atol=0)
    assert estimate.forward_passes == len(data)


@pytest.mark.parametrize("estimator", [Rates(passes=24), Stratified(passes=24)])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("model", TRACTABLE)
def test_monte_carlo_targeted_estimates_land_within_4_standard_errors(model, estimator, seed):
    task = TRACTABLE[model]()
    data = task.data()
    scored = ragged_targets(*data.shape)
    estimate = estimate_mll(task.masked_log_probs, data, scored, estimator, seeded(seed))
    exact = float(exact_target_log_likelihood(task, data, scored).sum())
    assert 0 < estimate.total_stderr < 0.05 * abs(exact)
    assert abs(estimate.total - exact) < 4 * estimate.total_stderr
    assert (estimate.per_sequence[:2] == 0).all() and (estimate.variance[:2] == 0).all()


def test_masks_stay_inside_the_target_and_empty_rows_get_none():
    seen = []
    task = TRACTABLE["ppca"]()
    data = task.data()
    scored = ragged_targets(*data.shape)

    def recording(inputs, masks):
        seen.append((inputs.clone(), masks.clone()))
        return task.masked_log_probs(inputs, masks)

    estimate = estimate_mll(recording, data, scored, Stratified(passes=6), seeded(0))
    inputs, masks = (torch.cat(parts) for parts in zip(*seen, strict=True))
    owners = (inputs[:, None, :] == data[None]).all(2).double().argmax(1)  # the data row each masked row came from
    assert not (masks & ~scored[owners]).any()
    assert not set(owners.tolist()) & {0, 1}  # the empty rows were never passed to the predictor
    assert estimate.forward_passes == 6 * (len(data) - 2) == len(masks)


def test_the_empty_rows_add_zero_and_are_counted_in_every_summary():
    task = TRACTABLE["hmm"]()
    data = task.data()
    scored = ragged_targets(*data.shape)
    estimate = estimate_mll(task.masked_log_probs, data, scored, Stratified(passes=8), seeded(0), target="answers")
    summary = estimate.summary("mean")
    assert summary["sequences"] == 40 and summary["empty_sequences"] == 2 and summary["target"] == "answers"
    assert summary["estimate"] == pytest.approx(estimate.total / 40)
    assert summary["nats_per_token"] == pytest.approx(estimate.total / int(scored.sum()))
    score = estimate.score(seconds=1.5)
    assert (score.target, score.empty_sequences, score.tokens, score.sequences) == ("answers", 2, int(scored.sum()), 40)


def test_a_batch_without_any_target_token_names_the_target_and_the_fix():
    task = TRACTABLE["ppca"]()
    with pytest.raises(MLLError, match=r"no sequence has a position to score for target 'entities' "
                                       r"\(D = 0 in all 40 rows\); choose a target .*score.target=all"):
        estimate_mll(task.masked_log_probs, task.data(), torch.zeros(40, 8, dtype=torch.bool), target="entities")


@pytest.mark.parametrize("model", TRACTABLE)
def test_marginal_of_nothing_is_zero_and_of_everything_is_the_joint(model):
    task = TRACTABLE[model]()
    data = task.data()
    assert (task.log_likelihood(data, torch.zeros(data.shape, dtype=torch.bool)).abs() < 1e-12).all()
    torch.testing.assert_close(task.log_likelihood(data, torch.ones(data.shape, dtype=torch.bool)),
                               task.log_likelihood(data), rtol=1e-12, atol=0)


# -- choosing a target --------------------------------------------------------------------


@pytest.mark.parametrize(("target", "positions", "tractable", "message"), [
    ("facts", None, False, r"unknown score.target 'facts'; choose one of all, entities, answers \(text tasks\) "
                           r"or all, positions \(tractable tasks\)"),
    ("positions", [1], False, "score.target=positions picks positions of a tractable task's sequences .* for text "
                              "task 'demo' use score.target=entities, answers or all"),
    ("entities", None, True, r"score.target=entities needs text with spans; tractable task 'demo' has none: use "
                             r"score.target=positions score.positions=\[...\]"),
    ("answers", None, True, "score.target=answers needs text with spans"),
    ("positions", None, True, r"needs the positions: score.positions=\[1,4,6\] \(0-based\)"),
    ("all", [1, 2], True, "score.positions is set but score.target=all; add score.target=positions"),
])
def test_targets_a_task_cannot_give_are_refused_with_the_fix(target, positions, tractable, message):
    with pytest.raises(MLLError, match=message):
        check_target(target, positions, "demo", tractable=tractable)


@pytest.mark.parametrize(("positions", "message"), [
    ([1, 8], r"score.positions \[8\] lie outside the sequences' 8 positions \(0 … 7\); give 0-based positions below 8"),
    ([-1], r"score.positions \[-1\] lie outside"),
    ([], "score.positions is empty"),
    ([2, 2], "repeats a position"),
    ([1.5], "must be integers"),
])
def test_bad_positions_are_refused_with_the_fix(positions, message):
    with pytest.raises(MLLError, match=message):
        position_mask(positions, 3, 8)


def test_position_masks_mark_the_same_positions_in_every_row():
    mask = position_mask([6, 1, 4], 2, 8)
    assert mask.tolist() == [[False, True, False, False, True, False, True, False]] * 2


# -- text targets ----------------------------------------------------------------------------

BORN = "Ada Quill was born in Norvane."
STUDIED = "Cora Venn studied chemistry at the academy."


class HandMade:
    """Two held-out documents (entity spans in the first only) and one QA-dev question."""

    name = "handmade"
    tagger = None

    def corpus(self) -> tuple[Document, ...]:
        return self.heldout()

    def heldout(self) -> tuple[Document, ...]:
        return Document(BORN, ((0, 9), (22, 29))), Document(STUDIED)

    def qa(self, split: str) -> tuple[QAExample, ...]:
        if split != "dev":
            return ()
        where = QAExample("Where was Ada Quill born?", "Norvane", "Ada Quill", context=BORN, answer_start=22)
        what = QAExample("What did Cora Venn study?", "chemistry", "Cora Venn", context=STUDIED, answer_start=18)
        return where, what, QAExample("Who?", "Ada Quill", "Ada Quill", context=BORN, answer_start=0)


class Unlabelled(HandMade):
    def heldout(self) -> tuple[Document, ...]:
        return (Document(STUDIED),)

    def qa(self, split: str) -> tuple[QAExample, ...]:
        return (QAExample("?", "chemistry", "Cora Venn"),)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return tiny_masked_lm(len(tiny_tokenizer), seed=0)


def test_target_documents_carry_the_target_spans():
    entities = entity_documents(HandMade())
    assert [d.entities for d in entities] == [((0, 9), (22, 29)), ()]
    answers = answer_documents(HandMade())  # distinct contexts, answer spans merged per context
    assert [(d.text, d.entities) for d in answers] == [(BORN, ((0, 9), (22, 29))), (STUDIED, ((18, 27),))]
    assert target_documents(HandMade(), "all") == HandMade().heldout()
    tagged = Unlabelled()
    tagged.tagger = RuleTagger()
    assert entity_documents(tagged)[0].entities == ((0, 9),)  # the tagger finds "Cora Venn"


def test_text_targets_the_task_cannot_give_are_refused():
    with pytest.raises(TaskError, match="held-out documents have no entity spans and the task has no tagger; give "
                                        r"it a tagger \(e.g. tagger@task.tagger=rule\) or use score.target=all"):
        entity_documents(Unlabelled())
    with pytest.raises(TaskError, match="QA-dev questions give no context and answer_start"):
        answer_documents(Unlabelled())
    with pytest.raises(MLLError, match="score.target=positions picks positions"):
        target_documents(HandMade(), "positions")


def test_score_targets_refuses_bad_target_lists_before_any_work(model, tiny_tokenizer):
    for targets in ("entities", [], ["all", "nouns"]):
        with pytest.raises(MLLError, match="non-empty list of target names|unknown score.target 'nouns'"):
            score_targets(model, tiny_tokenizer, HandMade(), 64, Stratified(passes=4), targets)
    with pytest.raises(TaskError, match="no entity spans"):
        score_targets(model, tiny_tokenizer, Unlabelled(), 64, Stratified(passes=4), ["all", "entities"])


def record_model_inputs(model) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    calls: list[torch.Tensor] = []
    # the encoder's inputs: the scorer runs the encoder, then the head only at the scored positions
    handle = model.base_model.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs["input_ids"].clone()), with_kwargs=True)
    return calls, handle


def test_entity_rows_mask_only_entity_tokens_and_show_every_other_token(model, tiny_tokenizer):
    calls, handle = record_model_inputs(model)
    try:
        (estimate,) = score_targets(model, tiny_tokenizer, HandMade(), 64, Stratified(passes=12), ["entities"],
                                    seed=3).values()
    finally:
        handle.remove()
    ids = torch.cat(calls)
    original = torch.tensor(tiny_tokenizer(BORN)["input_ids"])
    assert ids.shape == (12, len(original))  # the entity-less document's row never reaches the model
    masked = ids == tiny_tokenizer.mask_token_id
    assert (ids[~masked] == original.expand_as(ids)[~masked]).all()  # everything outside the mask is visible
    entity_tokens = set(tiny_tokenizer.tokenize("Ada Quill")) | set(tiny_tokenizer.tokenize("Norvane"))
    hidden = {tiny_tokenizer.convert_ids_to_tokens(int(original[j])) for j in masked.nonzero()[:, 1]}
    assert hidden == entity_tokens  # only entity tokens, and each of them at some rate
    assert estimate.target == "entities" and estimate.empty_sequences == 1
    assert estimate.tokens == len(tiny_tokenizer.tokenize("Ada Quill Norvane"))


def test_exhaustive_entity_score_is_the_chain_sum_over_every_entity_mask(model, tiny_tokenizer):
    (estimate,) = score_targets(model, tiny_tokenizer, HandMade(), 64, Exhaustive(), ["entities"]).values()
    ids = torch.tensor(tiny_tokenizer(BORN)["input_ids"])[None]
    offsets = tiny_tokenizer(BORN, return_offsets_mapping=True)["offset_mapping"]
    entity = [j for j, (start, end) in enumerate(offsets) if end > start and (start < 9 or start >= 22) and end <= 29]
    predictor, by_size = MaskedLMPredictor(model, tiny_tokenizer.mask_token_id), {}
    for size in range(1, len(entity) + 1):
        for subset in itertools.combinations(entity, size):
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, list(subset)] = True
            by_size.setdefault(size, []).append(float(predictor(ids, mask)[mask].double().mean()))
    chain_sum = sum(sum(values) / len(values) for values in by_size.values())  # Σ_m S_m
    assert estimate.total == pytest.approx(chain_sum, rel=1e-6)
    assert estimate.per_sequence[1] == 0 and estimate.forward_passes == 2 ** len(entity) - 1


def test_golden_entity_and_all_scores_at_a_fixed_seed(model, tiny_tokenizer):
    scores = score_targets(model, tiny_tokenizer, HandMade(), 64, Stratified(passes=16), ["all", "entities",
                                                                                          "answers"], seed=0)
    everything, entities, answers = scores.values()
    assert (everything.tokens, entities.tokens, answers.tokens) == (15, 3, 4)  # Ada Quill Norvane; + chemistry
    assert (everything.empty_sequences, entities.empty_sequences, answers.empty_sequences) == (0, 1, 0)
    assert everything.per_sequence.tolist() == pytest.approx([-31.06036488328661, -36.23479163987297], rel=1e-5)
    assert entities.per_sequence.tolist() == pytest.approx([-13.457480351130169, 0.0], rel=1e-5)
    assert answers.per_sequence.tolist() == pytest.approx([-13.418257792790733, -4.602903842926025], rel=1e-5)
    assert entities.nats_per_token == pytest.approx(-13.457480351130169 / 3, rel=1e-5)
    alone = score_targets(model, tiny_tokenizer, HandMade(), 64, Stratified(passes=16), ["entities"], seed=0)
    assert alone["entities"].total == entities.total  # each target draws from the same seed

