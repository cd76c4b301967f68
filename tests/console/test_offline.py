"""Every page works without internet: no template or static file points outside the server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = re.compile(r"""(?:src|href|action|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.I)
PROJECT_APPS = ("journeys", "channels_app", "agents", "experiments")


def _files():
    for base in [ROOT / "templates"] + [ROOT / app for app in PROJECT_APPS]:
        for path in base.rglob("*"):
            if path.suffix in (".html", ".css", ".js", ".txt") and "static/admin" not in str(path):
                yield path


@pytest.mark.parametrize("path", list(_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_external_url_in_templates_and_static(path):
    text = path.read_text(errors="replace")
    hits = [m.group(0) for m in EXTERNAL.finditer(text)]
    assert not hits, f"{path}: loads from outside the server: {hits}"


@pytest.mark.django_db
def test_console_static_files_are_served_by_the_app(client):
    for name in ("console/console.js", "console/console.css", "admin/css/base.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name


@pytest.mark.django_db
def test_pages_name_the_console_icon_and_favicon_ico_leads_to_it(client):
    page = client.get("/admin/login/").content.decode()
    icon = client.get("/favicon.ico")

    assert 'rel="icon" href="/static/console/favicon.svg"' in page
    assert icon.status_code == 302 and icon["Location"] == "/static/console/favicon.svg"
    served = client.get(icon["Location"])
    assert served.status_code == 200 and served["Content-Type"] == "image/svg+xml"
