"""The page of `toolkit serve` in Debian's Chromium: the map, its lasso, the review grid, Submit, the start page.

One server and one browser for the module (each costs seconds), a new page
per test. The map is a `--map` CSV the module writes: 46 of the 48 digits
on a jittered 8 x 6 lattice, so no two points overlap, and two left off.
Screen positions are computed here from the page's documented Reset rule
(app.js, "Reset's fit rule"), not read from the page.

Set IMAGE_TOOLKIT_SHOTS=DIR to keep screenshots of the map, the zoomed map
with thumbnails and the review grid.
"""

import collections
import contextlib
import csv
import io
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")

from matplotlib.path import Path as Polygon  # noqa: E402

from tests.test_webapp import CHROMIUM, CHROMIUM_ARGS, browser_test, digits, make_app, offline_route, uvicorn_thread  # noqa: E402, F401

MAP_MARGIN = 24  # app.js's MAP_MARGIN: the Reset rule's margin on each side
VIEWPORT = {"width": 1280, "height": 860}
ON_MAP = 46


def shot(page, name: str, selector: str | None = None) -> None:
    """A screenshot into IMAGE_TOOLKIT_SHOTS, when it is set."""
    folder = os.environ.get("IMAGE_TOOLKIT_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (page.locator(selector) if selector else page).screenshot(path=str(Path(folder) / f"{name}.png"))


@pytest.fixture(scope="module")
def spread(digits, tmp_path_factory):  # noqa: F811 (the digits fixture, imported)
    """The --map CSV: image -> (x, y) on a jittered lattice, 10 apart in x, 7 in y; the last two images left off."""
    rng = np.random.default_rng(3)
    coords = {name: (10.0 * (i % 8) + rng.uniform(-2, 2), 7.0 * (i // 8) + rng.uniform(-1.5, 1.5))
              for i, name in enumerate(digits["names"][:ON_MAP])}
    path = tmp_path_factory.mktemp("map") / "spread.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x", "y"])
        writer.writerows([name, repr(x), repr(y)] for name, (x, y) in coords.items())
    return path, coords


@pytest.fixture(scope="module")
def served(digits, spread, tmp_path_factory):  # noqa: F811
    db = tmp_path_factory.mktemp("store") / "browser.sqlite"
    with uvicorn_thread(make_app(digits, db, map_csv=spread[0])) as url:
        yield url, db


@pytest.fixture(scope="module")
def browser(served, tmp_path_factory):
    """One Chromium for the module, every request that leaves the server refused and recorded."""
    sync_api = browser_test()
    offline, elsewhere = offline_route(served[0])
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT)
        context.route("**/*", offline)
        try:
            yield context, elsewhere
        finally:
            context.close()


@pytest.fixture
def page(browser, served):
    """The start page, loaded: the first page of images in the grid and every point on the map."""
    page = browser[0].new_page()
    page.goto(served[0])
    page.wait_for_function("document.querySelectorAll('#grid .thumb').length === 40")
    page.wait_for_function(f"document.getElementById('map-caption').textContent.startsWith('{ON_MAP} points')")
    yield page
    page.close()


def screen(page, coords: dict) -> tuple[dict, dict]:
    """Each image's point on the page after Reset, by the documented fit rule: (name -> (x, y) in the viewport, box)."""
    box = page.locator("#map").bounding_box()
    xy = np.array(list(coords.values()))
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    scale = min((box["width"] - 2 * MAP_MARGIN) / (x1 - x0), (box["height"] - 2 * MAP_MARGIN) / (y1 - y0))
    sx = box["x"] + box["width"] / 2 + (xy[:, 0] - (x0 + x1) / 2) * scale
    sy = box["y"] + box["height"] / 2 - (xy[:, 1] - (y0 + y1) / 2) * scale
    return dict(zip(coords, zip(sx.tolist(), sy.tolist()))), box


def canvas_rgb(page, box: dict, points) -> list[tuple[int, int, int]]:
    """The canvas's colour at each viewport point."""
    local = [[x - box["x"], y - box["y"]] for x, y in points]
    return [tuple(c) for c in page.evaluate("""points => {
        const canvas = document.getElementById('map'), dpr = window.devicePixelRatio || 1;
        const context = canvas.getContext('2d');
        return points.map(([x, y]) => Array.from(context.getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data.slice(0, 3)));
    }""", local)]


def rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def image_classes(db: Path) -> dict[str, str]:
    """The class text the store registers for each image (its own table, not the page)."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return dict(connection.execute("SELECT name, class FROM images"))


def draw_lasso(page, points) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=6)
    page.mouse.up()


def lasso_on_map(page, coords) -> tuple[list[str], list]:
    """A concave lasso over the map's left part; the images whose points it holds, computed here."""
    positions, box = screen(page, coords)
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    polygon = [(x + 0.05 * w, y + 0.05 * h), (x + 0.55 * w, y + 0.08 * h), (x + 0.3 * w, y + 0.45 * h),
               (x + 0.5 * w, y + 0.95 * h), (x + 0.06 * w, y + 0.9 * h)]
    inside = Polygon(polygon).contains_points(list(positions.values()))
    expected = [name for name, hit in zip(positions, inside) if hit]
    draw_lasso(page, polygon)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Lasso on the map')")
    return expected, polygon


def review_names(page) -> list[str]:
    return page.eval_on_selector_all("#review-grid .thumb img", "nodes => nodes.map(n => n.alt)")


def test_the_map_shows_every_point_coloured_by_class_with_a_legend(page, served, spread):
    coords = spread[1]
    classes = image_classes(served[1])
    legend = page.eval_on_selector_all("#legend li", """items => items.map(i => [i.dataset.group,
        Number(i.querySelector('.count').textContent.replace(/,/g, '')), getComputedStyle(i.querySelector('.swatch')).backgroundColor])""")
    counts = collections.Counter(classes.values())  # Every one of the 48 is indexed.
    assert [(name, count) for name, count, _ in legend] == sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    colours = {name: rgb(colour) for name, _, colour in legend}
    real = [colours[name] for name in colours if name != ""]
    assert len(set(real)) == len(real)  # Each real group its own colour.
    positions, box = screen(page, coords)
    drawn = canvas_rgb(page, box, positions.values())
    assert drawn == [colours[classes[name]] for name in positions]
    assert page.text_content("#map-caption").startswith(f"{ON_MAP} points")
    buttons = page.eval_on_selector_all("#classes .class[data-label]", "nodes => nodes.map(n => [n.dataset.label, n.querySelector('.count').textContent])")
    carrying = collections.Counter(label for text in classes.values() for label in text.split(";") if label)
    assert buttons == [[label, str(carrying[label])] for label in ("even", "prime", "five_or_more", "closed_loop")]
    shot(page, "map_classes")


def test_a_lasso_on_the_map_selects_exactly_the_points_inside_it(page, spread):
    expected, _ = lasso_on_map(page, spread[1])
    assert 5 < len(expected) < ON_MAP - 5
    assert sorted(review_names(page)) == sorted(expected)
    assert page.text_content("#review-count") == f"{len(expected)} images"
    assert page.text_content("#counts") == f"Selected: {len(expected)} · Deselected: 0"


def test_deselect_in_the_review_grid_changes_the_counts(page, spread):
    expected, _ = lasso_on_map(page, spread[1])
    n = len(expected)
    tiles = page.locator("#review-grid .thumb")
    tiles.nth(1).click()
    assert page.text_content("#counts") == f"Selected: {n - 1} · Deselected: 1"
    assert "deselected" in tiles.nth(1).get_attribute("class")
    tiles.nth(1).click()  # A second click selects it again.
    assert page.text_content("#counts") == f"Selected: {n} · Deselected: 0"
    tiles.nth(0).focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")  # The keys work in the review grid too.
    assert page.text_content("#counts") == f"Selected: {n - 1} · Deselected: 1"
    assert "deselected" in tiles.nth(2).get_attribute("class")
    shot(page, "review_grid", "#review")


