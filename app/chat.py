"""Streamlit image chat: one question, answered unguarded and guarded side by side.

    streamlit run app/chat.py                          # embedded tiny-coco model
    streamlit run app/chat.py -- --model llava-hf/llava-1.5-7b-hf
    streamlit run app/chat.py -- --sam facebook/sam-vit-base     (or a local SAM / SAM 2 directory: masks)

Environment: LVLM_GUARD_APP_MODEL (model when no --model), LVLM_GUARD_APP_WORLD (a COCO root
whose "test" split gives the sample images; default: the embedded world, built if missing),
LVLM_GUARD_APP_MAX_NEW_TOKENS (the slider's starting value, 48).
Logic lives in the sibling modules (no streamlit import) so it is unit-tested on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts app/ first, not the repo

import streamlit as st  # noqa: E402
from PIL import Image  # noqa: E402

from app import heatmap, objects, session  # noqa: E402
from app.inputs import check_prompt, read_image  # noqa: E402
from lvlm_guard.errors import GuardError  # noqa: E402
from lvlm_guard.methods import available_methods  # noqa: E402


def _model_name() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=os.environ.get("LVLM_GUARD_APP_MODEL", session.DEFAULT_MODEL))
    return parser.parse_known_args(sys.argv[1:])[0].model


@st.cache_resource(show_spinner="Loading the model (once per process) ...")
def cached_model(name: str):
    return session.load_model(name)


def _sam_name() -> str | None:
    """`--sam` (or LVLM_GUARD_APP_SAM): a SAM / SAM 2 hub id or directory; without it no masks are drawn."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sam", default=os.environ.get("LVLM_GUARD_APP_SAM"))
    return parser.parse_known_args(sys.argv[1:])[0].sam


@st.cache_resource(show_spinner="Loading SAM (once per process) ...")
def cached_sam(name: str):
    return session.load_sam_runner(name)


@st.cache_resource(show_spinner="Preparing sample images ...")
def cached_samples(root: str | None) -> list[objects.SampleImage]:
    if root is None:
        from lvlm_guard.world.coco_format import ensure_world

        root = str(ensure_world("test", progress=False))
    return objects.sample_images(Path(root), "test")


def method_controls() -> dict[str, dict[str, object]]:
    """Sidebar toggles, one per registered method, with a widget per config field."""
    selected: dict[str, dict[str, object]] = {}
    st.sidebar.header("Guard methods")
    for name in available_methods():
        if not st.sidebar.toggle(name.upper(), key=f"use_{name}"):
            continue
        params: dict[str, object] = {}
        with st.sidebar.expander(f"{name} parameters"):
            for param in session.method_parameters(name):
                key = f"{name}.{param.name}"
                if isinstance(param.default, bool):
                    params[param.name] = st.checkbox(param.name, value=param.default, key=key)
                elif isinstance(param.default, int):
                    params[param.name] = int(st.number_input(param.name, value=param.default, step=1, key=key))
                elif isinstance(param.default, float):
                    params[param.name] = float(st.number_input(param.name, value=param.default, format="%.4g", key=key))
                elif param.default is None:
                    raw = st.text_input(f"{param.name} (empty: none)", value="", key=key).strip()
                    params[param.name] = raw or None
        selected[name] = params
    return selected


def choose_image() -> tuple[Image.Image | None, frozenset[str] | None, str]:
    """The image to talk about, its ground-truth categories (samples only) and a key for it."""
    source = st.radio("Image", ["Sample from the embedded world", "Upload"], horizontal=True)
    if source == "Upload":
        upload = st.file_uploader("An image (PNG, JPEG, WebP ...; at most 20 MB and 40 megapixels)")
        if upload is None:
            return None, None, ""
        try:
            return read_image(upload.getvalue(), upload.name), None, f"upload:{upload.file_id}"
        except GuardError as err:
            st.error(f"Cannot use this upload: {err}")
            return None, None, ""
    try:
        samples = cached_samples(os.environ.get("LVLM_GUARD_APP_WORLD"))
    except Exception as err:  # a page must not show a traceback; the message says what broke
        st.error(f"Sample images are unavailable: {err}")
        return None, None, ""
    labels = {f"{s.image_id} ({', '.join(sorted(s.objects))})": s for s in samples}
    sample = labels[st.selectbox("Sample image", list(labels))]
    return Image.open(sample.path).convert("RGB"), sample.objects, f"sample:{sample.image_id}"


