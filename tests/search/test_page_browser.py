"""The review page as a person uses it, in a real headless Chromium (Selenium driving Debian's ``chromium`` with
its ``chromium-driver``) against ``dcinet-search serve``'s app on a real socket: open the page, open a frame,
click a person, see the ranked hits (the API's answer, in order), narrow them to a camera, open a hit's frame
with its box drawn, drag a box, query an uploaded image, read the API docs.

With $DCINET_SCREENSHOT=PATH the results view is saved there as a small PNG (the README's picture:
``DCINET_SCREENSHOT=docs/search_page.png``). Without Chromium the test skips naming what to install; with
$DCINET_REQUIRE_BROWSER set (CI) it fails instead.
"""
import os
import shutil
import socket
import threading
import time

import pytest

from dcinet_d2.search.query import answer_query, open_search
from dcinet_d2.search.server import create_app
from dcinet_d2.search.sources import read_image_bgr

INSTALL = ("the browser test needs Chromium and its driver: apt-get install chromium chromium-driver "
           "(bash scripts/setup_env.sh installs them when run as root)")
SCREENSHOT_ENV, REQUIRE_ENV = "DCINET_SCREENSHOT", "DCINET_REQUIRE_BROWSER"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(INSTALL)
        pytest.skip(INSTALL)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(served_index):
    yield from _serve(*served_index)


@pytest.fixture(scope="module")
def video_server(served_video_index):
    yield from _serve(*served_video_index)


def _serve(index_dir, root):
    import uvicorn

    index, predictor = open_search(str(index_dir), device="cpu")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(index, predictor, allowed_hosts=["127.0.0.1", "localhost"])
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/", "index": index, "predictor": predictor, "root": root}
    uv.should_exit = True
    thread.join(10)
    sock.close()


def _wait(driver, condition, what):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The page re-renders its lists as answers arrive: an element found a moment ago may be gone; look again.
        return WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: condition(d))
    except Exception as e:  # noqa: BLE001 - say what the page did not show, and its status line
        status = [e.text for e in driver.find_elements("id", "status")]
        raise AssertionError(f"the page did not show {what} (status line: {status!r})") from e


def _hit_labels(driver):
    return [b.get_attribute("data-label") for b in driver.find_elements("css selector", "#hits .hit")]


def _drag(driver, element, start, end):
    """Drag with the mouse inside ``element`` from ``start`` to ``end`` (pixels from its centre)."""
    from selenium.webdriver.common.action_chains import ActionChains

    (ActionChains(driver).move_to_element_with_offset(element, *start).click_and_hold()
     .move_by_offset(end[0] - start[0], end[1] - start[1]).release().perform())


def _save_screenshot(driver, path):
    from PIL import Image

    driver.save_screenshot(path)
    with Image.open(path) as shot:
        small = shot.convert("RGB").resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS)
    small.quantize(colors=128).save(path, optimize=True)


