"""The web page at /ui/: a real headless Chromium against a real ``bentoml serve``. What the page relies on (the
API options, the static route) is tested in-process: tests/integration/test_web_api.py.

The browser tests need Playwright for Python (the ``dev`` extra) and a Chromium binary (Debian's ``chromium``;
.ci/run installs it); without them they are skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from fashion.backends import BACKENDS
from fashion.contract import CLASS_NAMES
from fashion.imaging import decode_image
from fashion.manifest import read_manifest
from fashion.samples import sample_paths
from tests.helpers import model_dir, offline_probabilities
from tests.screenshots import DESKTOP, PHONE, find_chromium, load, open_page, show_example

REPO = Path(__file__).resolve().parents[2]
TROUSER, ANKLE_BOOT = sample_paths()[1], sample_paths()[9]


# ---------- the page in a real browser ----------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install "
                                   "-e '.[dev]')")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium binary (apt-get install chromium); Playwright's own download is not used")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    """The loaded page at desktop width; afterwards, no script error or policy violation happened and every
    request went to the service itself."""
    opened, requested, errors = browser.new_page(viewport=DESKTOP), [], []
    opened.on("request", lambda request: requested.append(request.url))
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # Refused uploads log "Failed to load resource" on purpose; a policy violation must not happen at all.
    opened.on("console", lambda message: errors.extend([message.text] * ("Content Security Policy" in message.text)))
    yield load(opened, server)
    opened.close()
    assert not errors
    assert requested and all(url.startswith(f"{server}/") for url in requested), requested


def shown_probabilities(page) -> np.ndarray:
    bars = page.locator("#probs g.bar")
    assert bars.count() == 10
    return np.array([float(bars.nth(i).get_attribute("data-value")) for i in range(10)])


@pytest.mark.parametrize("path", [TROUSER, ANKLE_BOOT], ids=["trouser", "ankle-boot"])
def test_uploaded_test_image_shows_the_offline_models_answer(page, exported, path, tmp_path):
    expected = offline_probabilities(exported, "onnx-torch", path)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#label") == CLASS_NAMES[expected.argmax()]
    assert page.inner_text("#shown-backend") == "onnx-torch"
    assert page.inner_text("#version") == read_manifest(model_dir(exported, "onnx-torch"))["version"]
    assert page.inner_text("#latency").endswith("ms (round trip measured in this browser)")
    np.testing.assert_allclose(shown_probabilities(page), expected, atol=1e-5)
    assert page.locator("#probs g.bar.strong").get_attribute("data-key") == str(expected.argmax())
    drawn = page.evaluate("() => Array.from(document.getElementById('input28').getContext('2d')"
                          ".getImageData(0, 0, 28, 28).data)")
    rgba = np.array(drawn, dtype=np.uint8).reshape(28, 28, 4)
    assert np.array_equal(rgba[..., 0], decode_image(path.read_bytes()))
    page.screenshot(path=str(tmp_path / f"{path.stem}.png"), full_page=True)
    assert (tmp_path / f"{path.stem}.png").stat().st_size > 10_000


def test_a_phone_photo_shows_the_28_by_28_view_the_model_saw(page):
    """The chooser takes any image (so a phone offers its camera), and a photo stored sideways with an EXIF
    orientation tag is shown as the model saw it: turned upright, trimmed and negated."""
    import io

    from PIL import Image

    assert page.get_attribute("#file", "accept") == "image/*"
    photo = np.full((160, 120, 3), 255, dtype=np.uint8)
    photo[20:140, 30:55], photo[115:140, 55:95] = 0, 60  # an asymmetric L: a wrong turn would show
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter clockwise: the viewer turns it back
    buffer = io.BytesIO()
    Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    page.set_input_files("#file", files=[{"name": "phone.jpg", "mimeType": "image/jpeg", "buffer": buffer.getvalue()}])
    page.wait_for_selector("#result:not([hidden])")
    drawn = page.evaluate("() => Array.from(document.getElementById('input28').getContext('2d')"
                          ".getImageData(0, 0, 28, 28).data)")
    shown = np.array(drawn, dtype=np.uint8).reshape(28, 28, 4)[..., 0]
    assert np.array_equal(shown, decode_image(buffer.getvalue()))
    upright = decode_image(encode_upright(photo)).astype(int)
    assert np.abs(shown.astype(int) - upright).mean() < 4


def test_a_touch_phone_offers_a_camera_button_that_classifies(browser, server, page):
    """On a touch screen a "Take a photo" button opens the back camera (``capture``); a desktop does not show it.
    What it sends is classified like a chosen file."""
    assert not page.is_visible("label.camera")
    phone = load(browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True), server)
    try:
        assert phone.is_visible("label.camera")
        assert phone.get_attribute("#camera", "capture") == "environment"
        assert phone.get_attribute("#camera", "accept") == "image/*"
        phone.set_input_files("#camera", str(ANKLE_BOOT))
        phone.wait_for_selector("#result:not([hidden])")
        page.set_input_files("#file", str(ANKLE_BOOT))
        page.wait_for_selector("#result:not([hidden])")
        assert phone.inner_text("#label") == page.inner_text("#label") in CLASS_NAMES
    finally:
        phone.close()


def encode_upright(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_a_blank_image_is_shown_as_not_clothing(page):
    """The model's "not clothing" answer reaches the page, and a garment clears it again."""
    from fashion.imaging import encode_png

    page.set_input_files("#file", files=[{"name": "blank.png", "mimeType": "image/png",
                                          "buffer": encode_png(np.zeros((28, 28), np.uint8))}])
    page.wait_for_selector("#not-clothing:not([hidden])")
    assert page.inner_text("#not-clothing").startswith("This does not look like clothing")
    page.set_input_files("#file", str(TROUSER))
    page.wait_for_selector("#not-clothing", state="hidden")


