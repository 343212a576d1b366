"""Test databases on a Citus coordinator are Citus databases too.

Django creates ``test_<name>`` with a plain ``CREATE DATABASE``, which on a Citus
coordinator gives a database without the extension and without workers: ``migrate`` would
then leave every table local and the suite would not test Citus at all. When the database
the settings name is a Citus coordinator, the test database gets the extension and the same
worker nodes (a database of the same name on each worker), so the Citus migration distributes
its tables as in production; destroying it drops the workers' databases too.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import creation

from cdrs import citus

# django-stubs leave out the private methods overridden here.
_PostgresCreation: Any = creation.DatabaseCreation


class DatabaseCreation(_PostgresCreation):
    _citus_nodes: list[tuple[str, int]] | None = None

    def _libpq_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.connection.get_connection_params()
        return params

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> str:
        # Still connected to the settings' own database: is it a Citus coordinator?
        params = self._libpq_params()
        self._citus_nodes = citus.cluster_nodes(params)
        if self._citus_nodes and not keepdb:
            self._drop_with_force(self._get_test_db_name())  # a leftover: see below
        name: str = super()._create_test_db(verbosity, autoclobber, keepdb)
        if self._citus_nodes:
            if verbosity >= 1:
                workers = ", ".join(f"{h}:{p}" for h, p in self._citus_nodes[1:])
                self.log(f"Citus: test database {name} on the coordinator and {workers}")
            citus.make_citus_database(params, name, self._citus_nodes)
        return name

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        if not self._citus_nodes:
            super()._destroy_test_db(test_database_name, verbosity)
            return
        self._drop_with_force(test_database_name)
        citus.drop_worker_databases(self._libpq_params(), test_database_name, self._citus_nodes)

    def _drop_with_force(self, name: str) -> None:
        # Citus's maintenance daemon and its cached connections keep sessions open in a
        # Citus database: a plain DROP DATABASE (Django's) fails on them.
        self.connection.close_pool()
        with self._nodb_cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {self._quote_name(name)} WITH (FORCE)")
