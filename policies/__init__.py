"""What to mask: pluggable, vectorised masking policies. Depends on torch only."""

from .base import BudgetError, FitsCorpus, MaskingPolicy, PolicyError, RemembersRows, TokenBatch, check_rate
from .context import ContextSpec
from .corruption import IGNORE_INDEX, Seq2SeqBatch, mlm_corrupt, sentinel_corrupt
from .entity import EntityPolicy
from .features import DEFAULT_FEATURES, FEATURE_SIZES, FEATURES, PORTABLE_FEATURES
from .informative import InformativePolicy
from .learned import LearnedPolicy, ScorerEnsemble, TokenScorer
from .mixture import MixturePolicy
from .pmi import PMIPolicy
from .registry import ENTRY_POINT_GROUP, available, build, resolve
from .schedule import RateSchedule, set_rate
from .span import SpanPolicy
from .token import RandomPolicy
from .whole_word import WholeWordPolicy

__all__ = [
    "ENTRY_POINT_GROUP",
    "IGNORE_INDEX",
    "BudgetError",
    "ContextSpec",
    "EntityPolicy",
    "DEFAULT_FEATURES",
    "FEATURES",
    "FEATURE_SIZES",
    "FitsCorpus",
    "InformativePolicy",
    "LearnedPolicy",
    "PORTABLE_FEATURES",
    "MaskingPolicy",
    "MixturePolicy",
    "PMIPolicy",
    "PolicyError",
    "RandomPolicy",
    "RateSchedule",
    "RemembersRows",
    "ScorerEnsemble",
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
    "set_rate",
]
