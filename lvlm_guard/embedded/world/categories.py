"""The object categories of the synthetic world, under COCO's own names, ids and supercategories.

The world draws a subset of COCO's 80 categories. Keeping COCO's ids and names means the COCO-format
files we write can be scored by the same code that scores real COCO (CHAIR, POPE), and questions
written for COCO ("Is there a dining table in the image?") mean the same thing here.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvlm_guard.embedded.world.errors import UnknownCategoryError

#: COCO 2014/2017 detection categories: (id, name, supercategory). Ids skip the 11 ids that the
#: COCO paper reserved but never annotated (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91).
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (67, "dining table", "furniture"),
    (70, "toilet", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)

_COCO_BY_NAME = {name: (cid, supercategory) for cid, name, supercategory in COCO_CATEGORIES}


@dataclass(frozen=True)
class Category:
    """One drawable category: COCO identity plus how big it is drawn and where it stands.

    `size` is the object's longer side as a fraction of the image side (min, max); the smallest
    ones come close to one 16-px patch of a 224-px image. `aspect` is width / height.
    `layer` says where it is placed: "ground" (stands on the floor or road), "surface" (lies on a
    table or desk), "wall" (hangs high), "air" (flies) or "support" (a table or couch that other
    objects stand on or in front of).
    """

    id: int
    name: str
    supercategory: str
    size: tuple[float, float]
    aspect: float
    layer: str
    plural: str


def _cat(name: str, size: tuple[float, float], aspect: float, layer: str, plural: str | None = None) -> Category:
    cid, supercategory = _COCO_BY_NAME[name]
    return Category(cid, name, supercategory, size, aspect, layer, plural or name + "s")


#: the categories the world draws, in COCO id order; sizes are our own choice for a 224-px image
CATEGORIES: tuple[Category, ...] = (
    _cat("person", (0.22, 0.55), 0.42, "ground", "people"),
    _cat("bicycle", (0.20, 0.42), 1.6, "ground"),
    _cat("car", (0.22, 0.50), 2.0, "ground"),
    _cat("bus", (0.40, 0.75), 2.4, "ground", "buses"),
    _cat("truck", (0.32, 0.62), 1.9, "ground"),
    _cat("traffic light", (0.14, 0.32), 0.38, "wall"),
    _cat("fire hydrant", (0.08, 0.20), 0.6, "ground"),
    _cat("stop sign", (0.12, 0.28), 0.55, "ground"),
    _cat("bench", (0.22, 0.45), 2.2, "ground", "benches"),
    _cat("bird", (0.06, 0.16), 1.4, "air"),
    _cat("cat", (0.14, 0.34), 1.3, "ground"),
    _cat("dog", (0.16, 0.38), 1.35, "ground"),
    _cat("umbrella", (0.16, 0.36), 1.1, "ground"),
    _cat("bottle", (0.08, 0.26), 0.32, "surface"),
    _cat("wine glass", (0.08, 0.20), 0.45, "surface", "wine glasses"),
    _cat("cup", (0.06, 0.16), 1.0, "surface"),
    _cat("fork", (0.07, 0.22), 0.22, "surface"),
    _cat("knife", (0.08, 0.24), 0.18, "surface", "knives"),
    _cat("spoon", (0.07, 0.20), 0.24, "surface"),
    _cat("bowl", (0.10, 0.26), 1.8, "surface"),
    _cat("banana", (0.08, 0.20), 1.7, "surface"),
    _cat("apple", (0.06, 0.13), 1.0, "surface"),
    _cat("pizza", (0.16, 0.36), 1.0, "surface"),
    _cat("cake", (0.14, 0.30), 1.2, "surface"),
    _cat("chair", (0.20, 0.42), 0.7, "ground"),
    _cat("couch", (0.45, 0.80), 2.1, "support", "couches"),
    _cat("potted plant", (0.16, 0.38), 0.7, "ground"),
    _cat("dining table", (0.50, 0.90), 2.0, "support"),
    _cat("tv", (0.24, 0.46), 1.5, "wall"),
    _cat("laptop", (0.20, 0.40), 1.25, "surface"),
    _cat("mouse", (0.05, 0.11), 0.7, "surface", "mice"),
    _cat("remote", (0.07, 0.18), 0.3, "surface"),
    _cat("keyboard", (0.22, 0.46), 3.0, "surface"),
    _cat("cell phone", (0.06, 0.14), 0.5, "surface"),
    _cat("book", (0.09, 0.22), 0.75, "surface"),
    _cat("clock", (0.09, 0.22), 1.0, "wall"),
    _cat("vase", (0.10, 0.24), 0.55, "surface"),
)

_BY_NAME = {c.name: c for c in CATEGORIES}
_BY_ID = {c.id: c for c in CATEGORIES}

#: words that real COCO captions use for our categories, beyond the category name itself; the
#: captions use some of them, so scorers that map caption words to categories (CHAIR) need them
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "people", "pedestrian"),
    "bicycle": ("bike",),
    "couch": ("sofa",),
    "tv": ("television",),
    "cell phone": ("phone", "cellphone"),
    "dining table": ("table",),
    "potted plant": ("plant", "houseplant"),
    "wine glass": ("glass",),
    "cup": ("mug",),
    "laptop": ("computer",),
}


def category(name_or_id: str | int) -> Category:
    """The world category with this COCO name or id."""
    found = _BY_ID.get(name_or_id) if isinstance(name_or_id, int) else _BY_NAME.get(name_or_id)
    if found is None:
        raise UnknownCategoryError(f"{name_or_id!r} is not a category of the synthetic world")
    return found


def category_names() -> tuple[str, ...]:
    """Names of every drawable category, in COCO id order."""
    return tuple(c.name for c in CATEGORIES)


def with_article(name: str) -> str:
    """'a dog', 'an apple', 'an umbrella'."""
    return ("an " if name[0] in "aeiou" else "a ") + name
