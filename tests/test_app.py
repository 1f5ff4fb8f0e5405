"""The Streamlit chat: logic modules against references, and the page through streamlit's AppTest."""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

pytest.importorskip("streamlit")

from app import heatmap, inputs, objects, session  # noqa: E402
from lvlm_guard.errors import ImageInputError, InputMismatchError, InterventionConfigError  # noqa: E402

TOKENS = 4  # answers are cut short: the tests check plumbing, not answer quality


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_and_processor():
    return session.load_model("tiny-coco")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lvlm_guard.embedded.world import build_world

    return build_world(tmp_path_factory.mktemp("app_world"), seed=0, sizes={"test": 3}, workers=1, progress=False)


@pytest.fixture(scope="module")
def sample(world):
    first = objects.sample_images(world)[0]
    return Image.open(first.path).convert("RGB"), first.objects


# --- inputs ---------------------------------------------------------------------------------------
def test_read_image_accepts_png_and_returns_rgb():
    image = inputs.read_image(_png(5, 3))
    assert image.size == (5, 3) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "needle"),
    [(b"", "empty"), (b"not an image at all", "not an image"), (b"x" * (inputs.MAX_UPLOAD_BYTES + 1), "MB")],
)
def test_read_image_rejects_bad_uploads(data, needle):
    with pytest.raises(ImageInputError, match=needle):
        inputs.read_image(data, "f.bin")


def test_read_image_refuses_too_many_pixels_before_decoding(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_PIXELS", 99)
    with pytest.raises(ImageInputError, match="megapixels"):
        inputs.read_image(_png(10, 10))
    assert inputs.read_image(_png(9, 11)).size == (9, 11)


def test_check_prompt():
    assert inputs.check_prompt("  hi \n") == "hi"
    for bad in ("", "   \n", None):
        with pytest.raises(inputs.PromptInputError):
            inputs.check_prompt(bad)


# --- objects ----------------------------------------------------------------------------------------
def test_mark_objects_flags_against_ground_truth_and_spans_match():
    answer = "Two people stand near a Traffic light; two hot dogs and a car."
    marks = objects.mark_objects(answer, frozenset({"person", "car"}))
    assert [(m.category, m.status) for m in marks] == [
        ("person", objects.PRESENT),
        ("traffic light", objects.HALLUCINATED),
        ("hot dog", objects.HALLUCINATED),
        ("car", objects.PRESENT),
    ]
    assert [answer[m.start : m.end] for m in marks] == ["people", "Traffic light", "hot dogs", "car"]
    text = objects.marked_markdown(answer, marks)
    assert ":red-background[~~Traffic light~~]" in text and ":green-background[people]" in text


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("No, there is no bus in the image.", [("bus", objects.DENIED_ABSENT)]),  # a correct "no": not struck
        ("No, there is a bus.", [("bus", objects.HALLUCINATED)]),  # the particle does not deny the bus
        ("Yes, there is a cat.", [("cat", objects.PRESENT)]),
        ("There isn't a cat here.", [("cat", objects.DENIED_PRESENT)]),
        ("There is no dog, but a cat sleeps.", [("dog", objects.DENIED_ABSENT), ("cat", objects.PRESENT)]),
        ("The room has no chairs or tables. A dog sleeps.",
         [("chair", objects.DENIED_ABSENT), ("dining table", objects.DENIED_ABSENT), ("dog", objects.HALLUCINATED)]),
        ("A man without a hat rides a bicycle.", [("person", objects.PRESENT), ("bicycle", objects.PRESENT)]),
        ("A cat. There are no people nearby.", [("cat", objects.PRESENT), ("person", objects.DENIED_PRESENT)]),
    ],
)  # fmt: skip
def test_negated_mentions_are_read_as_denials(answer, expected):
    marks = objects.mark_objects(answer, frozenset({"cat", "bicycle", "person"}))
    assert [(m.category, m.status) for m in marks] == expected
    text = objects.marked_markdown(answer, marks)
    assert ("~~" in text) == any(status == objects.HALLUCINATED for _, status in expected)
    assert set(objects.LEGEND) >= {status for _, status in expected}


