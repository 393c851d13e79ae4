"""The shop-front page (`GET /`, api/web/) end to end: the real app under uvicorn on a loopback
port, driven by Debian's headless Chromium through Selenium, over the small shop graph
(tests/shop_graph.py) with photos on three products, real search artifacts and a really
trained recommender (the TINY config), built once for the module (~20 s).

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`; `.ci/run`
installs them). Without them the browser tests are skipped on a laptop and fail under CI
(CI=true/1), so CI cannot go green without running them.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from api.app import create_app
from kg.embedded import EmbeddedStore
from kg.schema import PRODUCT, GraphBatch
from recommender.content import build_content
from recommender.training import train_recommender
from tests.shop_graph import small_shop
from tests.test_service import TINY

HOW_TO_INSTALL = ("the shop-front browser tests need Debian's Chromium and its WebDriver: "
                  "`apt-get install chromium chromium-driver` (and selenium, in the dev extras)")
WAIT = 30  # seconds an explicit wait may take before the test fails
PHOTOS = {"p1": (200, 40, 40), "p2": (40, 60, 200), "p6": (30, 30, 30)}  # product -> colour


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def draw_photo(path: Path, colour: tuple[int, int, int]) -> Path:
    """A small real JPEG: a coloured shape on a light background."""
    img = Image.new("RGB", (160, 120), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((20, 35, 140, 100), fill=colour)
    img.save(path, "JPEG")
    return path


def set_images(store: EmbeddedStore, images: dict[str, str]) -> None:
    """Give products an `image` property (the store upserts: other properties stay)."""
    batch = GraphBatch()
    batch.add_nodes(PRODUCT, pd.DataFrame({"id": list(images), "image": list(images.values())}))
    store.load(batch)


# ---- one workspace, one server, one browser for the module ---------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("shopfront-ws")
    photos = ws / "photos"
    photos.mkdir()
    with EmbeddedStore(ws / "graph") as store:
        store.load(small_shop())
        set_images(store, {pid: str(draw_photo(photos / f"{pid}.jpg", colour))
                           for pid, colour in PHOTOS.items()})
        build_content(store, ws)
        train_recommender(store, ws, TINY, log=lambda _: None)
    return ws


@dataclass
class Server:
    app: FastAPI
    url: str


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn in a thread; yields its base URL.

    The socket listens before the thread starts, so the first request simply queues until
    uvicorn accepts it: no polling for readiness.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def server(workspace) -> Iterator[Server]:
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"))
    with serve(app) as url:
        yield Server(app, url)


@pytest.fixture(scope="module")
def client(server) -> TestClient:
    """Plain requests to the same app (no lifespan: uvicorn already runs it)."""
    return TestClient(server.app)


def chromium_paths() -> tuple[str, str]:
    """(browser, driver) executables: skip without them on a laptop, fail under CI."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver))
               if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"{', '.join(missing)} not found; {HOW_TO_INSTALL}"
        if in_ci():
            pytest.fail(f"CI must run the browser tests: {message}", pytrace=False)
        pytest.skip(message)
    assert browser and driver
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, chromedriver = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-proxy-server", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# ---- helpers --------------------------------------------------------------------------------
def wait(driver: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, message)


def open_page(driver: Any, url: str) -> None:
    """Load the page fresh (a new document, so no state from an earlier test)."""
    driver.get("about:blank")
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete",
         "the page did not load")


def cards(driver: Any, grid: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR,
                                f'[data-testid="{grid}"] [data-testid="product-card"]')


def wait_for_cards(driver: Any, grid: str, n: int) -> list[Any]:
    wait(driver, lambda d: len(cards(d, grid)) == n, f"{grid} never showed {n} products")
    return cards(driver, grid)


def titles(found: list[Any]) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.find_element(By.CSS_SELECTOR, '[data-testid="card-title"]').text for c in found]


def card_of(driver: Any, grid: str, product_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(
        By.CSS_SELECTOR, f'[data-testid="{grid}"] [data-product-id="{product_id}"]')


def photo_loaded(driver: Any, card: Any) -> bool:
    """True once the card shows a decoded photo (an <img> with a real natural width)."""
    return bool(driver.execute_script(
        "const img = arguments[0].querySelector('img[data-testid=\"product-image\"]');"
        "return img !== null && img.complete && img.naturalWidth > 0;", card))


def type_and_submit(driver: Any, field: str, text: str, button: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, field)
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, button).click()


def error_text(driver: Any) -> str:
    """The page's error banner once it is shown."""
    from selenium.webdriver.common.by import By

    banner = driver.find_element(By.ID, "error")
    wait(driver, lambda d: banner.is_displayed() and banner.text, "no error was shown")
    return banner.text


def severe_logs(driver: Any) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


