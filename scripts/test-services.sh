#!/usr/bin/env bash
# Services the tests use, started on loopback: Debian's Chromium (browser tests) and
# a PostgreSQL server (store tests on PostgreSQL). Installs them when missing and
# possible (root); tests that need a missing one skip and say why.
set -uo pipefail
env_file=.test-services.env
: > "$env_file"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

if ! command -v chromium >/dev/null; then
  (as_root apt-get update -qq && as_root apt-get install -y -qq chromium fonts-dejavu-core) >/dev/null 2>&1 \
    || echo "test-services: chromium not installed; browser tests will skip"
fi

if ! command -v pg_ctlcluster >/dev/null; then
  (as_root apt-get update -qq && as_root apt-get install -y -qq postgresql) >/dev/null 2>&1 \
    || echo "test-services: postgresql not installed; PostgreSQL tests will skip"
fi
if command -v pg_ctlcluster >/dev/null; then
  cluster=$(pg_lsclusters -h 2>/dev/null | head -n1)
  if [ -n "$cluster" ]; then
    set -- $cluster
    as_root pg_ctlcluster "$1" "$2" start >/dev/null 2>&1 || true
    port=$3
    if as_root su postgres -c "psql -p $port -tAc \"select 1\"" >/dev/null 2>&1; then
      as_root su postgres -c "psql -p $port -qc \"do \\\$\\\$ begin if not exists (select from pg_roles where rolname='qualflow') then create role qualflow login superuser password 'qualflow'; end if; end \\\$\\\$;\"" >/dev/null
      as_root su postgres -c "psql -p $port -qc 'drop database if exists qualflow_test'" >/dev/null
      as_root su postgres -c "psql -p $port -qc 'create database qualflow_test owner qualflow'" >/dev/null
      echo "export QUALFLOW_TEST_POSTGRES_URL=postgresql+psycopg://qualflow:qualflow@127.0.0.1:$port/qualflow_test" >> "$env_file"
      echo "test-services: PostgreSQL on 127.0.0.1:$port"
    fi
  fi
fi
exit 0
