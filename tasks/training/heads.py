"""The masked-LM head applied only where a prediction is needed.

A Hugging Face masked LM called with ``labels=`` runs its head (a dense transform and the
full-vocabulary decoder) at every position, although only the labelled ones (~15%) carry
loss; for a small encoder with a large vocabulary the head is most of a training step.
:func:`masked_lm_loss` runs the encoder once, gathers the labelled positions' hidden states
and applies the head to those rows only; :func:`masked_logits` does the same for any chosen
positions (the label-free scorer's masked positions).

How to split a model is a small table, :data:`LAYOUTS`, keyed by ``config.model_type``: the
masked-LM class it applies to, the attribute holding the encoder and the attributes making up
the head, applied in order. Every entry was checked against ``modeling_<name>.py`` of
``transformers`` 5.24: the class's forward is ``encoder → outputs[0] → head → cross-entropy``
and its head is position-wise (no dropout, nothing across positions), so the split gives the
same values, tied weights and bias included, in train mode too (the encoder draws the same
dropout masks). ``tests/tasks/test_heads.py`` checks loss and gradients for every entry. Any
other model — an architecture not in the table, or a class of a listed architecture that is
not its masked LM (``BertForPreTraining``, ELECTRA's discriminator) — runs in full (logged
once per class), and its logits at the chosen positions are used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

IGNORE_INDEX = -100  # the label of a position that carries no loss (Hugging Face's convention)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadLayout:
    """Where a masked LM's encoder and head are.

    Args:
        masked_lm: the class name the layout is for (the ``AutoModelForMaskedLM`` class of the
            architecture); a model of another class of the same architecture is not split.
        encoder: attribute of the model holding the encoder, called with the model's inputs
            and returning the last hidden states first.
        head: attributes of the model applied in order to hidden states ``[N, H]``, giving
            logits ``[N, V]``.
    """

    masked_lm: str
    encoder: str
    head: tuple[str, ...]


LAYOUTS: dict[str, HeadLayout] = {
    "bert": HeadLayout("BertForMaskedLM", "bert", ("cls",)),
    "megatron-bert": HeadLayout("MegatronBertForMaskedLM", "bert", ("cls",)),
    "ernie": HeadLayout("ErnieForMaskedLM", "ernie", ("cls",)),
    "roberta": HeadLayout("RobertaForMaskedLM", "roberta", ("lm_head",)),
    "roberta-prelayernorm": HeadLayout("RobertaPreLayerNormForMaskedLM", "roberta_prelayernorm", ("lm_head",)),
    "xlm-roberta": HeadLayout("XLMRobertaForMaskedLM", "roberta", ("lm_head",)),
    "xlm-roberta-xl": HeadLayout("XLMRobertaXLForMaskedLM", "roberta", ("lm_head",)),
    "camembert": HeadLayout("CamembertForMaskedLM", "roberta", ("lm_head",)),
    "data2vec-text": HeadLayout("Data2VecTextForMaskedLM", "data2vec_text", ("lm_head",)),
    "mpnet": HeadLayout("MPNetForMaskedLM", "mpnet", ("lm_head",)),
    "albert": HeadLayout("AlbertForMaskedLM", "albert", ("predictions",)),
    "electra": HeadLayout("ElectraForMaskedLM", "electra", ("generator_predictions", "generator_lm_head")),
    "distilbert": HeadLayout("DistilBertForMaskedLM", "distilbert",
                             ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")),
}

_reported: set[str] = set()  # architectures whose fallback has been logged


def layout_of(model: PreTrainedModel) -> HeadLayout | None:
    """The model's entry of :data:`LAYOUTS`, or ``None`` when its head cannot be split."""
    layout = LAYOUTS.get(getattr(getattr(model, "config", None), "model_type", None))
    if layout is None or not any(cls.__name__ == layout.masked_lm for cls in type(model).__mro__):
        return None
    return layout


def hidden_states(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None = None,
                  **extra: Tensor) -> Tensor:
    """The encoder's last hidden states ``Float[B, L, H]`` of a model :func:`layout_of` can split.

    ``extra`` (``token_type_ids``, ``position_ids``, …) goes to the encoder as the masked LM's
    own forward would pass it.
    """
    layout = _require(model)
    encoder = getattr(model, layout.encoder)
    return encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]


def head(model: PreTrainedModel, states: Tensor) -> Tensor:
    """The masked-LM head of a model :func:`layout_of` can split: hidden states ``[..., H]`` → logits ``[..., V]``."""
    for name in _require(model).head:
        states = getattr(model, name)(states)
    return states


def masked_logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None, positions: Tensor,
                  **extra: Tensor) -> Tensor:
    """Logits ``Float[N, V]`` at the ``N`` true entries of ``positions`` (``Bool[B, L]``), in row-major order.

    The head runs on those rows only when the model can be split; otherwise the model runs in
    full and its logits there are returned (same values either way, to float rounding).
    """
    if layout_of(model) is None:
        _report_fallback(model)
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[positions]
    return head(model, hidden_states(model, input_ids, attention_mask, **extra)[positions])


def masked_lm_loss(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor,
                   **extra: Tensor) -> Tensor:
    """Mean cross-entropy over the positions where ``labels`` (``Long[B, L]``) is not ``-100``.

    The same loss as ``model(input_ids, attention_mask, labels=labels, **extra).loss`` (to float
    rounding, gradients included), with the head computed at the labelled positions only.

    A batch with no labelled position gives ``0``, attached to the graph so that
    ``backward()`` runs and leaves zero gradients, where Hugging Face's mean over no
    position gives NaN (and a NaN step would spoil every weight).
    """
    chosen = labels != IGNORE_INDEX
    logits = masked_logits(model, input_ids, attention_mask, chosen, **extra)
    total = F.cross_entropy(logits, labels[chosen].to(logits.device), reduction="sum")
    return total / chosen.sum().clamp(min=1).to(total.device)


def _require(model: PreTrainedModel) -> HeadLayout:
    layout = layout_of(model)
    if layout is None:
        raise TypeError(f"the masked-LM head of {type(model).__name__} (model type "
                        f"{getattr(getattr(model, 'config', None), 'model_type', None)!r}) cannot be split; "
                        f"call masked_logits or masked_lm_loss, which run such a model in full")
    return layout


def _report_fallback(model: PreTrainedModel) -> None:
    name = f"{type(model).__name__} ({getattr(getattr(model, 'config', None), 'model_type', None)})"
    if name not in _reported:
        _reported.add(name)
        log.info("%s: no head layout in maskpolicy.tasks.training.heads.LAYOUTS; the masked-LM head runs at every "
                 "position", name)
