"""The admin in a real browser: log in, filter, search and open CDRs, create a token.

Headless Debian Chromium driven by Selenium through the system chromedriver; nothing is
ever downloaded. ``CDR_SAVE_SCREENSHOTS=1`` also writes docs/admin-changelist.png and
docs/admin-token.png (off by default, so test runs never change the tree).
"""

from __future__ import annotations

import io
import os
import re
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from cdrs.ids import encode_id
from cdrs.models import ApiToken
from cdrs.tokens import token_digest
from tests.factories import cdr_payload, create_cdrs, create_generated

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parent.parent / "docs"
TOKEN_RE = re.compile(r"cdr_[a-z0-9]{10}_[A-Za-z0-9_-]{20,}")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    # Selenium Manager must never fetch a browser or a driver: both paths are given.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def plain_http(settings) -> None:
    """The live server speaks plain HTTP: cookies must not be Secure-only for it."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


def screenshot(driver: WebDriver, name: str) -> None:
    if os.environ.get("CDR_SAVE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        driver.save_screenshot(str(DOCS / name))


def wait_for(driver: WebDriver, css: str) -> None:
    WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def texts(driver: WebDriver, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_admin_flow_in_a_browser(live_server, browser, plain_http, django_user_model):
    django_user_model.objects.create_superuser("root", "root@example.com", "browser-pw-123")
    create_generated(80, seed=11)
    [known] = create_cdrs(
        cdr_payload(
            started=datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC),
            caller="4711",
            caller_display_name="Ada Lovelace",
            callee="+442071838750",
            direction="INBOUND_CALL",
            trunk="sipgate",
            duration=3725,
        )
    )
    driver = browser
    base = live_server.url

    # Log in through the form.
    driver.get(f"{base}/admin/login/?next=/admin/cdrs/cdr/")
    driver.find_element(By.ID, "id_username").send_keys("root")
    driver.find_element(By.ID, "id_password").send_keys("browser-pw-123")
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(driver, "#result_list")
    assert "Select CDR to view" in driver.title
    # The admin's CSS is served (the live server serves static files).
    header = driver.find_element(By.ID, "header").value_of_css_property("background-color")
    assert header not in ("transparent", "rgba(0, 0, 0, 0)")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 81
    assert "of 81" in driver.find_element(By.CSS_SELECTOR, ".cdr-paginator").text
    # At 1400 px every column is visible, cost and billed account included (not cut off).
    visible_right = driver.execute_script(
        "return document.querySelector('#changelist .results').getBoundingClientRect().right"
    )
    for column in ("column-cost", "column-billed_account_shown"):
        right = driver.execute_script(
            f"return document.querySelector('#result_list th.{column}').getBoundingClientRect()"
            ".right"
        )
        assert right <= visible_right + 1, column
    screenshot(driver, "admin-changelist.png")

    # The site is named and "View site" opens the API docs.
    assert "cdrservice administration" in driver.find_element(By.ID, "site-name").text
    view_site = driver.find_element(By.CSS_SELECTOR, "#user-tools a[href='/api/docs']")
    assert view_site.text.lower() == "view site"

    # Domain filters: type a domain (any case) into the caller domain box...
    box = driver.find_element(By.ID, "filter-caller_domain")
    box.send_keys("ACME.test", Keys.ENTER)
    WebDriverWait(driver, 15).until(ec.url_contains("caller_domain=ACME.test"))
    caller_rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert 0 < len(caller_rows) < 81
    # ...then click a callee domain link: both filters apply together.
    callee_filter = driver.find_element(
        By.CSS_SELECTOR, "details[data-filter-title='callee domain']"
    )
    callee_filter.find_element(By.LINK_TEXT, "acme.test").click()
    WebDriverWait(driver, 15).until(ec.url_contains("callee_domain=acme.test"))
    assert "caller_domain=ACME.test" in driver.current_url
    both = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert 0 < len(both) <= len(caller_rows)
    driver.get(f"{base}/admin/cdrs/cdr/")
    wait_for(driver, "#result_list")

    # Filter: click a direction in the sidebar.
    filters = driver.find_element(By.ID, "changelist-filter")
    filters.find_element(By.LINK_TEXT, "INBOUND_CALL").click()
    WebDriverWait(driver, 15).until(ec.url_contains("direction__exact=INBOUND_CALL"))
    directions = texts(driver, "#result_list td.field-direction_column")
    assert directions and set(directions) == {"INBOUND_CALL"}

    # Search for a caller (the direction filter stays).
    search = driver.find_element(By.ID, "searchbar")
    search.clear()
    search.send_keys("4711", Keys.ENTER)
    WebDriverWait(driver, 15).until(ec.url_contains("q=4711"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 and "4711" in rows[0].text and "1:02:05" in rows[0].text

    # Open it: duration as h:mm:ss, local time and UTC, the public id.
    rows[0].find_element(By.CSS_SELECTOR, "th.field-started a").click()
    wait_for(driver, "#content-main fieldset")
    page = driver.find_element(By.ID, "content-main").text
    assert "1:02:05" in page
    assert "2025-03-14 09:26:53 UTC" in page and "UTC 2025-03-14T09:26:53Z" in page
    assert encode_id(known) in page
    assert not driver.find_elements(By.NAME, "_save")

    # Create a token and read its secret, shown once.
    driver.get(f"{base}/admin/cdrs/apitoken/")
    wait_for(driver, "#changelist")
    driver.find_element(By.CSS_SELECTOR, ".object-tools a.addlink").click()
    wait_for(driver, "#apitoken_form")
    Select(driver.find_element(By.ID, "id_user")).select_by_visible_text("root")
    driver.find_element(By.ID, "id_name").send_keys("wallboard")
    # Least privilege: only read is ticked on a new token.
    assert driver.find_element(By.ID, "id_scope_read").is_selected()
    assert not driver.find_element(By.ID, "id_scope_billing").is_selected()
    assert not driver.find_element(By.ID, "id_scope_write").is_selected()
    driver.find_element(By.ID, "id_domains").send_keys("PBX.example.com, acme.test")
    driver.find_element(By.NAME, "_save").click()
    wait_for(driver, "#new-api-token")
    plain = driver.find_element(By.ID, "new-api-token").text
    assert TOKEN_RE.fullmatch(plain)
    screenshot(driver, "admin-token.png")

    token = ApiToken.objects.get()
    assert token.digest == token_digest(plain)
    assert token.scopes == ["read"] and token.domains == ["acme.test", "pbx.example.com"]
    assert token.prefix in driver.find_element(By.ID, "result_list").text

    # The token works against the API...
    request = urllib.request.Request(
        f"{base}/api/cdrs?top=1", headers={"Authorization": f"Bearer {plain}"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 200

    # ...and is never shown again: not on reload, not on the list, not on its page.
    driver.refresh()
    wait_for(driver, "#result_list")
    assert not driver.find_elements(By.ID, "new-api-token")
    assert plain not in driver.page_source
    driver.get(f"{base}/admin/cdrs/apitoken/{token.pk}/change/")
    wait_for(driver, "#apitoken_form")
    assert plain not in driver.page_source and token.digest not in driver.page_source


def test_dashboard_in_a_browser_at_1400px_and_on_a_phone(
    live_server, browser, plain_http, django_user_model
):
    django_user_model.objects.create_superuser("root", "root@example.com", "browser-pw-123")
    call_command("seed_demo", stdout=io.StringIO())  # what bin/run loads on a fresh start
    driver = browser
    base = live_server.url
    driver.get(f"{base}/admin/login/?next=/admin/")
    driver.find_element(By.ID, "id_username").send_keys("root")
    driver.find_element(By.ID, "id_password").send_keys("browser-pw-123")
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(driver, "#dashboard-link")
    driver.find_element(By.CSS_SELECTOR, "#dashboard-link a").click()
    wait_for(driver, "#calls-chart")

    # The default range follows the data (which ends 2026-01-01): bars, not an empty chart.
    assert "2025-12-02 to 2025-12-31" in driver.find_element(By.ID, "dashboard-range").text
    bars = driver.find_elements(By.CSS_SELECTOR, "#calls-chart rect.answered")
    assert len(bars) == 30
    assert all(float(b.get_attribute("height") or 0) > 0 for b in bars)
    chart = driver.find_element(By.ID, "calls-chart")
    assert chart.size["width"] > 900  # the chart uses the page's width at 1400 px
    assert len(driver.find_elements(By.CSS_SELECTOR, "#top-trunk tbody tr")) == 5
    assert "COST" in driver.find_element(By.ID, "daily").text.upper()  # superusers see billing
    screenshot(driver, "admin-dashboard.png")

    # Another range and zone through the picker.
    for name, value in (("start", "2025-06-01"), ("end", "2025-06-07")):
        field = driver.find_element(By.ID, f"id_{name}")
        driver.execute_script("arguments[0].value = arguments[1]", field, value)
    Select(driver.find_element(By.ID, "id_tz")).select_by_value("America/New_York")
    driver.find_element(By.CSS_SELECTOR, "#dashboard-form input[type=submit]").click()
    WebDriverWait(driver, 15).until(ec.url_contains("tz=America%2FNew_York"))
    days = texts(driver, "#daily tbody tr td:first-child")
    assert days == [f"2025-06-0{d}" for d in range(1, 8)]

    # A phone: nothing wider than the screen but the tables' own scroll boxes.
    driver.set_window_size(390, 844)
    driver.refresh()
    wait_for(driver, "#calls-chart")
    page_width = driver.execute_script("return document.documentElement.scrollWidth")
    viewport = driver.execute_script("return window.innerWidth")
    assert page_width <= viewport + 1
    assert driver.find_element(By.ID, "calls-chart").size["width"] <= viewport
