"""Exception types of the evaluation package: every bad input gets one of these, naming the input.

They stand apart from `lvlm_guard.errors.GuardError` on purpose: scoring a finished run must not
import the core library (and with it torch and transformers), so `evals` has its own root type.
"""

from __future__ import annotations


class EvalError(Exception):
    """Base class of every error `evals` raises on purpose."""


class CocoLayoutError(EvalError, FileNotFoundError):
    """COCO-format annotation files or images are not where the layout says they are."""


class CocoFormatError(EvalError, ValueError):
    """A COCO-format JSON file lacks the keys the protocol needs, or they disagree."""


class PopeFormatError(EvalError, ValueError):
    """A POPE question file has a bad line (missing keys, bad label, duplicate question id)."""


class NotEnoughImagesError(EvalError, ValueError):
    """Fewer eligible images than the protocol asks to sample."""


class ResumeMismatchError(EvalError, ValueError):
    """An output directory holds a run with another configuration than the one asked to resume."""


class IncompleteRunError(EvalError, RuntimeError):
    """After every process finished, some items still have no recorded output."""


class AnswerCountError(EvalError, ValueError):
    """An AnswerFn returned a different number of answers than prompts it was given."""


class GridSpecError(EvalError, ValueError):
    """A grid or guard specification on the command line cannot be parsed."""


class NotEnoughCategoriesError(EvalError, ValueError):
    """An image has no category left to ask about as a negative (too few categories in the data)."""


class RecordFormatError(EvalError, ValueError):
    """A record file has a damaged line that is not the last one (the last may be cut by a kill)."""


class UnknownPopeSplitError(EvalError, ValueError):
    """A POPE negative-sampling strategy other than random, popular or adversarial."""


class UnknownVocabularyError(EvalError, ValueError):
    """A CHAIR vocabulary other than the original or our extended one."""


class CaptionsMismatchError(EvalError, ValueError):
    """A reference-captions file does not describe the images of the split it is paired with."""


class MissingDataError(EvalError, ValueError):
    """No benchmark data was named and the model brings none (--coco-root is required)."""
