"""The original CHAIR script's word pipeline, through nltk: tokenize, tag, lemmatize.

OPERA's Python 3 port of CHAIR (shikiw/OPERA `chair.py`, `caption_to_words` and `get_wordnet_pos`;
the port most later papers, PAI and VCD included, report with) lower-cases the caption, runs
`nltk.word_tokenize`, tags the tokens with `nltk.pos_tag` and lemmatizes every token with WordNet
at the tag's part of speech (J -> adjective, V -> verb, N -> noun, R -> adverb, anything else ->
noun). The 2018 original (LisaAnne/Hallucination `utils/chair.py`) used `pattern.en.singularize`
instead, a Python 2 library that no longer installs; the nltk port is the reference today.

`pos_tag` builds a new `PerceptronTagger` (reading its weights from disk) on every call; we keep
one tagger and call its `tag`, which is what `pos_tag` does with it, so the tags are the same.

NLTK's data (punkt or punkt_tab, the averaged-perceptron tagger, WordNet) is looked up on
`nltk.data.path` (the `NLTK_DATA` environment variable, `~/nltk_data`, `<venv>/nltk_data`, ...).
When a piece is missing, `NltkDataError` names it and the command that downloads it.
"""

from __future__ import annotations

from functools import lru_cache

from evals.errors import EvalError


class NltkDataError(EvalError, LookupError):
    """nltk, or a piece of NLTK's data that CHAIR needs, is not installed."""


#: (what nltk looks up, the `nltk.downloader` package that provides it), per nltk generation
_RESOURCES_NEW = (  # nltk >= 3.9: tab / JSON formats
    ("tokenizers/punkt_tab/english/", "punkt_tab"),
    ("taggers/averaged_perceptron_tagger_eng/", "averaged_perceptron_tagger_eng"),
    ("corpora/wordnet", "wordnet"),
)
_RESOURCES_OLD = (  # nltk 3.8.x: pickles
    ("tokenizers/punkt/english.pickle", "punkt"),
    ("taggers/averaged_perceptron_tagger/averaged_perceptron_tagger.pickle", "averaged_perceptron_tagger"),
    ("corpora/wordnet", "wordnet"),
)


def _version(nltk) -> tuple[int, ...]:
    return tuple(int(part) for part in nltk.__version__.split(".")[:2] if part.isdigit())


def _find(nltk, resource: str) -> bool:
    candidates = (resource, resource + ".zip") if resource.startswith("corpora/") else (resource,)
    for candidate in candidates:
        try:
            nltk.data.find(candidate)
            return True
        except LookupError:
            continue
    return False


def missing_resources() -> list[str]:
    """The downloader packages CHAIR needs that nltk cannot find (empty when all are there)."""
    import nltk

    needed = _RESOURCES_NEW if _version(nltk) >= (3, 9) else _RESOURCES_OLD
    return [package for resource, package in needed if not _find(nltk, resource)]


@lru_cache(maxsize=1)
def _pipeline():
    """(nltk, tagger, lemmatizer, wordnet), after checking that every data piece is there."""
    try:
        import nltk
        from nltk.corpus import wordnet
        from nltk.stem import WordNetLemmatizer
        from nltk.tag.perceptron import PerceptronTagger
    except ImportError as err:
        raise NltkDataError(
            "CHAIR needs nltk (the original script's tokenizer, tagger and lemmatizer): "
            "pip install 'lvlm_guard[eval]'  (or: pip install 'nltk>=3.8')"
        ) from err
    missing = missing_resources()
    if missing:
        raise NltkDataError(
            f"CHAIR needs NLTK data that nltk cannot find: {', '.join(missing)}. Fetch it with "
            f"`python -m nltk.downloader {' '.join(missing)}`, or point NLTK_DATA at a folder that "
            f"holds it (searched: {', '.join(map(str, nltk.data.path))})"
        )
    return nltk, PerceptronTagger(), WordNetLemmatizer(), wordnet


def _wordnet_pos(tag: str, wordnet) -> str:
    """The Penn tag's WordNet part of speech; noun when there is none (OPERA chair.py)."""
    for prefix, pos in (("J", wordnet.ADJ), ("V", wordnet.VERB), ("N", wordnet.NOUN), ("R", wordnet.ADV)):
        if tag.startswith(prefix):
            return pos
    return wordnet.NOUN


def caption_tokens(caption: str) -> list[tuple[str, str]]:
    """(token, lemma) for every token of the lower-cased caption, lemmatized at its tagged part of speech."""
    nltk, tagger, lemmatizer, wordnet = _pipeline()
    words = nltk.word_tokenize(caption.lower())
    return [(word, lemmatizer.lemmatize(word, pos=_wordnet_pos(tag, wordnet))) for word, tag in tagger.tag(words)]


def caption_lemmas(caption: str) -> list[str]:
    """The original's lemma list of a caption."""
    return [lemma for _, lemma in caption_tokens(caption)]
