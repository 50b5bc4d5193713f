"""The request-body check against BigQuery's discovery document (tests/support/discovery.py):
it must pass what BigQuery accepts and name what it would reject."""

from __future__ import annotations

from tests.support import discovery

GOOD = {
    "tableReference": {"projectId": "p", "datasetId": "d", "tableId": "t"},
    "schema": {
        "fields": [
            {"name": "id", "type": "STRING", "mode": "REQUIRED", "description": "Key."},
            {
                "name": "origin",
                "type": "RECORD",
                "mode": "REPEATED",
                "fields": [{"name": "system", "type": "STRING", "maxLength": "64"}],
            },
            {"name": "n", "type": "INT64", "policyTags": {"names": ["projects/p/x"]}},
        ]
    },
    "labels": {"domain": "tenants"},
    "timePartitioning": {"type": "DAY", "field": "day", "expirationMs": "86400000"},
    "requirePartitionFilter": True,
    "expirationTime": "1767225600000",
    "description": None,
}


def test_the_types_and_modes_come_from_the_documents_own_descriptions():
    assert {"STRING", "INTEGER", "INT64", "RECORD", "STRUCT", "JSON", "RANGE"} <= discovery.field_types()
    assert discovery.field_modes() == {"NULLABLE", "REQUIRED", "REPEATED"}


def test_a_body_bigquery_accepts_has_no_problems():
    assert discovery.problems("Table", GOOD) == []


def test_every_kind_of_problem_is_named_with_its_place():
    fields = [
        {"name": "id", "type": "STRNG"},
        {"type": "STRING"},
        {"name": "a", "type": "STRING", "mode": "OPTIONAL", "nullable": True},
        {"name": "b", "type": "RECORD", "fields": [{"name": "c", "type": "STRING", "maxLength": "ten"}]},
        {"name": "r", "type": "NUMERIC", "roundingMode": "ROUND_UP"},
    ]
    body = {"schema": {"fields": fields}, "labels": {"x": 1}, "requirePartitionFilter": "yes", "owner": "me"}

    assert sorted(discovery.problems("Table", body)) == sorted(
        [
            "Table.schema.fields[0]: type 'STRNG' is not one of " + str(sorted(discovery.field_types())),
            "Table.schema.fields[1]: 'name' is required",
            "Table.schema.fields[2]: no property 'nullable' in BigQuery's schema",
            "Table.schema.fields[2]: mode 'OPTIONAL' is not one of ['NULLABLE', 'REPEATED', 'REQUIRED']",
            "Table.schema.fields[3].fields[0].maxLength: an int64 expected, got 'ten'",
            "Table.schema.fields[4].roundingMode: 'ROUND_UP' is not one of "
            "['ROUNDING_MODE_UNSPECIFIED', 'ROUND_HALF_AWAY_FROM_ZERO', 'ROUND_HALF_EVEN']",
            "Table.labels['x']: a string expected, got 1",
            "Table.requirePartitionFilter: a boolean expected, got 'yes'",
            "Table: no property 'owner' in BigQuery's schema",
        ]
    )