def test_submit_says_how_many_events_it_stored_keeps_the_marks_and_the_export_has_them(page, served, spread):
    url, _ = served
    coords = spread[1]
    expected, _ = lasso_on_map(page, coords)
    names = review_names(page)
    page.locator("#review-grid .thumb").nth(0).click()  # Deselect the first.
    page.select_option("#query-class", "closed_loop")
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Stored')")
    assert page.text_content("#status") == "Stored 2 events."  # The lasso, then the deselect.
    n = len(expected)
    assert page.text_content("#counts") == f"Selected: {n - 1} · Deselected: 1"
    assert "deselected" in page.locator("#review-grid .thumb").nth(0).get_attribute("class")
    positions, box = screen(page, coords)
    ring = canvas_rgb(page, box, [(positions[name][0] + 6, positions[name][1]) for name in names[:2]])
    assert ring[0][0] > 150 > ring[0][1] and ring[1][1] > ring[1][0]  # Red ring, then green, still on the map.
    counts = page.request.get(f"{url}/api/feedback/counts?query_class=closed_loop").json()
    page.wait_for_function(f"document.querySelector('#feedback-counts dd').textContent === '{counts['events']}'")
    page.click("#submit")  # Nothing changed: nothing sent again.
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Nothing changed')")
    assert page.request.get(f"{url}/api/feedback/counts").json()["events"] == counts["events"]
    export = page.request.get(f"{url}/api/feedback/export").text()
    rows = {row["image"]: row for row in csv.DictReader(io.StringIO(export))}
    assert set(names) <= set(rows)
    page.locator("#review-grid .thumb").nth(0).click()  # Selected again: only that judgement goes.
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent === 'Stored 1 event.'")
    page.click("#clear")
    assert page.text_content("#counts") == "Selected: 0 · Deselected: 0" and review_names(page) == []


def test_the_start_page_shows_the_collection(page):
    assert page.locator("#grid .thumb").count() == 40
    first = page.locator("#grid .thumb").first
    assert first.get_attribute("title").startswith("0000.png\nclass ")
    assert page.text_content("#current-query") == "Browsing all images (48)."
    drawn = page.evaluate("""() => {
        const canvas = document.getElementById('map');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let coloured = 0;
        for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] < 700) coloured += 1;
        return coloured;
    }""")
    assert drawn > ON_MAP * 10
    assert page.text_content("#class-all") == "All classes"
    assert page.eval_on_selector_all("#classes .class .name", "nodes => nodes.map(n => n.textContent)") == [
        "even", "prime", "five_or_more", "closed_loop"]
    assert page.get_attribute("#q", "placeholder").startswith("Keyword, e.g. even")


def test_a_grid_lasso_may_start_beside_or_below_the_tiles(page):
    first = page.locator("#grid .thumb").first.bounding_box()
    x, y = first["x"] - 6, first["y"] + 4  # 6 px left of the first tile.
    draw_lasso(page, [(x, y), (x + first["width"] + 12, y), (x + first["width"] + 12, y + first["height"] * 0.8), (x, y + first["height"] * 0.8)])
    assert page.text_content("#counts") == "Selected: 1 · Deselected: 0"
    page.eval_on_selector("#grid-view", "view => { view.scrollTop = view.scrollHeight; }")
    last = page.locator("#grid .thumb").last.bounding_box()
    below = last["y"] + last["height"] + 5  # The blank space under the last tile.
    draw_lasso(page, [(last["x"] + 4, below), (last["x"] + last["width"] - 4, below),
                      (last["x"] + last["width"] - 4, last["y"] + 10), (last["x"] + 4, last["y"] + 10)])
    assert page.text_content("#counts") == "Selected: 2 · Deselected: 0"
    assert page.locator("#grid .thumb").last.get_attribute("aria-pressed") == "true"


def test_a_whole_session_sends_nothing_beyond_the_server(page, browser, spread):
    """Search, filter by class, colour by feedback, zoom to thumbnails: every request went to 127.0.0.1 (this is last)."""
    page.fill("#q", "even")
    page.press("#q", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.startsWith(\"Results for 'even'\")")
    assert page.locator("#grid .rank").first.text_content() == "1"
    page.click("#classes .class[data-label='prime']")
    page.wait_for_function("document.getElementById('current-query').textContent.endsWith('(class prime)')")
    assert page.get_attribute("#classes .class[data-label='prime']", "aria-pressed") == "true"
    page.click("#colour-feedback")
    page.wait_for_function("document.getElementById('colour-feedback').getAttribute('aria-pressed') === 'true'")
    page.click("#colour-class")
    page.click("#class-all")
    positions, _ = screen(page, spread[1])
    shown = page.eval_on_selector_all("#grid .thumb img", "nodes => nodes.map(n => n.alt)")
    page.mouse.move(*positions[next(name for name in shown if name in positions)])
    page.mouse.wheel(0, -350)  # Twice the fit: a handful of points, each its thumbnail.
    page.wait_for_function("!document.getElementById('map-caption').textContent.includes('zoom in')")
    page.wait_for_timeout(300)  # The thumbnails' images arrive.
    shot(page, "map_zoomed_thumbnails", "#map-view")
    shot(page, "page")
    assert browser[1] == []