def test_mark_objects_without_ground_truth_flags_nothing():
    marks = objects.mark_objects("a dog on a sofa", None)
    assert [m.category for m in marks] == ["dog", "couch"]
    assert {m.status for m in marks} == {objects.UNCHECKED}


def test_sample_images_carry_annotated_categories(world):
    import json

    samples = objects.sample_images(world)
    data = json.loads((world / "annotations" / "instances_test.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    for s in samples:
        want = {names[a["category_id"]] for a in data["annotations"] if a["image_id"] == s.image_id}
        assert s.objects == want and s.path.is_file()


# --- heatmap ----------------------------------------------------------------------------------------
def test_overlay_matches_float64_blend():
    import matplotlib

    image = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    heat = torch.rand(4, 6, dtype=torch.float64)
    got = np.asarray(heatmap.overlay(image, heat, alpha=0.3), dtype=np.float64)
    h = heat.numpy()
    scaled = (h - h.min()) / (h.max() - h.min())
    want = 0.7 * np.asarray(image) / 255 + 0.3 * matplotlib.colormaps["jet"](scaled)[..., :3]
    assert np.abs(got - np.round(want * 255)).max() <= 1


def test_overlay_resizes_and_rejects_bad_maps():
    image = Image.new("RGB", (8, 6))
    assert heatmap.overlay(image, torch.rand(3, 4)).size == (8, 6)
    flat = np.asarray(heatmap.overlay(image, torch.ones(6, 8), alpha=1.0))
    assert (flat == flat[0, 0]).all()  # a constant map is one colour, not NaN
    with pytest.raises(InputMismatchError):
        heatmap.overlay(image, torch.rand(2, 3, 4))
    with pytest.raises(InputMismatchError):
        heatmap.overlay(image, torch.rand(6, 8), alpha=2)


def test_answer_words_distinct_in_order_without_stop_words():
    assert heatmap.answer_words("A dog, a cat and a dog.") == ["dog", "cat"]
    answer = "No, there is no pizza in the image. A TV can be seen near the top of the picture."
    assert heatmap.answer_words(answer) == ["pizza", "TV", "top"]
    assert heatmap.answer_words("It is in the image.") == []


def test_colorbar_runs_from_the_lowest_to_the_highest_colour():
    import matplotlib

    bar = np.asarray(heatmap.colorbar(0.25, 4.0, width=300), dtype=np.float64)
    assert bar.shape[1] == 300 and bar.shape[2] == 3
    jet = matplotlib.colormaps["jet"]
    for end in (0.0, 1.0):  # both ends of the map's colours are drawn
        colour = np.asarray(jet(end)[:3]) * 255
        assert np.abs(bar - colour).sum(axis=-1).min() < 12
    heat = torch.tensor([[0.5, 2.0], [1.0, 0.25]])
    assert heatmap.heat_range(heat) == (0.25, 2.0)


def test_legend_covers_every_status_as_the_answers_draw_it():
    statuses = {objects.PRESENT, objects.HALLUCINATED, objects.UNCHECKED, objects.DENIED_ABSENT,
                objects.DENIED_PRESENT, objects.DENIED}  # fmt: skip
    assert set(objects.LEGEND) == statuses
    known, upload = objects.legend_markdown(True), objects.legend_markdown(False)
    for status in statuses:
        line = known if status not in (objects.UNCHECKED, objects.DENIED) else upload
        assert objects.LEGEND[status] in line
        assert objects.styled(status, status) in line  # drawn as an answer's mention of that status is
    assert known.count("~~") == 2 and "~~" not in upload  # only "hallucinated" is struck through
    no_bus = objects.mark_objects("No, there is no bus in the image.", frozenset({"car"}))
    assert objects.styled("bus", no_bus[0].status) in objects.marked_markdown(
        "No, there is no bus in the image.", no_bus
    )
    assert ":green-background[*correctly denied*]" in known


# --- session ----------------------------------------------------------------------------------------
def test_method_titles_and_summaries_say_what_each_guard_is():
    import lvlm_guard as lg
    from lvlm_guard.methods.base import method_class

    assert session.method_title("pai") == "PAI — Paying More Attention to Image"
    assert session.method_title("var") == "VAR — Visual Attention Redistribution"
    for name in lg.available_methods():
        title, summary = session.method_title(name), session.method_summary(name)
        assert " — " in title and len(summary) > 40 and "\n" not in summary
        assert ("speed method" in title) == (method_class(name).purpose == "speed")
    assert "Speed method" in session.method_summary("exit") and "ECCV 2024" in session.method_summary("pai")


def test_field_docs_read_the_trailing_comments_of_the_source():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        alpha: float = 0.5  # how much more the image counts
        # a comment line of its own is no field's documentation
        layers: tuple[int, ...] | None = None  # "#" inside a string is not a comment start: "a#b"
        plain: int = 3

        def method(self) -> int:
            inner: int = 1  # a local variable, not a field
            return inner

    docs = session.field_docs(Config)
    assert docs == {
        "alpha": "how much more the image counts",
        "layers": '"#" inside a string is not a comment start: "a#b"',
    }


def test_parameter_help_says_what_the_field_does_and_its_range():
    import lvlm_guard as lg
    from lvlm_guard.methods.base import method_class
    from lvlm_guard.methods.settings import describe_setting

    for name in lg.available_methods():
        for param in session.method_parameters(name):
            assert describe_setting(method_class(name), param.name) in param.help
            assert param.doc and param.doc in param.help, (name, param.name)  # every field is documented
    tau = {p.name: p for p in session.method_parameters("var")}["tau"]
    assert tau.help.startswith("constants.py: sink threshold") and "Allowed: a number, > 0" in tau.help
    widgets = {p.name: p.widget for p in session.method_parameters("vhr")}
    assert widgets == {"alpha": "float", "preset": "text", "early_layers": "text", "last_share": "text",
                       "explicit_layers": "text", "prompt_rows": "choice"}  # fmt: skip


def test_typed_values_are_parsed_and_bad_ones_get_the_typed_message():
    from lvlm_guard.errors import InvalidSettingError

    assert session.parse_parameter("exit", "layer", " 3 ") == 3
    assert session.parse_parameter("exit", "layer", "none") is None
    assert session.parse_parameter("vhr", "explicit_layers", "2;3") == (2, 3)
    with pytest.raises(
        InvalidSettingError, match=r"exit: layer='abc' is not allowed; layer must be an integer or none"
    ):
        session.parse_parameter("exit", "layer", "abc")
    with pytest.raises(InvalidSettingError, match=r"var: tau=-1.0 is not allowed; tau must be > 0"):
        session.check_method("var", {"tau": -1.0})
    session.check_method("var", {"tau": 5.0})
    spec = session.guard_spec({"vhr": {"explicit_layers": (2, 3), "alpha": 2.5}, "exit": {"layer": 4}})
    assert spec == "vhr:explicit_layers=2;3:alpha=2.5,exit:layer=4"
    vhr, exit_ = __import__("lvlm_guard").parse_guard_spec(spec)
    assert vhr.explicit_layers == (2, 3) and vhr.alpha == 2.5 and exit_.layer == 4


def test_cut_note_only_when_the_limit_stopped_the_answer():
    assert session.was_cut(48, 48) and not session.was_cut(47, 48)
    assert session.cut_note(session.Answer("a b", 12, 160)) is None
    note = session.cut_note(session.Answer("a b", 48, 48))
    assert note.startswith("Cut at 48 tokens")
    assert session.DEFAULT_MAX_NEW_TOKENS >= 160  # tiny-coco's longest description of 24: 103 tokens


def test_upload_limit_is_one_number_in_config_label_and_check():
    import tomllib

    config = tomllib.loads((REPO / "app" / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == inputs.MAX_UPLOAD_MB
    assert inputs.MAX_UPLOAD_BYTES == inputs.MAX_UPLOAD_MB * 1024 * 1024  # Streamlit's MB
    assert f"at most {inputs.MAX_UPLOAD_MB} MB" in inputs.UPLOAD_LABEL
    with pytest.raises(ImageInputError, match=f"the limit is {inputs.MAX_UPLOAD_MB} MB"):
        inputs.read_image(b"x" * (inputs.MAX_UPLOAD_BYTES + 1))


def test_holding_calls_on_wait_only_when_the_lock_is_taken():
    lock, calls = threading.Lock(), []
    with session.holding(lock, lambda: calls.append("wait")):
        assert lock.locked()
    assert calls == [] and not lock.locked()
    lock.acquire()
    waiter = threading.Thread(target=lambda: session.holding(lock, lambda: calls.append("wait")).__enter__())
    waiter.start()
    time_limit = 50
    while not calls and time_limit:
        threading.Event().wait(0.1)
        time_limit -= 1
    assert calls == ["wait"] and waiter.is_alive()  # told to wait, and waiting
    lock.release()
    waiter.join(5)
    assert not waiter.is_alive()


def test_queue_message_while_another_request_holds_the_model(model_and_processor, sample):
    model, processor = model_and_processor
    image, _ = sample
    waited, results = threading.Event(), []
    lock = session.model_lock(model)
    lock.acquire()  # another visitor's request
    try:
        request = threading.Thread(
            target=lambda: results.extend(
                session.stream_answers(model, processor, "none", image, "Describe the image.", TOKENS, None, waited.set)
            )
        )
        request.start()
        assert waited.wait(30) and not results  # the queue message came, and nothing ran yet
    finally:
        lock.release()
    request.join(120)
    assert results and "waiting for another request to finish" in session.QUEUE_MESSAGE.lower()


def test_generation_workers_set_their_threads(model_and_processor, sample, monkeypatch):
    model, processor = model_and_processor
    image, _ = sample
    calls = []
    monkeypatch.setattr(
        session, "configure_threads", lambda workers, reserve: calls.append((threading.current_thread(), (workers, reserve)))
    )
    finished: dict = {}
    list(session.stream_answers(model, processor, "none", image, "Describe the image.", TOKENS, finished))
    workers = [t for t, _ in calls if t is not threading.current_thread()]
    expected = (session.GENERATING_WORKERS, session.SERVER_CPUS)  # one CPU left to the server
    assert len(workers) == 2 and all(w == expected for _, w in calls)  # both answers' workers
    assert all(a.tokens == TOKENS and a.cut for a in finished.values())  # a description is longer than 4 tokens


def test_method_parameters_and_guard_spec_cover_every_method():
    import dataclasses

    import lvlm_guard as lg
    from lvlm_guard.methods.base import method_class

    for name in lg.available_methods():
        params = session.method_parameters(name)
        assert {p.name for p in params} <= {f.name for f in dataclasses.fields(method_class(name))}
        assert session.guard_spec({name: {p.name: p.default for p in params}}) == name
    assert session.guard_spec({}) == "none"
    spec = session.guard_spec({"pai": {"alpha": 0.5, "gamma": None}})
    assert spec == "pai:alpha=0.5:gamma=none"
    (pai,) = lg.parse_guard_spec(spec)
    assert pai.alpha == 0.5 and pai.gamma is None
    with pytest.raises(InterventionConfigError):
        session.guard_spec_check("pai:alpha=-1")


def test_stream_answers_grow_and_match_plain_guard_generate(model_and_processor, sample):
    import lvlm_guard as lg

    model, processor = model_and_processor
    image, _ = sample
    spec, prompt = "pai:alpha=1.0:gamma=none", "Describe the image."
    events = list(session.stream_answers(model, processor, spec, image, prompt, TOKENS))
    final = dict(events)
    assert all(final[which].startswith(text) for which, text in events)  # each update extends the last
    assert [w for w, _ in events].index(session.GUARDED) > 0  # unguarded streams first
    assert len(events) > 2  # more than one update per answer: streamed, not all at once
    guard = lg.attach(model, processor, lg.parse_guard_spec(spec))
    try:
        want_guarded = guard.generate([image], [prompt], max_new_tokens=TOKENS).texts[0]
        with guard.disabled():
            want_plain = guard.generate([image], [prompt], max_new_tokens=TOKENS).texts[0]
    finally:
        guard.detach()
    assert final == {session.GUARDED: want_guarded, session.UNGUARDED: want_plain}
    assert not hasattr(model, "_lvlm_guard")  # detached after the request


def test_concurrent_requests_equal_sequential(model_and_processor, sample):
    model, processor = model_and_processor
    image, _ = sample
    specs = ["pai:alpha=1.0:gamma=none", "none"]
    sequential = [session.answer_pair(model, processor, s, image, "Describe the image.", TOKENS) for s in specs]
    results: list = [None, None]
    errors: list = []

    def run(i: int) -> None:
        try:
            results[i] = session.answer_pair(model, processor, specs[i], image, "Describe the image.", TOKENS)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == sequential


def test_locate_word_runs_on_the_chosen_answers_model(model_and_processor, sample):
    model, processor = model_and_processor
    image, _ = sample
    args = (model, processor, "pai:alpha=2.0:gamma=none", image, "person")
    plain, edited = session.locate_word(*args, guarded_run=False), session.locate_word(*args, guarded_run=True)
    assert plain.heatmap.shape == (image.height, image.width)
    assert not torch.allclose(plain.heatmap, edited.heatmap)  # the guarded answer's word: the guarded model


def test_word_heatmap_shape_and_guard_changes_it(model_and_processor, sample):
    model, processor = model_and_processor
    image, _ = sample
    answer = "There is a person."
    args = (model, processor, "pai:alpha=2.0:gamma=none", image, "Describe the image.", answer, "person")
    plain = session.word_heatmap(*args, guarded_run=False)
    edited = session.word_heatmap(*args, guarded_run=True)
    assert plain.shape == (image.height, image.width)
    assert torch.isfinite(plain).all() and not torch.allclose(plain, edited)
    with pytest.raises(InputMismatchError):
        session.word_heatmap(*args[:-1], "giraffe", guarded_run=False)


# --- the page (AppTest) -----------------------------------------------------------------------------
@pytest.fixture
def page(world, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LVLM_GUARD_APP_WORLD", str(world))
    monkeypatch.setenv("LVLM_GUARD_APP_MODEL", "tiny-coco")
    at = AppTest.from_file(str(REPO / "app" / "chat.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert at.sidebar.slider(key="max_new_tokens").value == session.DEFAULT_MAX_NEW_TOKENS
    at.sidebar.slider(key="max_new_tokens").set_value(TOKENS)
    return at


def test_page_answers_twice_and_flags_objects(page):
    at = page
    at.sidebar.slider(key="max_new_tokens").set_value(3 * TOKENS)  # long enough to name a word worth mapping
    at.sidebar.toggle(key="use_pai").set_value(True).run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    subheaders = [s.value for s in at.subheader]
    assert subheaders[0].startswith("Unguarded") and subheaders[1].startswith("Guarded: pai")
    assert any(w.value.startswith(f"Cut at {3 * TOKENS} tokens") for w in at.warning)  # 12 tokens cut a description
    assert any(objects.LEGEND[objects.PRESENT] in m.value for m in at.markdown)  # the legend
    at.button[1].click().run()  # heatmap of the first word
    assert not at.exception and not at.error
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("attention flow of") for c in captions), captions
    assert any(c.startswith("colour scale") for c in captions), captions
    at.button[2].click().run()  # VL-SAM beside the heatmap, which stays
    captions = [c for img in at.image for c in img.captions]
    assert not at.exception and not at.error
    assert any(c.startswith("VL-SAM point") for c in captions) and any(
        c.startswith("attention flow of") for c in captions
    )


def test_page_describes_guards_and_shows_typed_setting_errors(page):
    at = page
    assert at.sidebar.slider(key="max_new_tokens").max >= 256
    labels = {t.key: t.label for t in at.sidebar.toggle}
    assert labels["use_pai"] == "PAI — Paying More Attention to Image" and "speed method" in labels["use_exit"]
    assert any("ECCV 2024" in c.value for c in at.sidebar.caption)
    at.sidebar.toggle(key="use_exit").set_value(True).run()
    layer = at.sidebar.text_input(key="exit.layer")
    assert "Allowed: an integer or none, >= 0" in layer.help
    layer.input("abc").run()
    assert not at.exception
    errors = [e.value for e in at.sidebar.error]
    assert errors == ["exit: layer='abc' is not allowed; layer must be an integer or none"], errors
    assert not at.button  # no asking with a bad setting
    at.sidebar.text_input(key="exit.layer").input("2").run()
    assert not at.sidebar.error and at.sidebar.code[0].value == "exit:layer=2"
    at.sidebar.toggle(key="use_var").set_value(True).run()
    at.sidebar.number_input(key="var.tau").set_value(-1.0).run()
    assert [e.value for e in at.sidebar.error] == ["var: tau=-1.0 is not allowed; tau must be > 0"]


def test_page_empty_prompt_warns(page):
    at = page
    at.text_area(key="prompt").input("   ").run()
    at.button[0].click().run()
    assert not at.exception
    assert [w.value for w in at.warning] and "empty" in at.warning[0].value


def test_page_bad_uploads_show_errors(page, monkeypatch):
    at = page
    at.radio[0].set_value("Upload").run()
    uploader = at.get("file_uploader")[0].proto  # the page states and enforces the same limit
    assert uploader.max_upload_size_mb == inputs.MAX_UPLOAD_MB and uploader.label == inputs.UPLOAD_LABEL
    at.file_uploader[0].set_value(("notes.txt", b"hello", "text/plain")).run()
    assert not at.exception and "not an image" in at.error[0].value
    monkeypatch.setattr(inputs, "MAX_PIXELS", 50)
    at.file_uploader[0].set_value(("big.png", _png(10, 10), "image/png")).run()
    assert not at.exception and "megapixels" in at.error[0].value


def test_sam_masks_for_a_word_and_their_overlay(tmp_path):
    """The page's SAM path: a SAM checkpoint directory loads through `load_sam_runner`, the mask comes
    back at the image's size, and the overlay changes exactly the masked pixels (float64 reference)."""
    import numpy as np
    from PIL import Image
    from test_vlsam import tiny_sam
    from tiny_models import tiny_llava

    from app import heatmap, session

    sam_model, sam_processor = tiny_sam()
    sam_model.save_pretrained(tmp_path / "sam")
    sam_processor.save_pretrained(tmp_path / "sam")
    runner = session.load_sam_runner(str(tmp_path / "sam"))
    model, processor = tiny_llava()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 40, 3), dtype=np.uint8))
    found = session.segment_word(model, processor, "none", image, "dog", runner)
    mask = found.segmentation.mask.cpu().numpy()
    assert mask.shape == (36, 40) and mask.dtype == bool
    mask = np.zeros((36, 40), dtype=bool)
    mask[5:20, 10:30] = True
    out = np.asarray(heatmap.draw_mask(image, mask, color=(0, 200, 255), alpha=0.5), dtype=np.float64)
    base = np.asarray(image, dtype=np.float64)
    expected = np.where(mask[..., None], 0.5 * base + 0.5 * np.array([0, 200, 255.0]), base)
    assert np.abs(out - np.rint(expected)).max() <= 1
    assert np.array_equal(out[~mask], base[~mask])