def show_answer(column, title: str, text: str, truth: frozenset[str] | None) -> None:
    marks = objects.mark_objects(text, truth)
    column.subheader(title)
    column.markdown(objects.marked_markdown(text, marks) or "_(empty answer)_")
    if marks:
        names = [f"{m.category} ({m.status})" for m in marks]
        column.caption("Objects: " + "; ".join(names))


def main() -> None:
    st.set_page_config(page_title="lvlm_guard chat", layout="wide")
    st.title("lvlm_guard: guarded vs unguarded")
    name = _model_name()
    try:
        model, processor = cached_model(name)
    except Exception as err:
        st.error(f"Cannot load the model {name!r}: {err}")
        return
    st.sidebar.caption(f"Model: {name}")
    default_tokens = int(os.environ.get("LVLM_GUARD_APP_MAX_NEW_TOKENS", "48"))
    max_new_tokens = st.sidebar.slider("Max new tokens", 1, 256, default_tokens, key="max_new_tokens")
    try:
        spec = session.guard_spec(method_controls())
    except GuardError as err:
        st.sidebar.error(str(err))
        return
    st.sidebar.code(spec, language=None)

    image, truth, image_key = choose_image()
    if image is None:
        st.info("Choose a sample image or upload one.")
        return
    st.image(image, width=320)
    prompt = st.text_area("Question", value="Describe the image.", key="prompt")
    state = st.session_state
    if st.button("Ask", type="primary"):
        try:
            question = check_prompt(prompt)
            session.guard_spec_check(spec)
        except GuardError as err:
            st.warning(str(err))
            return
        left, right = st.columns(2)
        slots = {session.UNGUARDED: left.empty(), session.GUARDED: right.empty()}
        answers = {session.UNGUARDED: "", session.GUARDED: ""}
        try:
            for which, text in session.stream_answers(model, processor, spec, image, question, max_new_tokens):
                answers[which] = text
                slots[which].markdown(f"**{which}**\n\n{text} ▌")
        except Exception as err:  # typed errors and anything else: a message, never a traceback
            st.error(f"Generation failed ({type(err).__name__}): {err}")
            return
        for slot in slots.values():
            slot.empty()
        state["result"] = {"answers": answers, "key": image_key, "prompt": question, "spec": spec}
    result = state.get("result")
    if not result or result["key"] != image_key:
        return
    left, right = st.columns(2)
    show_answer(left, "Unguarded", result["answers"][session.UNGUARDED], truth)
    show_answer(right, f"Guarded: {result['spec']}", result["answers"][session.GUARDED], truth)
    attention_panel(model, processor, image, truth, result)


def attention_panel(model, processor, image, truth, result) -> None:
    st.header("Where the model looks")
    which = st.radio("Answer", [session.UNGUARDED, session.GUARDED], horizontal=True, key="heat_answer")
    answer = result["answers"][which]
    named = [answer[m.start : m.end] for m in objects.mark_objects(answer, truth) if m.start >= 0]
    words = list(dict.fromkeys([*named, *heatmap.answer_words(answer)]))
    if not words:
        st.info("This answer has no words to map.")
        return
    word = st.selectbox("Answer word (objects first)", words, key="heat_word")
    if st.button("Show attention heatmap"):
        try:
            heat = session.word_heatmap(
                model, processor, result["spec"], image, result["prompt"], answer, word, which == session.GUARDED
            )
            st.image(heatmap.overlay(image, heat), caption=f"attention flow of {word!r} over the image", width=320)
        except Exception as err:
            st.error(f"No heatmap ({type(err).__name__}): {err}")
    if session.has_vlsam() and st.button("VL-SAM: locate this word"):
        try:
            found = session.locate_word(model, processor, result["spec"], image, word)
            picture = heatmap.draw_point_box(heatmap.overlay(image, found.heatmap), found.point, found.box)
            st.image(picture, caption=f"VL-SAM point {found.point} and box for {word!r}", width=320)
        except Exception as err:
            st.error(f"VL-SAM failed ({type(err).__name__}): {err}")
    sam_name = _sam_name()
    if session.has_vlsam() and sam_name and st.button("VL-SAM: segment this word with SAM"):
        try:
            found = session.segment_word(model, processor, result["spec"], image, word, cached_sam(sam_name))
            picture = heatmap.draw_mask(image, found.segmentation.mask.cpu().numpy())
            for point in found.segmentation.positives:
                picture = heatmap.draw_point_box(picture, point, found.segmentation.box or found.box)
            st.image(picture, caption=f"SAM mask for {word!r} (score {found.segmentation.score:.2f})", width=320)
        except Exception as err:
            st.error(f"SAM failed ({type(err).__name__}): {err}")


main()
