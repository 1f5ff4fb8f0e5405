"""Small pieces of English for object mentions: articles, plurals, counts, lists, places in a frame."""

from __future__ import annotations

from lvlm_guard.embedded.world.categories import category, with_article

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def count_phrase(name: str, count: int) -> str:
    """'a cup', 'two cups', 'three people' (COCO names, plural from the category table)."""
    if count == 1:
        return with_article(name)
    word = NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)
    return f"{word} {category(name).plural}"


def join_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def is_or_are(count: int) -> str:
    return "is" if count == 1 else "are"


def position_phrase(bbox: tuple[float, float, float, float], size: int) -> str:
    """Where a box sits in the frame, in the words people use: 'on the left', 'in the foreground'."""
    x, y, w, h = bbox
    cx, bottom = (x + w / 2) / size, (y + h) / size
    if bottom > 0.9 and w * h > 0.08 * size * size:
        return "in the foreground"
    if cx < 0.36:
        return "on the left side of the image"
    if cx > 0.64:
        return "on the right side of the image"
    if (y + h / 2) / size < 0.35:
        return "near the top of the image"
    return "in the middle of the image"
