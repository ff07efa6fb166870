"""The checked-in OpenAPI document (docs/openapi.json) is the app's, and says what it must."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.api.app import API_PREFIX, TITLE, main, offline_app, openapi_document

DOC = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
REGENERATE = "python -m gateway.api.app --openapi > docs/openapi.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document(offline_app())


def test_the_checked_in_document_is_current(document: dict[str, Any]) -> None:
    checked_in = json.loads(DOC.read_text(encoding="utf-8"))
    assert checked_in == json.loads(json.dumps(document)), (
        f"docs/openapi.json is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--openapi"]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["title"] == TITLE


def test_it_is_served(document: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient  # noqa: PLC0415

    with TestClient(offline_app()) as client:
        served = client.get(f"{API_PREFIX}/openapi.json")
        assert served.status_code == 200
        assert served.json() == json.loads(json.dumps(document))
        assert client.get(f"{API_PREFIX}/docs").status_code == 200


REQUIRED = [
    "/user",
    "/user/vehicles",
    "/user/vehicles/{id}",
    "/user/vehicles/{id}/status",
    "/user/vehicles/{id}/lastPosition",
    "/user/vehicles/{id}/telemetry",
    "/user/vehicles/{id}/trips",
    "/user/vehicles/{id}/trips/{tid}",
    "/user/vehicles/{id}/trips/{tid}/wayPoints",
    "/user/vehicles/{id}/trips/{tid}/telemetry",
    "/user/vehicles/{id}/trips/{tid}/alerts",
    "/user/vehicles/{id}/trips/{tid}/alerts/{aid}",
    "/user/vehicles/{id}/trips/{tid}/collisions",
    "/user/vehicles/{id}/trips/{tid}/collisions/{cid}",
    "/user/vehicles/{id}/alerts",
    "/user/vehicles/{id}/alerts/{aid}",
    "/user/vehicles/{id}/collisions",
    "/user/vehicles/{id}/collisions/{cid}",
    "/user/vehicles/{id}/maintenance",
    "/user/vehicles/{id}/alarms",
    "/user/vehicles/{id}/alarms/{aid}",
    "/user/callbacks",
    "/user/callbacks/{cbid}",
    "/user/callbacks/{cbid}/status",
    "/user/vehicles/{id}/callbacks/{cbid}/monitors",
    "/user/vehicles/{id}/callbacks/{cbid}/monitors/{mid}",
    "/user/vehicles/{id}/callbacks/{cbid}/monitors/{mid}/status",
    "/fleets",
    "/fleets/{fid}",
    "/fleets/{fid}/vehicles",
    "/fleets/{fid}/vehicles/{vid}",
    "/fleets/{fid}/vehicles/{vid}/status",
    "/fleets/{fid}/vehicles/{vid}/lastPosition",
    "/fleets/{fid}/vehicles/{vid}/telemetry",
    "/fleets/{fid}/vehicles/{vid}/alerts/{aid}",
    "/fleets/{fid}/vehicles/{vid}/collisions/{cid}",
    "/fleets/{fid}/vehicles/{vid}/maintenance",
    "/fleets/{fid}/vehicles/{vid}/alarms/{aid}",
    "/fleets/{fid}/vehicles/{vid}/trips/{tid}/wayPoints",
    "/fleets/{fid}/vehicles/{vid}/trips/{tid}/telemetry",
    "/fleets/{fid}/vehicles/{vid}/trips/{tid}/alerts/{aid}",
    "/fleets/{fid}/vehicles/{vid}/trips/{tid}/collisions/{cid}",
    "/fleets/{fid}/status",
    "/fleets/{fid}/alerts/{aid}",
    "/fleets/{fid}/collisions/{cid}",
    "/fleets/{fid}/trips",
    "/fleets/{fid}/maintenances",
    "/fleets/{fid}/monitors/{mid}/status",
    "/fleets/{fid}/remote/callbacks/{cbid}/status",
]


def test_every_path_is_there(document: dict[str, Any]) -> None:
    paths = document["paths"]
    missing = [p for p in REQUIRED if f"{API_PREFIX}{p}" not in paths]
    assert missing == []
    assert "/oauth2/token" in paths


def test_errors_are_documented_and_there_is_no_422(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status in ("400", "401", "403", "404", "429"):
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
            assert operation.get("security"), (method, path)


def test_media_types(document: dict[str, Any]) -> None:
    paths = document["paths"]
    status = paths[f"{API_PREFIX}/user/vehicles/{{id}}/status"]["get"]["responses"]["200"]
    assert list(status["content"]) == ["application/hal+json"]
    position = paths[f"{API_PREFIX}/user/vehicles/{{id}}/lastPosition"]["get"]["responses"]["200"]
    assert set(position["content"]) == {"application/vnd.geo+json", "application/hal+json"}
    waypoints = paths[f"{API_PREFIX}/user/vehicles/{{id}}/trips/{{tid}}/wayPoints"]["get"]
    geo = waypoints["responses"]["200"]["content"]["application/vnd.geo+json"]["schema"]
    assert geo == {"$ref": "#/components/schemas/PositionCollection"}
    assert document["info"]["version"] == "4.x"