def test_switching_backend_reclassifies_and_shows_it(page, exported):
    page.set_input_files("#file", str(TROUSER))
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#shown-backend") == "onnx-torch"
    for backend in ("savedmodel", "onnx-int8", "torch"):
        page.select_option("#backend", backend)
        page.locator("#shown-backend", has_text=backend).wait_for()
        expected = offline_probabilities(exported, backend, TROUSER)
        assert page.inner_text("#version") == read_manifest(model_dir(exported, backend))["version"]
        assert page.inner_text("#label") == CLASS_NAMES[expected.argmax()]
        # int8 is a different model; the float32 artifacts reproduce their source exactly.
        np.testing.assert_allclose(shown_probabilities(page), expected, atol=1e-5)


@pytest.mark.parametrize(("name", "payload", "message"), [
    ("notes.txt", b"these are notes, not an image", "415 Unsupported Media Type: not an image"),
    ("cut.png", TROUSER.read_bytes()[:60], "422 Unprocessable Entity: the image could not be decoded"),
    ("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(9 * 1024 * 1024), "413 Request Entity Too Large: request body of"),
], ids=["not-an-image", "truncated", "over-the-body-limit"])
def test_refused_files_show_the_services_message(page, name, payload, message):
    page.set_input_files("#file", str(ANKLE_BOOT))
    page.wait_for_selector("#result:not([hidden])")
    page.set_input_files("#file", files=[{"name": name, "mimeType": "application/octet-stream", "buffer": payload}])
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith(f"{name}: The service answered {message}")
    assert page.is_hidden("#result")
    page.click("button.sample[data-class-id='1']")
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_hidden("#error")


def test_compare_sends_the_image_to_every_loaded_backend(page, server, exported):
    loaded = [n for n, f in httpx.post(f"{server}/model_info").json()["backends"].items() if f["loaded"]]
    assert len(loaded) == len(BACKENDS)
    show_example(page, class_id=9)
    cards = page.locator("#compare-grid .card")
    assert [cards.nth(i).get_attribute("data-backend") for i in range(cards.count())] == loaded
    labels = {}
    for i, backend in enumerate(loaded):
        labels[backend] = cards.nth(i).locator(".card-label").inner_text()
        assert labels[backend] == CLASS_NAMES[offline_probabilities(exported, backend, ANKLE_BOOT).argmax()]
    summary = page.inner_text("#compare-summary")
    assert summary.startswith(f"All {len(loaded)} backends predict" if len(set(labels.values())) == 1
                              else "The backends disagree")


def test_phone_width_needs_no_sideways_scrolling(browser, server, tmp_path):
    phone = open_page(browser, server, PHONE)
    try:
        show_example(phone, class_id=1)
        width = phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        phone.screenshot(path=str(tmp_path / "phone.png"))
    finally:
        phone.close()
