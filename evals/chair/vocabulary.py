"""Which words name which COCO object in CHAIR: the original synonym list, and our opt-in extension.

`ORIGINAL` is CHAIR's own vocabulary (Rohrbach et al., EMNLP 2018): the synonym list
`synonyms.txt` (LisaAnne/Hallucination `data/synonyms.txt`, also embedded in shikiw/OPERA
`chair.py`) read as the original reads it (each line split on ", ", the first entry the category,
a later line overriding an earlier one for a word on both), and its hard-coded two-word rules
(`utils/chair.py`, `CHAIR.__init__`): the COCO double words kept as one word ("hot dog", "teddy
bear", "cell phone", ...), "baby"/"adult" + animal -> the animal (not a person), "passenger" + jet or
train -> the vehicle, "bow tie" -> tie, "toilet seat" -> toilet ("wine glas", a leftover of the
2018 singulariser, is kept: it never fires with WordNet lemmas).

`EXTENDED` is ours and opt-in (`--vocabulary extended`): the original plus the words of
`EXTENSION_WORDS` that the original does not know (mug, plant, tram, sofa's neighbours, ...; single
words and two-word phrases only, since the original's matcher joins at most two tokens). A word the
original maps keeps the original's category. Numbers computed with it are recorded as such and are
not comparable with published CHAIR tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from evals.errors import UnknownVocabularyError

SYNONYMS_FILE = Path(__file__).with_name("synonyms.txt")

#: utils/chair.py: COCO names of two words that count as one word (the list as written, duplicates included)
COCO_DOUBLE_WORDS: tuple[str, ...] = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "hot dog", "teddy bear", "home plate",
    "train track",
)  # fmt: skip
#: utils/chair.py: "baby X" / "adult X" is the animal X, not a person
ANIMAL_WORDS: tuple[str, ...] = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub",
)  # fmt: skip
#: utils/chair.py: "passenger X" is the vehicle X, not a person
VEHICLE_WORDS: tuple[str, ...] = ("jet", "train")


@dataclass(frozen=True)
class Vocabulary:
    """CHAIR's word tables: `synonyms` maps every object word to its COCO category (the
    original's `inverse_synonym_dict`); `double_words` maps two lemmas joined by a space to the
    word they count as (its `double_word_dict`)."""

    name: str
    synonyms: Mapping[str, str] = field(repr=False)
    double_words: Mapping[str, str] = field(repr=False)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self.synonyms.values())


def read_synonyms(path: str | Path = SYNONYMS_FILE) -> dict[str, str]:
    """word -> category, parsed exactly as utils/chair.py parses synonyms.txt ("#" lines are ours)."""
    synonyms: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        entries = line.strip().split(", ")
        for entry in entries:
            synonyms[entry] = entries[0]
    return synonyms


def original_double_words() -> dict[str, str]:
    """utils/chair.py's `double_word_dict`, built in the original's order."""
    double_words = {phrase: phrase for phrase in COCO_DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        double_words[f"baby {animal}"] = animal
        double_words[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        double_words[f"passenger {vehicle}"] = vehicle
    double_words["bow tie"] = "tie"
    double_words["toilet seat"] = "toilet"
    double_words["wine glas"] = "wine glass"
    return double_words


@lru_cache(maxsize=1)
def original_vocabulary() -> Vocabulary:
    return Vocabulary("original", MappingProxyType(read_synonyms()), MappingProxyType(original_double_words()))


@lru_cache(maxsize=1)
def extended_vocabulary() -> Vocabulary:
    base = original_vocabulary()
    synonyms, double_words = dict(base.synonyms), dict(base.double_words)
    for category, words in EXTENSION_WORDS.items():
        for word in (category, *words):
            if len(word.split()) > 2 or word in synonyms:
                continue
            synonyms[word] = category
            if " " in word:
                double_words.setdefault(word, word)
    return Vocabulary("extended", MappingProxyType(synonyms), MappingProxyType(double_words))


VOCABULARIES = {"original": original_vocabulary, "extended": extended_vocabulary}


def vocabulary(name: str) -> Vocabulary:
    """The vocabulary called `name` ("original" or "extended")."""
    if name not in VOCABULARIES:
        raise UnknownVocabularyError(f"unknown CHAIR vocabulary {name!r}; choose from {', '.join(VOCABULARIES)}")
    return VOCABULARIES[name]()


#: our extension (opt-in): COCO category -> further words and phrases that name it, collected from
#: image descriptions; see `extended_vocabulary` for how they are added to the original list
EXTENSION_WORDS: dict[str, tuple[str, ...]] = {
    "person": (
        "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "infant", "guy", "lady",
        "gentleman", "adult", "teenager", "teen", "human", "player", "athlete", "skier", "snowboarder", "surfer",
        "skateboarder", "rider", "cyclist", "bicyclist", "biker", "motorcyclist", "pedestrian", "passenger",
        "driver", "spectator", "crowd", "officer", "police officer", "policeman", "policewoman", "soldier",
        "worker", "chef", "waiter", "waitress", "student", "tourist", "catcher", "umpire", "referee", "bride",
        "groom", "mother", "father", "mom", "dad", "daughter", "son", "brother", "sister", "grandmother",
        "grandfather", "husband", "wife", "customer", "vendor", "farmer", "cowboy", "jockey", "businessman",
        "fireman", "firefighter", "fisherman", "friend",
    ),
    "bicycle": ("bike", "bicycle", "mountain bike", "tricycle"),
    "car": ("automobile", "taxi", "cab", "sedan", "suv", "van", "minivan", "jeep", "hatchback", "police car", "sports car"),
    "motorcycle": ("motorbike", "motor bike", "motor cycle", "dirt bike", "scooter", "moped"),
    "airplane": ("plane", "aeroplane", "air plane", "jet", "airliner", "aircraft", "jetliner"),
    "bus": ("school bus", "minibus", "double decker"),
    "train": ("locomotive", "tram", "streetcar", "subway train"),
    "truck": ("pickup", "pickup truck", "lorry", "fire truck", "firetruck", "dump truck", "semi truck"),
    "boat": ("ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "rowboat", "speedboat", "motorboat"),
    "traffic light": ("stoplight", "stop light", "traffic signal"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": ("meter",),
    "bench": ("park bench",),
    "bird": (
        "pigeon", "seagull", "gull", "duck", "goose", "swan", "parrot", "sparrow", "crow", "owl", "eagle", "hawk",
        "hen", "rooster", "flamingo", "pelican", "penguin", "songbird", "finch", "robin",
    ),
    "cat": ("kitten", "kitty", "tabby"),
    "dog": ("puppy", "pup", "doggy", "doggie"),
    "horse": ("pony", "foal", "stallion", "mare"),
    "sheep": ("lamb", "ram", "ewe"),
    "cow": ("cattle", "bull", "calf", "ox", "heifer"),
    "elephant": (),
    "bear": ("grizzly", "polar bear", "brown bear"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("back pack", "rucksack", "knapsack"),
    "umbrella": ("parasol",),
    "handbag": ("hand bag", "purse"),
    "tie": ("necktie", "bow tie"),
    "suitcase": ("suit case", "luggage", "baggage"),
    "frisbee": ("flying disc",),
    "skis": ("ski",),
    "snowboard": ("snow board",),
    "sports ball": ("ball",),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("baseball mitt", "mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "bottle": (),
    "wine glass": ("glass", "wineglass", "wine glasses"),
    "cup": ("mug", "teacup", "coffee cup"),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "hamburger", "cheeseburger", "panini"),
    "orange": ("tangerine", "mandarin"),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog",),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake", "cheesecake"),
    "chair": ("stool", "armchair", "recliner", "high chair", "highchair"),
    "couch": ("sofa", "loveseat"),
    "potted plant": ("plant", "houseplant", "flower pot", "flowerpot", "planter"),
    "bed": (),
    "dining table": ("table", "desk", "kitchen table"),
    "toilet": (),
    "tv": ("television", "monitor", "computer monitor", "computer screen", "tv screen", "flat screen", "flatscreen"),
    "laptop": ("computer", "laptop computer"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller"),
    "keyboard": ("computer keyboard",),
    "cell phone": ("phone", "cellphone", "mobile phone", "smartphone", "smart phone", "iphone", "telephone"),
    "microwave": ("microwave oven",),
    "oven": ("stove", "stovetop", "stove top"),
    "toaster": ("toaster oven",),
    "sink": (),
    "refrigerator": ("fridge", "freezer"),
    "book": ("textbook", "paperback"),
    "clock": (),
    "vase": (),
    "scissors": ("scissor",),
    "teddy bear": ("teddy", "teddybear", "stuffed animal", "stuffed bear", "stuffed toy"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("tooth brush",),
}  # fmt: skip
