"""The bootstrap request: parsing (every field, every mistake), the three consents a forced
recreation needs, and the choice of tables.

Over 400 lines: a corpus of requests, one case each.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from function.config import Settings
from function.errors import RefusedError, RequestError
from function.gate import check_consents, select_tables
from function.model import Column, DeclaredState, TableSpec
from function.request import MAX_DATA_BYTES, BootstrapRequest, parse_request


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data", [b"", b"  \n", b"{}", b" { } "], ids=["empty", "whitespace", "{}", "{} padded"]
)
def test_empty_data_or_empty_object_ensures_every_table(data: bytes) -> None:
    assert parse_request(data, "msg-1") == BootstrapRequest(
        request_id="msg-1",
        tables=None,
        dry_run=False,
        force_recreate_tables=False,
        force_recreate_dataset=False,
        confirm=None,
    )


def test_every_field_is_parsed() -> None:
    data = _json(
        {
            "request_id": "deploy-2024-05-01#7",
            "tables": ["tenant_profiles", "tenant_api_keys"],
            "dry_run": True,
            "force_recreate_tables": True,
            "force_recreate_dataset": False,
            "confirm": "tenants",
        }
    )
    request = parse_request(data, "msg-1")
    assert request == BootstrapRequest(
        request_id="deploy-2024-05-01#7",
        tables=("tenant_profiles", "tenant_api_keys"),
        dry_run=True,
        force_recreate_tables=True,
        force_recreate_dataset=False,
        confirm="tenants",
    )
    assert request.destructive is True


def test_dataset_force_is_destructive_and_null_fields_take_their_defaults() -> None:
    request = parse_request(
        _json({"force_recreate_dataset": True, "confirm": "tenants", "tables": None, "request_id": "r"}), "m"
    )
    assert request.destructive is True
    assert request.force_recreate_tables is False
    assert request.tables is None
    assert parse_request(_json({"dry_run": False}), "m").destructive is False


@pytest.mark.parametrize(
    ("data", "phrases"),
    [
        pytest.param(
            b"{tables: [x]}", ["the message data is not JSON", "send a JSON object such as {}"], id="not JSON"
        ),
        pytest.param(b"\xff\xfe{", ["the message data is not JSON"], id="not UTF-8"),
        pytest.param(b'["tenant_profiles"]', ["must be a JSON object, not a JSON array"], id="JSON array"),
        pytest.param(b'"ensure"', ["must be a JSON object, not a JSON string"], id="JSON string"),
        pytest.param(b"null", ["must be a JSON object, not a JSON null"], id="JSON null"),
        pytest.param(b"42", ["must be a JSON object, not a JSON number"], id="JSON number"),
        pytest.param(b"true", ["must be a JSON object, not a JSON boolean"], id="JSON boolean"),
        pytest.param(
            _json({"force_recreate_table": True, "confirm": "tenants"}),
            [
                "unknown field(s) force_recreate_table",
                "allowed: request_id, tables, dry_run, force_recreate_tables, force_recreate_dataset, confirm, accept_losses, drop_columns, rows",
            ],
            id="unknown field (typo)",
        ),
        pytest.param(
            _json({"dryrun": True, "Tables": ["a"]}),
            ["unknown field(s) Tables, dryrun"],
            id="two unknown fields",
        ),
        pytest.param(
            _json({"dry_run": "true"}),
            ['dry_run must be a boolean (true or false), not "true"'],
            id="dry_run a string",
        ),
        pytest.param(
            _json({"dry_run": 1}), ["dry_run must be a boolean (true or false), not 1"], id="dry_run a number"
        ),
        pytest.param(
            _json({"tables": "x"}), ['tables must be a list of names, not "x"'], id="tables a string"
        ),
        pytest.param(
            _json({"tables": [1]}), ["tables holds invalid table names: [1]"], id="tables holds a number"
        ),
        pytest.param(
            _json({"force_recreate_tables": 1, "confirm": "tenants"}),
            ["force_recreate_tables must be a boolean (true or false), not 1"],
            id="force flag a number",
        ),
        pytest.param(
            _json({"force_recreate_dataset": "yes", "confirm": "tenants"}),
            ['force_recreate_dataset must be a boolean (true or false), not "yes"'],
            id="dataset force flag a string",
        ),
        pytest.param(
            _json({"force_recreate_tables": True, "confirm": 5}),
            ["confirm must be a string, not 5"],
            id="confirm a number",
        ),
        pytest.param(
            _json({"request_id": 17}), ["request_id must be a string, not 17"], id="request_id a number"
        ),
        pytest.param(
            _json({"request_id": True}), ["request_id must be a string, not true"], id="request_id a boolean"
        ),
        pytest.param(
            _json({"tables": []}),
            ["tables is empty; omit it to ensure every table, or name at least one"],
            id="empty tables",
        ),
        pytest.param(
            _json({"tables": ["tenant_profiles", "tenant_profiles"]}),
            ["tables names a table twice"],
            id="duplicate tables",
        ),
        pytest.param(
            _json({"tables": ["a/b"]}), ['tables holds invalid table names: ["a/b"]'], id="table name a/b"
        ),
        pytest.param(
            _json({"tables": ["ok", "../x", "a b"]}),
            ['tables holds invalid table names: ["../x", "a b"]'],
            id="table name ../x",
        ),
        pytest.param(
            _json({"request_id": "deploy 42"}),
            ["request_id must be 1-256 characters: letters, digits and ._:/#@+=-"],
            id="request_id with a space",
        ),
        pytest.param(
            _json({"request_id": "x" * 257}),
            ["request_id must be 1-256 characters"],
            id="request_id too long",
        ),
        pytest.param(
            _json({"request_id": ""}), ["request_id must be 1-256 characters"], id="request_id empty"
        ),
        pytest.param(
            _json({"confirm": "tenants"}),
            [
                "confirm is given but no force flag is set (nor drop_columns); remove it, or set the flag it confirms"
            ],
            id="confirm without a force flag",
        ),
        pytest.param(
            _json({"confirm": "tenants", "force_recreate_tables": False}),
            ["confirm is given but no force flag is set"],
            id="confirm with the force flag false",
        ),
        pytest.param(
            _json({"force_recreate_dataset": True, "confirm": "tenants", "tables": ["a"], "request_id": "r"}),
            ["force_recreate_dataset recreates every declared table, so it cannot take tables"],
            id="dataset recreation limited to some tables",
        ),
        pytest.param(
            _json({"force_recreate_tables": True, "confirm": "tenants"}),
            ["a destructive request needs its own request_id"],
            id="destructive request without a request_id",
        ),
        pytest.param(
            _json({"force_recreate_dataset": True, "confirm": "tenants"}),
            ["a destructive request needs its own request_id"],
            id="dataset recreation without a request_id",
        ),
        pytest.param(
            _json(
                {
                    "force_recreate_tables": True,
                    "confirm": "tenants",
                    "request_id": "r",
                    "accept_losses": ["v"],
                }
            ),
            ["accept_losses applies only to force_recreate_dataset"],
            id="accept_losses without a dataset recreation",
        ),
        pytest.param(
            _json(
                {"force_recreate_dataset": True, "confirm": "tenants", "request_id": "r", "accept_losses": []}
            ),
            ["accept_losses must name at least one dataset object"],
            id="accept_losses empty",
        ),
        pytest.param(
            _json(
                {
                    "force_recreate_dataset": True,
                    "confirm": "tenants",
                    "request_id": "r",
                    "accept_losses": ["a b"],
                }
            ),
            ["accept_losses must name at least one dataset object"],
            id="accept_losses with an invalid name",
        ),
        pytest.param(
            _json({"tables": ["a" * 10] * 7000}),
            [f"bytes; a bootstrap request is at most {MAX_DATA_BYTES}"],
            id="oversized data",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_reason(data: bytes, phrases: list[str]) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(data, "msg-1")
    for phrase in phrases:
        assert phrase in str(info.value)


def test_oversized_data_is_refused_before_it_is_parsed() -> None:
    data = b" " * (MAX_DATA_BYTES + 1)  # would be "ensure all" if it were parsed
    with pytest.raises(RequestError, match=f"the message data is {MAX_DATA_BYTES + 1} bytes"):
        parse_request(data, "m")
    assert parse_request(b" " * MAX_DATA_BYTES, "m").tables is None


def test_several_errors_are_reported_together() -> None:
    data = _json(
        {"dry_run": "false", "tables": [], "request_id": "has space", "confirm": "tenants", "forse": 1}
    )
    with pytest.raises(RequestError) as info:
        parse_request(data, "m")
    message = str(info.value)
    assert message.startswith("invalid bootstrap request: ")
    for phrase in (
        "unknown field(s) forse",
        'dry_run must be a boolean (true or false), not "false"',
        "request_id must be 1-256 characters",
        "tables is empty",
        "confirm is given but no force flag is set",
    ):
        assert phrase in message
    assert message.count("; ") >= 4


def test_a_dry_run_of_a_destructive_request_needs_no_request_id() -> None:
    request = parse_request(
        _json({"force_recreate_tables": True, "confirm": "tenants", "dry_run": True}), "m"
    )
    assert request.request_id == "m"


def test_accepted_losses_are_kept_sorted_once() -> None:
    request = parse_request(
        _json(
            {
                "request_id": "r",
                "force_recreate_dataset": True,
                "confirm": "tenants",
                "accept_losses": ["v2", "v1", "v2"],
            }
        ),
        "m",
    )
    assert request.accept_losses == ("v1", "v2")


def test_the_digest_names_the_body_not_the_id() -> None:
    forced = {"force_recreate_tables": True, "confirm": "tenants", "tables": ["a"]}
    one = parse_request(_json({**forced, "request_id": "r1"}), "m")
    same_body = parse_request(_json({**forced, "request_id": "r2"}), "m")
    other_body = parse_request(_json({**forced, "tables": ["b"], "request_id": "r1"}), "m")
    assert one.digest == same_body.digest
    assert one.digest != other_body.digest


def test_request_errors_are_permanent() -> None:
    from function.errors import PermanentError

    assert issubclass(RequestError, PermanentError)
    assert issubclass(RefusedError, PermanentError)


# --- check_consents: the three consents ---------------------------------------------------------------


def _settings(allow: bool) -> Settings:
    env = {"GOOGLE_CLOUD_PROJECT": "local-project", "ALLOW_DESTRUCTIVE": "true" if allow else "false"}
    return Settings.from_env(env)


def _request(**fields: object) -> BootstrapRequest:
    return parse_request(_json({"request_id": "r", **fields}), "m")


@pytest.mark.parametrize(
    ("fields", "allow", "phrases"),
    [
        pytest.param(
            {"force_recreate_tables": True},
            True,
            ['set "confirm": "tenants" (the dataset id) to confirm what it destroys'],
            id="force without confirm",
        ),
        pytest.param(
            {"force_recreate_tables": True, "confirm": "Tenants"},
            True,
            ['set "confirm": "tenants"'],
            id="confirm in the wrong case",
        ),
        pytest.param(
            {"force_recreate_dataset": True, "confirm": "prod"},
            True,
            ['set "confirm": "tenants"'],
            id="confirm names another dataset",
        ),
        pytest.param(
            {"force_recreate_tables": True, "confirm": "tenants"},
            False,
            ["this deployment does not allow destructive requests (ALLOW_DESTRUCTIVE is not true)"],
            id="ALLOW_DESTRUCTIVE off",
        ),
        pytest.param(
            {"force_recreate_dataset": True},
            False,
            ['set "confirm": "tenants"', "ALLOW_DESTRUCTIVE is not true"],
            id="neither consent",
        ),
    ],
)
def test_forced_recreation_without_all_consents_is_refused(
    fields: dict, allow: bool, phrases: list[str]
) -> None:
    with pytest.raises(RefusedError) as info:
        check_consents(_request(**fields), _settings(allow))
    message = str(info.value)
    assert message.startswith("refused to recreate anything: ")
    assert message.endswith("Nothing was changed.")
    for phrase in phrases:
        assert phrase in message


@pytest.mark.parametrize("flag", ["force_recreate_tables", "force_recreate_dataset"])
def test_all_three_consents_pass(flag: str) -> None:
    check_consents(_request(**{flag: True, "confirm": "tenants"}), _settings(allow=True))


def test_dry_run_with_force_and_confirm_needs_no_deployment_consent() -> None:
    check_consents(
        _request(force_recreate_tables=True, confirm="tenants", dry_run=True), _settings(allow=False)
    )


def test_dry_run_still_needs_confirm() -> None:
    with pytest.raises(RefusedError, match='set "confirm": "tenants"'):
        check_consents(_request(force_recreate_tables=True, dry_run=True), _settings(allow=False))


def test_a_request_without_force_needs_no_consent() -> None:
    check_consents(_request(), _settings(allow=False))
    check_consents(_request(dry_run=True, tables=["a"]), _settings(allow=False))


def test_confirm_follows_the_configured_dataset() -> None:
    settings = Settings.from_env(
        {"GOOGLE_CLOUD_PROJECT": "p-123", "BOOTSTRAP_DATASET": "prod", "ALLOW_DESTRUCTIVE": "1"}
    )
    check_consents(_request(force_recreate_tables=True, confirm="prod"), settings)
    with pytest.raises(RefusedError, match='set "confirm": "prod"'):
        check_consents(_request(force_recreate_tables=True, confirm="tenants"), settings)


# --- select_tables ------------------------------------------------------------------------------

DECLARED = DeclaredState(
    "",
    (),
    {name: TableSpec(name, (Column("tenant_id", "STRING"),)) for name in ("b_table", "a_table", "c_table")},
)


def test_select_all_tables_in_name_order() -> None:
    assert select_tables(DECLARED, None) == ["a_table", "b_table", "c_table"]


def test_select_a_subset_in_the_order_asked() -> None:
    assert select_tables(DECLARED, ("c_table", "a_table")) == ["c_table", "a_table"]


def test_select_unknown_table_names_the_declared_ones() -> None:
    with pytest.raises(RequestError) as info:
        select_tables(DECLARED, ("a_table", "tenant_profile", "zzz"))
    assert str(info.value) == (
        "unknown table(s) tenant_profile, zzz; the schema source declares: a_table, b_table, c_table"
    )


def test_a_mistyped_table_gets_a_suggestion() -> None:
    with pytest.raises(RequestError, match=r"unknown table\(s\) b_tabel \(did you mean b_table\?\)"):
        select_tables(DECLARED, ("b_tabel",))


# --- drop_columns and rows ------------------------------------------------------------------------


def test_drop_columns_is_destructive_and_needs_the_same_three_consents() -> None:
    request = _request(drop_columns=True)
    assert request.destructive is True
    with pytest.raises(RefusedError) as info:
        check_consents(request, _settings(allow=False))
    message = str(info.value)
    assert message.startswith("refused to drop any column: ")
    assert 'set "confirm": "tenants"' in message and "ALLOW_DESTRUCTIVE is not true" in message
    check_consents(_request(drop_columns=True, confirm="tenants"), _settings(allow=True))


def test_drop_columns_needs_its_own_request_id() -> None:
    with pytest.raises(RequestError, match="a destructive request needs its own request_id"):
        parse_request(_json({"drop_columns": True, "confirm": "tenants"}), "m")


def test_a_forced_recreation_keeps_the_rows_unless_told_to_discard_them() -> None:
    forced = {"force_recreate_tables": True, "confirm": "tenants"}
    assert _request(**forced).keeps_rows is True
    assert _request(**forced, rows="keep").keeps_rows is True
    assert _request(**forced, rows="discard").keeps_rows is False
    assert _request().keeps_rows is False  # nothing is recreated


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        pytest.param(
            {"force_recreate_tables": True, "confirm": "tenants", "rows": "all"},
            'rows must be "keep" or "discard", not "all"',
            id="unknown rows",
        ),
        pytest.param({"rows": "discard"}, "rows applies only to force_recreate_tables", id="rows alone"),
        pytest.param(
            {"force_recreate_dataset": True, "confirm": "tenants", "rows": "keep"},
            "rows applies only to force_recreate_tables",
            id="rows with a dataset recreation",
        ),
        pytest.param({"drop_columns": "yes"}, "drop_columns must be a boolean", id="drop_columns a string"),
    ],
)
def test_bad_rows_or_drop_columns_are_refused(fields: dict, phrase: str) -> None:
    with pytest.raises(RequestError, match=re.escape(phrase)):
        _request(**fields)


def test_the_new_fields_leave_the_digest_of_a_request_that_does_not_set_them() -> None:
    forced = _request(force_recreate_tables=True, confirm="tenants")
    assert forced.digest == _request(force_recreate_tables=True, confirm="tenants", rows="keep").digest
    assert forced.digest != _request(force_recreate_tables=True, confirm="tenants", rows="discard").digest
    # The digest of this body as it was computed before drop_columns and rows existed.
    body = {
        "tables": None,
        "dry_run": False,
        "force_recreate_tables": True,
        "force_recreate_dataset": False,
        "confirm": "tenants",
        "accept_losses": [],
    }
    assert forced.digest == "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
