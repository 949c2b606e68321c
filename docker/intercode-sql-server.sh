#!/bin/sh
# hpl's InterCode-SQL server inside its container: MariaDB (or MySQL 8) on a unix socket only.
#   hpl-sql-server --init   create the data directory (image build)
#   hpl-sql-server          run the server; root's password is $HPL_ROOT_PASSWORD, the socket is
#                           /run/hpl/mysqld.sock (hpl bind-mounts a host directory there)
# InterCode runs MySQL with lower_case_table_names=1 (169 gold queries need it); it must be set at init.
set -eu
DATADIR=/var/lib/hpl-sql
if command -v mariadbd >/dev/null 2>&1; then SERVER=mariadbd; else SERVER=mysqld; fi
if [ "${1:-}" = --init ]; then
  if [ "$SERVER" = mariadbd ]; then
    mariadb-install-db --no-defaults --user=root --datadir=$DATADIR --lower-case-table-names=1 \
      --auth-root-authentication-method=normal --skip-test-db
  else
    mysqld --no-defaults --user=root --datadir=$DATADIR --lower-case-table-names=1 --initialize-insecure
  fi
  exit 0
fi
: "${HPL_ROOT_PASSWORD:?HPL_ROOT_PASSWORD must be set}"
umask 077  # the init file holds root's password; it lives in the bind mount, never in the image
INIT=/run/hpl/init.sql
printf "ALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\n" "$HPL_ROOT_PASSWORD" > "$INIT"
exec "$SERVER" --no-defaults --user=root --datadir=$DATADIR --lower-case-table-names=1 \
  --socket=/run/hpl/mysqld.sock --skip-networking --skip-name-resolve --max-connections=1000 \
  --init-file="$INIT"
