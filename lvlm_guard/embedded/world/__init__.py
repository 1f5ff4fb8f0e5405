"""A synthetic COCO-format world: scenes, images, annotations, captions and instruction data.

No machine of the project reaches a model hub or COCO itself, so the project trains and evaluates
its packaged model on this world: COCO's categories, COCO's file formats, and COCO's habit of
putting the same objects together, which is what makes models hallucinate them.
"""

from __future__ import annotations

from lvlm_guard.embedded.world.categories import (
    CATEGORIES,
    COCO_CATEGORIES,
    SYNONYMS,
    Category,
    category,
    category_names,
)
from lvlm_guard.embedded.world.coco_format import (
    SPLITS,
    build_split,
    build_world,
    default_world_root,
    ensure_world,
    image_id,
)
from lvlm_guard.embedded.world.errors import UnknownCategoryError, UnknownSplitError, WorldError, WorldFormatError
from lvlm_guard.embedded.world.facts import ImageFacts, SeenObject, facts_from_files
from lvlm_guard.embedded.world.instructions import KINDS, Conversation, InstructionConfig, iter_conversations
from lvlm_guard.embedded.world.render import RenderConfig, RenderedImage, render_scene
from lvlm_guard.embedded.world.scenes import SCENE_TYPES, SamplingConfig, Scene, sample_scene

__all__ = [
    "CATEGORIES",
    "COCO_CATEGORIES",
    "KINDS",
    "SCENE_TYPES",
    "SPLITS",
    "SYNONYMS",
    "Category",
    "Conversation",
    "ImageFacts",
    "InstructionConfig",
    "RenderConfig",
    "RenderedImage",
    "SamplingConfig",
    "Scene",
    "SeenObject",
    "UnknownCategoryError",
    "UnknownSplitError",
    "WorldError",
    "WorldFormatError",
    "build_split",
    "build_world",
    "category",
    "category_names",
    "default_world_root",
    "ensure_world",
    "facts_from_files",
    "image_id",
    "iter_conversations",
    "render_scene",
    "sample_scene",
]
