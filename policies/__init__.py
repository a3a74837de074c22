"""What to mask: pluggable, vectorised masking policies. Depends on torch only."""

from .base import BudgetError, MaskingPolicy, PolicyError, TokenBatch, check_rate
from .corruption import IGNORE_INDEX, Seq2SeqBatch, mlm_corrupt, sentinel_corrupt
from .entity import EntityPolicy
from .features import DEFAULT_FEATURES, FEATURE_SIZES, FEATURES, PORTABLE_FEATURES
from .learned import LearnedPolicy, TokenScorer
from .mixture import MixturePolicy
from .registry import ENTRY_POINT_GROUP, available, build, resolve
from .span import SpanPolicy
from .token import RandomPolicy
from .whole_word import WholeWordPolicy

__all__ = [
    "ENTRY_POINT_GROUP",
    "IGNORE_INDEX",
    "BudgetError",
    "EntityPolicy",
    "DEFAULT_FEATURES",
    "FEATURES",
    "FEATURE_SIZES",
    "LearnedPolicy",
    "PORTABLE_FEATURES",
    "MaskingPolicy",
    "MixturePolicy",
    "PolicyError",
    "RandomPolicy",
    "Seq2SeqBatch",
    "SpanPolicy",
    "TokenBatch",
    "TokenScorer",
    "WholeWordPolicy",
    "available",
    "build",
    "check_rate",
    "mlm_corrupt",
    "resolve",
    "sentinel_corrupt",
]
