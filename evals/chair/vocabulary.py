"""Which words name which COCO object: our synonym lists for CHAIR.

CHAIR (Rohrbach et al., EMNLP 2018, Sec. 3) maps caption words to the 80 COCO categories through
hand-made synonym lists, with rules for two-word names and for words that only describe another
noun. These lists are our own, written for the words that image descriptions actually use. Each
entry is written in the singular; plurals are handled by `evals.chair.lemma.singularize`.

Deliberately left out, because they name a COCO object too rarely compared with how often they
name something else: "seat" (car seats, bench seats), "glove" (ski gloves; "mitt" and "baseball
glove" are in), sport names used as nouns ("baseball", "football", "basketball": the game, not
the ball), "vehicle" (car, truck or bus), "notebook" (paper), "pitcher" (jug or player), "cycle",
"board". "glass" and "orange" are in, but not when they describe the next word ("glass door",
"orange shirt"), see `MODIFIER_USES`; "glasses" (plural) is eyewear unless "wine glasses".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evals.chair.lemma import singularize

#: COCO category name -> words and phrases that name it (the category name itself is added)
OBJECT_WORDS: dict[str, tuple[str, ...]] = {
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

#: phrases that contain an object word but name no COCO object
NON_OBJECT_PHRASES: tuple[str, ...] = (
    "flower bed", "river bed", "sea bed", "desktop computer", "ski lift", "chair lift", "toilet paper",
    "bird house", "bird feeder", "bird cage", "bus stop", "bus station", "train station", "train track",
    "train platform",
)  # fmt: skip

#: a word that names an object alone but, in the singular and followed by one of these words, only
#: describes that word ("glass door", "orange shirt", "ski slope", "baby elephant"); for the words in
#: `MODIFIES_OBJECTS` any following object word counts too ("glass vase", "baby elephant")
MODIFIER_USES: dict[str, frozenset[str]] = {
    "glass": frozenset(
        "door window wall top tabletop jar container case cabinet panel pane roof ceiling building front "
        "display shelf partition surface block railing".split()
    ),
    "orange": frozenset(
        "and or colored coloured color colour shirt jacket vest hat helmet cap cone sky sunset light glow sign "
        "stripe line roof wall background fur juice peel slice".split()
    ),
    "ski": frozenset(
        "slope pole lift resort jacket boot suit area trail run goggle mask gear hill lodge instructor".split()
    ),
    "remote": frozenset("area location place village region island setting road".split()),
    "bus": frozenset(["driver", "shelter", "lane", "route"]),
    "pizza": frozenset(["box", "cutter", "oven", "stone"]),
    "baby": frozenset(),
    "adult": frozenset(),
    "mother": frozenset(),
    "passenger": frozenset(),
}
MODIFIES_OBJECTS: frozenset[str] = frozenset({"glass", "orange", "baby", "adult", "mother", "passenger"})


class VocabularyError(ValueError):
    """The synonym lists name one phrase for two categories (a bug in the lists, caught at import)."""


def phrase_key(phrase: str) -> tuple[str, ...]:
    """A phrase as the tuple of singular tokens that captions are matched against."""
    return tuple(singularize(token) for token in phrase.lower().replace("-", " ").split())


def build_phrase_table(
    object_words: Mapping[str, Sequence[str]] = OBJECT_WORDS, non_objects: Sequence[str] = NON_OBJECT_PHRASES
) -> dict[tuple[str, ...], str | None]:
    """Singular token tuple -> COCO category (None: a phrase that names no object)."""
    table: dict[tuple[str, ...], str | None] = {}
    for category, words in object_words.items():
        for phrase in (category, *words):
            key = phrase_key(phrase)
            if table.get(key, category) != category:
                raise VocabularyError(f"{phrase!r} names both {table[key]!r} and {category!r}")
            table[key] = category
    for phrase in non_objects:
        key = phrase_key(phrase)
        if key in table:
            raise VocabularyError(f"non-object phrase {phrase!r} is also listed for {table[key]!r}")
        table[key] = None
    return table


PHRASE_TABLE: dict[tuple[str, ...], str | None] = build_phrase_table()
COCO_CATEGORY_NAMES: tuple[str, ...] = tuple(OBJECT_WORDS)
