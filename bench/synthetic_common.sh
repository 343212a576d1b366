# Sourced by the SQL-generated benchmark databases (synthetic_10m.sh, partitions_10m.sh,
# prune_1m.sh) after they set DB: the connection, a fresh database, and the steps after a
# bulk INSERT that bypassed the service (row counter, both rollups, VACUUM ANALYZE).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SECRET_KEY=${SECRET_KEY:-bench-only-secret-key-not-for-production-0123456789}
URL=postgres://postgres@127.0.0.1:5432/$DB
P="psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q"

fresh_database() {
  $P -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  $P -c "CREATE DATABASE $DB"
}

# The counter and the rollups from the rows as they are, then VACUUM ANALYZE.
recount_and_analyze() {
  echo "$(date +%T) counter and rollups"
  $P -d "$DB" -c "DELETE FROM cdrs_counter; INSERT INTO cdrs_counter (slot, rows) SELECT 0, count(*) FROM cdrs_cdr"
  DATABASE_URL=$URL .venv/bin/python manage.py shell -v0 -c "from cdrs import rollup
from django.db import transaction
with transaction.atomic(): rollup.rebuild()"
  echo "$(date +%T) vacuum analyze"
  $P -d "$DB" -c "VACUUM ANALYZE"
}
