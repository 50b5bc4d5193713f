"""local-bigquery's own command line, with one answer corrected to BigQuery's.

The local stack runs ``.venv-emulator/bin/python -P deploy/local/bigquery_emulator.py serve ...``
(Python 3.13, local-bigquery's environment: this file imports nothing of the project). It takes
the same arguments as ``local-bigquery`` and serves the same emulator, except for one answer:

Of several concurrent creates of one dataset or table, BigQuery answers one with 200 and the
others with 409 "Already Exists", which is how a writer learns that it lost a race (the engine
then compares with what the winner made). local-bigquery 0.3.2 answers some of the losers 400
invalidQuery "Failed to commit DuckLake transaction" instead: DuckDB's commit of the second
CREATE finds the first one's. Such an error (and only it: DuckDB's message names the create
and the conflict) is answered as BigQuery answers it, 409 duplicate. Nothing else is changed;
``tests/integration/test_stack.py`` checks this answer against the emulator.
"""

from __future__ import annotations

import re
import sys

from local_bigquery import errors
from local_bigquery.cli import main

# DuckDB 1.5.5 / DuckLake: 'attempting to create schema with name "d" - but another transaction
# has created a schema with this name already', 'attempting to create table "t" in schema "d" -
# but this table has been created by another transaction already'.
_LOST_CREATE = re.compile(
    r'Transaction conflict - attempting to create (?P<kind>schema|table) (?:with name )?"(?P<name>[^"]+)"'
    r'(?: in schema "(?P<schema>[^"]+)")?[^\n]*(?:another transaction|by another)'
)
_from_duckdb = errors.from_duckdb


def _from_duckdb_as_bigquery(
    error: Exception, context: object = None, tree: object = None
) -> errors.BigQueryError:
    lost = _LOST_CREATE.search(str(error))
    if lost is None:
        return _from_duckdb(error, context, tree)
    if lost["kind"] == "schema":
        return errors.already_exists("Dataset", lost["name"])
    return errors.already_exists("Table", f"{lost['schema']}.{lost['name']}")


errors.from_duckdb = _from_duckdb_as_bigquery  # what errors.from_exception calls for DuckDB errors

if __name__ == "__main__":
    sys.argv[0] = "local-bigquery"
    sys.exit(main())
