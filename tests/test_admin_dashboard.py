"""The admin dashboard: staff only, cost only with view_billing, figures equal to the API's."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from cdrs.admin.dashboard import api_params
from tests.factories import cdr_payload, create_cdrs, create_generated

pytestmark = pytest.mark.django_db

URL = "/admin/dashboard/"


class _Rows(HTMLParser):
    """data-* attributes of the <tr> rows of one table, by the table's id."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.inside = False
        self.rows: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "table":
            self.inside = named.get("id") == self.table_id
        elif tag == "tr" and self.inside and any(k.startswith("data-") for k in named):
            self.rows.append({k[5:]: v or "" for k, v in named.items() if k.startswith("data-")})

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False


def table(html: str, table_id: str) -> list[dict[str, str]]:
    parser = _Rows(table_id)
    parser.feed(html)
    return parser.rows


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ops", password="pw-123456", is_staff=True)


def test_staff_only(client, django_user_model):
    assert client.get(URL).status_code == 302  # to the login page
    django_user_model.objects.create_user("someone", password="pw-123456")
    client.force_login(django_user_model.objects.get(username="someone"))
    response = client.get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_figures_equal_the_api_for_the_same_range(client, staff, api_client):
    create_generated(200, seed=4)  # the 365 days before 2026-01-01
    create_cdrs(cdr_payload(started=datetime(2025, 12, 20, 23, 30, tzinfo=UTC), trunk="sipgate"))
    staff.user_permissions.add(Permission.objects.get(codename="view_billing"))
    client.force_login(staff)
    query = {"start": "2025-11-15", "end": "2025-12-31", "tz": "Europe/Berlin"}
    response = client.get(URL, query)
    assert response.status_code == 200
    html = response.content.decode()

    api = api_client(scopes=("read", "billing"))
    params = api_params(date(2025, 11, 15), date(2025, 12, 31), "Europe/Berlin")
    days = json.loads(
        api.get("/api/cdrs/stats", {**params, "group_by": "day"}).content, parse_float=Decimal
    )
    page_days = table(html, "daily")
    assert len(page_days) == 47 == len(days["items"])
    for row, item in zip(page_days, days["items"], strict=True):
        assert row["day"] == item["key"]["day"]
        assert int(row["calls"]) == item["calls"] and int(row["answered"]) == item["answered"]
        assert Decimal(row["asr"]) == item["asr"] and Decimal(row["acd"]) == item["acd"]
        assert Decimal(row["avg-pdd"]) == item["avg_pdd"]
        assert Decimal(row["cost"]) == item["cost"]
    assert sum(int(r["calls"]) for r in page_days) == days["total"]["calls"] > 0

    trunks = json.loads(api.get("/api/cdrs/stats", {**params, "group_by": "trunk"}).content)
    page_trunks = table(html, "top-trunk")
    assert [(r["key"], int(r["calls"])) for r in page_trunks] == [
        (i["key"]["trunk"] or "(none)", i["calls"]) for i in trunks["items"][:10]
    ]
    assert len(re.findall(r'<rect class="answered"', html)) == 47  # one bar per day


def test_cost_only_with_view_billing(client, staff):
    create_cdrs(cdr_payload(started=timezone.now() - timedelta(days=1), cost=Decimal("1.5")))
    client.force_login(staff)
    html = client.get(URL).content.decode()
    assert "data-cost" not in html and ">Cost<" not in html and "1.500000" not in html
    staff.user_permissions.add(Permission.objects.get(codename="view_billing"))
    html = client.get(URL).content.decode()
    assert ">Cost<" in html and "1.500000" in html


def test_default_range_is_the_last_30_days_or_follows_older_data(client, staff):
    client.force_login(staff)
    create_cdrs(cdr_payload(started=datetime(2025, 12, 31, 12, tzinfo=UTC)))  # demo data's end
    html = client.get(URL).content.decode()
    assert "2025-12-02 to 2025-12-31 (UTC)" in html  # the 30 days up to the newest call
    assert sum(int(r["calls"]) for r in table(html, "daily")) == 1
    create_cdrs(cdr_payload(started=timezone.now()))
    html = client.get(URL).content.decode()
    today = timezone.now().date()
    assert f"{today - timedelta(days=29):%Y-%m-%d} to {today:%Y-%m-%d}" in html


@pytest.mark.parametrize(
    "query",
    [
        {"tz": "Mars/Olympus"},
        {"start": "2025-13-01"},
        {"start": "2025-12-31", "end": "2025-01-01"},
        {"start": "2020-01-01", "end": "2025-01-01"},
    ],
)
def test_bad_input_is_a_message_not_an_error(client, staff, query):
    client.force_login(staff)
    response = client.get(URL, query)
    assert response.status_code == 200
    html = response.content.decode()
    assert "errorlist" in html or "errornote" in html
    assert 'id="daily"' not in html


def test_linked_from_the_admin_index(client, staff):
    client.force_login(staff)
    assert f'href="{URL}"' in client.get("/admin/").content.decode()
