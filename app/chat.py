"""Streamlit image chat: one question, answered unguarded and guarded side by side.

    streamlit run app/chat.py                          # embedded tiny-coco model
    streamlit run app/chat.py -- --model llava-hf/llava-1.5-7b-hf
    streamlit run app/chat.py -- --sam facebook/sam-vit-base     (or a local SAM / SAM 2 directory: masks)

Environment: LVLM_GUARD_APP_MODEL (model when no --model), LVLM_GUARD_APP_WORLD (a COCO root
whose "test" split gives the sample images; default: the embedded world, built if missing),
LVLM_GUARD_APP_MAX_NEW_TOKENS (the slider's starting value, 160: tiny-coco's descriptions end by ~100).
Uploads: at most app/inputs.py's MAX_UPLOAD_MB, also Streamlit's limit (app/.streamlit/config.toml).
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
from app.inputs import MAX_UPLOAD_MB, UPLOAD_LABEL, check_prompt, read_image  # noqa: E402
from lvlm_guard.errors import GuardError, InterventionConfigError  # noqa: E402
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
        from lvlm_guard.embedded.world.coco_format import ensure_world

        root = str(ensure_world("test", progress=False))
    return objects.sample_images(Path(root), "test")


def method_controls() -> dict[str, dict[str, object]] | None:
    """Sidebar toggles, one per registered method with its one-line summary, and a widget per config
    field whose help says what it does and what it allows. None when a setting is invalid (its typed
    message is shown under the method)."""
    selected: dict[str, dict[str, object]] = {}
    valid = True
    st.sidebar.header("Guard methods")
    for name in available_methods():
        on = st.sidebar.toggle(session.method_title(name), key=f"use_{name}")
        st.sidebar.caption(session.method_summary(name))
        if not on:
            continue
        params: dict[str, object] = {}
        with st.sidebar.expander(f"{name} parameters"):
            try:
                for param in session.method_parameters(name):
                    params[param.name] = _parameter_widget(name, param)
                session.check_method(name, params)
            except InterventionConfigError as err:  # InvalidSettingError: the method, field, value, what is allowed
                st.error(str(err))
                valid = False
        selected[name] = params
    return selected if valid else None


def _parameter_widget(name: str, param: session.Parameter) -> object:
    key, label, help_text = f"{name}.{param.name}", param.name, param.help
    if param.widget == "checkbox":
        return st.checkbox(label, value=param.default, key=key, help=help_text)
    if param.widget == "int":
        return int(st.number_input(label, value=param.default, step=1, key=key, help=help_text))
    if param.widget == "float":
        return float(st.number_input(label, value=param.default, format="%.4g", key=key, help=help_text))
    if param.widget == "choice":
        return st.selectbox(label, param.choices, index=param.choices.index(param.default), key=key, help=help_text)
    raw = st.text_input(label, value=session.spec_value(param.default), key=key, help=help_text)
    return session.parse_parameter(name, param.name, raw)


def choose_image() -> tuple[Image.Image | None, frozenset[str] | None, str]:
    """The image to talk about, its ground-truth categories (samples only) and a key for it."""
    source = st.radio("Image", ["Sample from the embedded world", "Upload"], horizontal=True)
    if source == "Upload":
        upload = st.file_uploader(UPLOAD_LABEL, max_upload_size=MAX_UPLOAD_MB)
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


def show_answer(column, title: str, answer: session.Answer, truth: frozenset[str] | None) -> None:
    marks = objects.mark_objects(answer.text, truth)
    column.subheader(title)
    column.markdown(objects.marked_markdown(answer.text, marks) or "_(empty answer)_")
    note = session.cut_note(answer)
    if note:
        column.warning(note)
    if marks:
        names = [f"{m.category} ({m.status})" for m in marks]
        column.caption("Objects: " + "; ".join(names))


def queue_notice(slot):
    """`on_wait` for the session's lock: the queue message in `slot` while another request runs."""
    return lambda: slot.info(session.QUEUE_MESSAGE, icon="⏳")


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
    default_tokens = int(os.environ.get("LVLM_GUARD_APP_MAX_NEW_TOKENS", session.DEFAULT_MAX_NEW_TOKENS))
    max_new_tokens = st.sidebar.slider(
        "Max new tokens", 1, 512, default_tokens, key="max_new_tokens",
        help="Generation stops here if the answer has not ended; an answer cut there says so.",
    )  # fmt: skip
    selected = method_controls()
    if selected is None:
        st.warning("A guard setting is invalid (the message is in the sidebar): fix it to ask.")
        return
    spec = session.guard_spec(selected)
    st.sidebar.code(spec, language=None)

    image, truth, image_key = choose_image()
    if image is None:
        st.info("Choose a sample image or upload one.")
        return
    st.image(image, width=320)
    prompt = st.text_area("Question", value="Describe the image.", key="prompt")
    state = st.session_state
    asked = st.button("Ask", type="primary")
    # Two slots below the button, both emptied at the start of every run: a new question clears the
    # old answers at once (an element replaces their block) instead of leaving them greyed out while
    # the new ones stream, and the streaming slots go before the answers are drawn (a block drawn
    # over a block of the same type would keep its children).
    stream_area, result_area = st.empty(), st.empty()
    if asked:
        state.pop("result", None)
        state.pop("maps", None)
        try:
            question = check_prompt(prompt)
            session.guard_spec_check(spec)
        except GuardError as err:
            stream_area.warning(str(err))
            return
        finished: dict[str, session.Answer] = {}
        with stream_area.container():
            notice = st.empty()
            left, right = st.columns(2)
            slots = {session.UNGUARDED: left.empty(), session.GUARDED: right.empty()}
            try:
                events = session.stream_answers(
                    model, processor, spec, image, question, max_new_tokens, finished, queue_notice(notice)
                )
                for which, text in events:
                    notice.empty()
                    slots[which].markdown(f"**{which}**\n\n{text} ▌")
            except Exception as err:  # typed errors and anything else: a message, never a traceback
                st.error(f"Generation failed ({type(err).__name__}): {err}")
                return
        stream_area.empty()
        state["result"] = {"answers": finished, "key": image_key, "prompt": question, "spec": spec}
    result = state.get("result")
    if not result or result["key"] != image_key:
        return
    with result_area.container():
        left, right = st.columns(2)
        show_answer(left, "Unguarded", result["answers"][session.UNGUARDED], truth)
        show_answer(right, f"Guarded: {result['spec']}", result["answers"][session.GUARDED], truth)
        with st.expander("What the marks mean", expanded=True):
            st.markdown(objects.legend_markdown(truth is not None))
        attention_panel(model, processor, image, truth, result)