# ---- plain HTTP: the page, its assets, photos, the user list --------------------------------
def test_root_serves_the_page_and_its_assets(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="search-q"', 'id="photo-input"', 'id="user-id"', 'static/app.js',
                   'static/style.css'):
        assert needle in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "search/image" in script.text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/nothing.js").status_code == 404
    paths = set(client.get("/openapi.json").json()["paths"])
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert {"/users", "/products/{product_id}/image"} <= paths


def test_product_image_is_the_products_own_photo(client, workspace) -> None:
    r = client.get("/products/p1/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (workspace / "photos" / "p1.jpg").read_bytes()
    unknown = client.get("/products/p99/image")
    assert unknown.status_code == 404 and "'p99'" in unknown.json()["detail"]
    bare = client.get("/products/p8/image")  # p8 has no photo
    assert bare.status_code == 404 and "no image" in bare.json()["detail"]


def test_product_image_edge_cases(tmp_path) -> None:
    """Missing files, non-photos and URLs, on a store of its own (no training needed)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    store = EmbeddedStore(tmp_path / "graph")
    store.load(small_shop())
    set_images(store, {"p1": str(tmp_path / "gone.jpg"), "p2": str(secret),
                       "p3": "https://images.example.com/p3.jpg", "p4": "ftp://example.com/p4.jpg",
                       "p5": str(draw_photo(tmp_path / "p5.png", (0, 0, 0))), "p6": ""})
    app = create_app(tmp_path, store=store, load_search=False, load_recommender=False)
    with TestClient(app, follow_redirects=False) as c:
        missing = c.get("/products/p1/image")
        assert missing.status_code == 404 and "missing" in missing.json()["detail"]
        text = c.get("/products/p2/image")
        assert text.status_code == 404 and "not a photo" in text.json()["detail"]
        assert "not for clients" not in text.text
        url = c.get("/products/p3/image")
        assert url.status_code == 307
        assert url.headers["location"] == "https://images.example.com/p3.jpg"
        assert c.get("/products/p4/image").status_code == 404
        png = c.get("/products/p5/image")  # the media type follows the file's extension
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert c.get("/products/p6/image").status_code == 404
        users = c.get("/users")  # no recommender loaded: the picker has nothing to list
        assert users.status_code == 503 and "shopgraph train" in users.json()["detail"]


def test_users_lists_the_recommenders_shoppers(client) -> None:
    body = client.get("/users").json()
    assert body["users"] == [f"u{i}" for i in range(1, 8)] and body["total"] == 7
    assert body["version"]
    assert client.get("/users", params={"limit": 2}).json()["users"] == ["u1", "u2"]
    assert client.get("/users", params={"prefix": "u7"}).json()["users"] == ["u7"]
    assert client.get("/users", params={"prefix": "x"}).json()["users"] == []
    bad = client.get("/users", params={"limit": 0})
    assert bad.status_code == 422 and "'limit'" in bad.json()["detail"]


# ---- the page in Chromium -------------------------------------------------------------------
def test_page_loads_without_console_errors(browser, server) -> None:
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drop what earlier tests logged
    open_page(browser, server.url + "/")
    assert browser.find_element(By.CSS_SELECTOR, '[data-testid="home"]').is_displayed()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#user-ids option")) == 7,
         "the user picker was never filled from GET /users")
    type_and_submit(browser, "search-q", "red", "search-button")
    wait(browser, lambda d: cards(d, "product-grid"), "no search results")
    found = cards(browser, "product-grid")
    # every card completed from GET /products/{id} (brand), every photo decoded
    wait(browser, lambda d: all(c.find_element(By.CSS_SELECTOR, '[data-testid="card-brand"]')
                                .text for c in found), "the cards' brands never showed")
    with_photo = [c for c in found if c.get_attribute("data-product-id") in PHOTOS]
    assert len(with_photo) == len(PHOTOS)
    wait(browser, lambda d: all(photo_loaded(d, c) for c in with_photo), "photos never loaded")
    assert severe_logs(browser) == []


def test_text_search_shows_the_apis_hits_with_photos_and_placeholders(browser, server,
                                                                      client) -> None:
    from selenium.webdriver.common.by import By

    hits = client.get("/search", params={"q": "red", "k": 12}).json()["hits"]
    assert hits
    open_page(browser, server.url + "/")
    type_and_submit(browser, "search-q", "red", "search-button")
    found = wait_for_cards(browser, "product-grid", len(hits))
    assert titles(found) == [h["title"] for h in hits]
    assert browser.current_url.endswith("#/search?q=red")
    # p1 has a photo: it is fetched and decoded; p8 has none: a placeholder, no <img>
    p1 = card_of(browser, "product-grid", "p1")
    wait(browser, lambda d: photo_loaded(d, p1), "p1's photo never loaded")
    alt = p1.find_element(By.CSS_SELECTOR, "img").get_attribute("alt")
    assert alt == "Photo of Red runner"
    p8 = card_of(browser, "product-grid", "p8")
    wait(browser, lambda d: p8.find_element(By.CSS_SELECTOR, '[data-testid="card-brand"]').text
         == "Nova", "p8's brand never showed")
    placeholder = p8.find_element(By.CSS_SELECTOR, '[data-testid="image-placeholder"]')
    assert placeholder.get_attribute("aria-label") == "No photo of Nova kettle"
    assert p8.find_elements(By.CSS_SELECTOR, "img") == []


def test_photo_upload_searches_by_image(browser, server, client, workspace) -> None:
    from selenium.webdriver.common.by import By

    photo = workspace / "photos" / "p2.jpg"
    expected = client.post("/search/image", data={"k": "12"},
                           files={"image": ("p2.jpg", photo.read_bytes(), "image/jpeg")}).json()
    assert expected["hits"][0]["id"] == "p2"  # its own photo comes first
    open_page(browser, server.url + "/")
    browser.find_element(By.ID, "photo-input").send_keys(str(photo))
    browser.find_element(By.ID, "photo-button").click()
    found = wait_for_cards(browser, "product-grid", len(expected["hits"]))
    assert titles(found) == [h["title"] for h in expected["hits"]]
    heading = browser.find_element(By.CSS_SELECTOR, '[data-testid="search-results"] h2')
    assert heading.text == "Products like p2.jpg"
    assert browser.current_url.endswith("#/photo")


def test_clicking_a_product_opens_its_page_with_related_items(browser, server, client) -> None:
    from selenium.webdriver.common.by import By

    related = client.get("/products/p1/related", params={"k": 8}).json()["items"]
    assert related
    open_page(browser, server.url + "/#/search?q=runner")
    wait(browser, lambda d: cards(d, "product-grid"), "no search results")
    card_of(browser, "product-grid", "p1").find_element(By.CSS_SELECTOR, "a").click()
    title = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR,
                                                   '[data-testid="product-title"]'),
                 "the product page never opened")
    assert title.text == "Red runner" and browser.current_url.endswith("#/product/p1")
    facts = browser.find_element(By.CSS_SELECTOR, '[data-testid="product-details"]').text
    assert "Acme" in facts and "Apparel > Shoes" in facts and "Red" in facts
    page = browser.find_element(By.CSS_SELECTOR, '[data-testid="product-page"]')
    wait(browser, lambda d: photo_loaded(d, page), "the product's photo never loaded")
    found = wait_for_cards(browser, "related-grid", len(related))
    assert titles(found) == [item["title"] for item in related]
    for shown, item in zip(found, related):
        reasons = shown.find_elements(By.CSS_SELECTOR, '[data-testid="reasons"] li')
        assert [r.text for r in reasons] == item["reasons"]


def test_user_picker_shows_recommendations_with_reasons(browser, server, client) -> None:
    from selenium.webdriver.common.by import By

    items = client.get("/users/u4/recommendations",
                       params={"k": 12, "explain": "true"}).json()["items"]
    assert items and all(item["reasons"] for item in items)
    open_page(browser, server.url + "/")
    type_and_submit(browser, "user-id", "u4", "user-button")
    found = wait_for_cards(browser, "recommendation-grid", len(items))
    assert titles(found) == [item["title"] for item in items]
    for shown, item in zip(found, items):
        reasons = shown.find_elements(By.CSS_SELECTOR, '[data-testid="reasons"] li')
        assert [r.text for r in reasons] == item["reasons"] and reasons[0].text
    heading = browser.find_element(By.CSS_SELECTOR, '[data-testid="user-page"] h2')
    assert heading.text == "Recommended for shopper u4"
    assert browser.current_url.endswith("#/user/u4")


def test_unknown_user_and_bad_query_show_readable_errors(browser, server) -> None:
    open_page(browser, server.url + "/")
    type_and_submit(browser, "user-id", "nobody-42", "user-button")
    message = error_text(browser)
    assert message.startswith("Not found (404): unknown user 'nobody-42'")
    assert cards(browser, "recommendation-grid") == []
    open_page(browser, server.url + "/#/search?q=" + "x" * 501)  # over the 500-char limit
    message = error_text(browser)
    assert message.startswith("Invalid request (422): query parameter 'q'")


def test_a_part_not_loaded_shows_a_503_message(browser, workspace) -> None:
    """Search and recommender not loaded (before `shopgraph train`): the page says so."""
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), load_search=False,
                     load_recommender=False)
    with serve(app) as url:
        open_page(browser, url + "/#/search?q=red")
        message = error_text(browser)
        assert message.startswith("Not available right now (503): search is not ready")
        open_page(browser, url + "/#/product/p1")  # details still come from the store
        wait(browser, lambda d: d.find_elements("css selector", '[data-testid="related-error"]'),
             "the related section never reported the missing recommender")
        title = browser.find_element("css selector", '[data-testid="product-title"]')
        assert title.text == "Red runner"
        related = browser.find_element("css selector", '[data-testid="related-error"]').text
        assert related.startswith("Not available right now (503): recommendations are not ready")