def test_click_a_person_see_ranked_hits_open_a_hit(browser, server):
    driver, index = browser, server["index"]
    driver.get(server["url"])
    _wait(driver, lambda d: len(d.find_elements("css selector", "#grid .thumb")) == index.num_images,
          "the gallery grid")
    assert driver.find_element("id", "page-label").text == "page 1 of 1"
    assert f"{index.num_images} frames" in driver.find_element("id", "info").text

    # Open a frame: its detections are drawn as boxes (the index's threshold is the page's default).
    driver.find_element("css selector", '#grid .thumb[data-label="f1.jpg"]').click()
    _wait(driver, lambda d: d.find_elements("css selector", "#overlay rect.det"), "the frame's detected people")
    assert driver.find_element("id", "viewer-title").text == "f1.jpg"
    best = driver.find_elements("css selector", "#overlay rect.det")[-1]  # drawn last, on top
    box = [float(best.get_attribute(k)) for k in ("x", "y", "width", "height")]
    box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]

    # Click the best-scoring person: the hits are the API's, in its order.
    best.click()
    _wait(driver, lambda d: _hit_labels(d), "the ranked hits")
    expected = answer_query(index, server["predictor"], read_image_bgr(str(server["root"] / "f1.jpg")),
                            [round(v, 2) for v in box], "f1.jpg", top_k=10, det_thresh=index.det_thresh,
                            one_per_image=True, exclude_images=["f1.jpg"])["hits"]
    assert _hit_labels(driver) == [h["image"] for h in expected] and "f1.jpg" not in _hit_labels(driver)
    ranks = [int(b.get_attribute("data-rank")) for b in driver.find_elements("css selector", "#hits .hit")]
    assert ranks == list(range(1, len(expected) + 1))
    first = driver.find_element("css selector", "#hits .hit")
    assert f"{expected[0]['similarity']:.3f}" in first.text and f"{expected[0]['score']:.3f}" in first.text
    crops = driver.find_elements("css selector", "#hits img")
    _wait(driver, lambda d: all(d.execute_script("return arguments[0].complete", img) for img in crops),
          "the hits' crops")
    shown = [driver.execute_script("return arguments[0].naturalWidth > 0", img) for img in crops]
    # link.jpg leads out of the gallery root: listed as the index holds it, its pixels never served.
    assert shown == [h["image"] != "link.jpg" for h in expected]
    if os.environ.get(SCREENSHOT_ENV):
        _save_screenshot(driver, os.environ[SCREENSHOT_ENV])

    # Narrow to one camera: the same query again, its hits only from that camera; the grid too.
    from selenium.webdriver.support.select import Select

    Select(driver.find_element("id", "camera")).select_by_value("cam 2")
    expected = answer_query(index, server["predictor"], read_image_bgr(str(server["root"] / "f1.jpg")),
                            [round(v, 2) for v in box], "f1.jpg", top_k=10, det_thresh=index.det_thresh,
                            one_per_image=True, exclude_images=["f1.jpg"], cameras=["cam 2"])["hits"]
    assert sorted(h["image"] for h in expected) == ["cam 2/f4.jpg", "cam 2/f5.jpg"]
    _wait(driver, lambda d: _hit_labels(d) == [h["image"] for h in expected], "the hits of camera 'cam 2'")
    _wait(driver, lambda d: len(d.find_elements("css selector", "#grid .thumb")) == 2, "the grid of camera 'cam 2'")
    assert "cam 2" in driver.find_element("css selector", "#hits .hit").text

    # Open the first hit's frame: that frame, with the hit's box drawn.
    driver.find_element("css selector", "#hits .hit").click()
    _wait(driver, lambda d: d.find_element("id", "viewer-title").text == expected[0]["image"], "the hit's frame")
    marked = _wait(driver, lambda d: d.find_elements("css selector", "#overlay rect.hit-box"), "the hit's box")
    assert float(marked[0].get_attribute("x")) == pytest.approx(expected[0]["box"][0], abs=0.01)

    # Drag a box on the frame: a query of that box.
    before = driver.find_element("id", "query-label").text
    _drag(driver, driver.find_element("id", "overlay"), (-60, -50), (20, 60))
    _wait(driver, lambda d: d.find_element("id", "query-label").text != before, "the dragged box's hits")
    assert driver.find_element("id", "query-label").text.startswith(f"Query: {expected[0]['image']}, box ")
    assert not driver.find_element("id", "status").get_attribute("class")  # no error shown


def test_upload_an_image_and_drag_a_box(browser, server):
    driver = browser
    driver.get(server["url"])
    _wait(driver, lambda d: d.find_elements("css selector", "#grid .thumb"), "the gallery grid")
    driver.find_element("id", "upload").send_keys(str(server["root"] / "f2.jpg"))
    _wait(driver, lambda d: d.find_element("id", "viewer-title").text == "f2.jpg (uploaded)", "the uploaded image")
    _drag(driver, driver.find_element("id", "overlay"), (-70, -60), (10, 50))
    _wait(driver, lambda d: _hit_labels(d), "the upload's hits")
    assert driver.find_element("id", "query-label").text.startswith("Query: f2.jpg, box ")


def test_api_docs_render_from_local_files(browser, server):
    browser.get(server["url"] + "docs")
    operations = _wait(browser, lambda d: d.find_elements("css selector", ".opblock-summary-path"), "the API docs")
    paths = {op.get_attribute("data-path") or op.text for op in operations}
    assert {"/api/query", "/api/query/upload", "/api/frames"} <= paths


def test_video_hits_on_a_timeline_of_appearances(browser, video_server):
    driver = browser
    driver.get(video_server["url"])
    _wait(driver, lambda d: len(d.find_elements("css selector", "#grid .thumb")) == 16, "the video's frames")
    driver.find_element("css selector", '#grid .thumb[data-label="gate.avi#3"]').click()
    best = _wait(driver, lambda d: d.find_elements("css selector", "#overlay rect.det"), "the frame's people")[-1]
    best.click()
    segments = _wait(driver, lambda d: d.find_elements("css selector", "#timeline .segment"), "the timeline")
    assert driver.find_element("css selector", "#timeline .camera").text == "gate.avi"
    hits = _hit_labels(driver)
    assert all(label.startswith("gate.avi#") for label in hits) and len(hits) == 10
    last = segments[-1]
    rank = int(last.get_attribute("data-best-rank"))
    last.click()
    _wait(driver, lambda d: d.find_element("id", "viewer-title").text == hits[rank - 1], "the appearance's frame")
    assert driver.find_elements("css selector", "#overlay rect.hit-box")