def attention_panel(model, processor, image, truth, result) -> None:
    """The chosen answer's word: attention flow with a colour bar, and VL-SAM beside it, both on the
    model that gave that answer (guard off for the unguarded answer, on for the guarded one)."""
    st.header("Where the model looks")
    which = st.radio("Answer", [session.UNGUARDED, session.GUARDED], horizontal=True, key="heat_answer")
    answer = result["answers"][which].text
    named = [answer[m.start : m.end] for m in objects.mark_objects(answer, truth) if m.start >= 0]
    words = list(dict.fromkeys([*named, *heatmap.answer_words(answer)]))
    if not words:
        st.info("This answer has no words to map.")
        return
    word = st.selectbox("Answer word (objects first; stop words left out)", words, key="heat_word")
    guarded_run = which == session.GUARDED
    maps = st.session_state.setdefault("maps", {})  # (kind, which, word) -> what was drawn; kept across reruns
    notice = st.empty()
    heat_col, sam_col = st.columns(2)
    sam_name = _sam_name()
    heat_clicked = heat_col.button("Show attention heatmap")
    locate_clicked = sam_col.button("VL-SAM: locate this word")
    segment_clicked = sam_name and sam_col.button("VL-SAM: segment this word with SAM")
    args = (model, processor, result["spec"], image)
    if heat_clicked:
        try:
            heat = session.word_heatmap(*args, result["prompt"], answer, word, guarded_run, queue_notice(notice))
            maps[("heat", which, word)] = (heatmap.overlay(image, heat), heatmap.heat_range(heat))
        except Exception as err:
            maps[("heat", which, word)] = f"No heatmap ({type(err).__name__}): {err}"
    if locate_clicked:
        try:
            found = session.locate_word(*args, word, guarded_run, queue_notice(notice))
            picture = heatmap.draw_point_box(heatmap.overlay(image, found.heatmap), found.point, found.box)
            maps[("sam", which, word)] = (picture, f"VL-SAM point {found.point} and box for {word!r} ({which})")
        except Exception as err:
            maps[("sam", which, word)] = f"VL-SAM failed ({type(err).__name__}): {err}"
    if segment_clicked:
        try:
            found = session.segment_word(*args, word, cached_sam(sam_name), guarded_run, queue_notice(notice))
            picture = heatmap.draw_mask(image, found.segmentation.mask.cpu().numpy())
            for point in found.segmentation.positives:
                picture = heatmap.draw_point_box(picture, point, found.segmentation.box or found.box)
            caption = f"SAM mask for {word!r} ({which}, score {found.segmentation.score:.2f})"
            maps[("sam", which, word)] = (picture, caption)
        except Exception as err:
            maps[("sam", which, word)] = f"SAM failed ({type(err).__name__}): {err}"
    notice.empty()
    drawn = maps.get(("heat", which, word))
    if isinstance(drawn, str):
        heat_col.error(drawn)
    elif drawn:
        picture, (low, high) = drawn
        heat_col.image(picture, caption=f"attention flow of {word!r} over the image ({which})", width=320)
        heat_col.image(heatmap.colorbar(low, high), caption="colour scale: attention flow, min to max", width=320)
    located = maps.get(("sam", which, word))
    if isinstance(located, str):
        sam_col.error(located)
    elif located:
        sam_col.image(located[0], caption=located[1], width=320)


main()
