"""A small English noun singulariser, enough for the object words CHAIR looks for.

CHAIR (Rohrbach et al., EMNLP 2018) singularises caption words before matching them to COCO
objects (the original uses `pattern.en.singularize`). We cannot fetch NLTK/pattern data here, and
only nouns naming COCO objects need to come out right, so this is a table of irregular forms plus
suffix rules. The rules are conservative: a word they cannot handle is left alone, which can only
miss a mention, never invent one. Words of three letters or fewer are never changed ("bus", "gas",
"its", "was").
"""

from __future__ import annotations

#: irregular plurals and words that end in -s but are not plurals of something else
IRREGULAR: dict[str, str] = {
    "people": "person",
    "persons": "person",
    "men": "man",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "oxen": "ox",
    "dice": "die",
    "buses": "bus",
    "busses": "bus",
    "gases": "gas",
    "skis": "ski",
    "taxis": "taxi",
    "tvs": "tv",
    "kiwis": "kiwi",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "leaves": "leaf",
    "loaves": "loaf",
    "shelves": "shelf",
    "wolves": "wolf",
    "calves": "calf",
    "halves": "half",
    "scarves": "scarf",
    "hooves": "hoof",
    "thieves": "thief",
    "elves": "elf",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "heroes": "hero",
    "mangoes": "mango",
    "volcanoes": "volcano",
    "echoes": "echo",
    "cacti": "cactus",
    "fungi": "fungus",
}
#: words that look plural but are used as they are (pluralia tantum, mass nouns, -s singulars)
INVARIANT: frozenset[str] = frozenset(
    {
        "scissors", "glasses", "sunglasses", "eyeglasses", "goggles", "pants", "jeans", "shorts", "trousers",
        "clothes", "tongs", "pliers", "binoculars", "headphones", "earphones", "stairs", "news", "series",
        "species", "sheep", "deer", "fish", "cattle", "aircraft", "police", "physics", "tennis", "lens",
        "canvas", "christmas", "always", "perhaps", "towards", "sometimes", "various", "this", "those",
        "these", "does", "goes", "yes", "plus", "thus", "across", "besides", "outdoors", "indoors",
    }
)  # fmt: skip


def singularize(word: str) -> str:
    """The singular of a lower-case English noun (unchanged if not a plural we recognise)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 3 or word in INVARIANT or not word.endswith("s"):
        if len(word) > 3 and word.endswith("men"):  # men, women, policemen, snowmen
            return word[:-3] + "man"
        return word
    if word.endswith(("ss", "us", "is", "ous")):  # glass, cactus, tennis, various
        return word
    if word.endswith("ies"):
        return word[:-3] + "y" if len(word) > 4 else word[:-1]  # puppies -> puppy; ties -> tie
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]  # dresses, dishes, benches, boxes
    return word[:-1]  # cars, vases, horses, gloves, stoves, shoes, toys
