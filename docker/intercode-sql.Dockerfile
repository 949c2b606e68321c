# InterCode-SQL server for hpl's `docker` backend: MariaDB (default) or MySQL 8 on a unix socket only,
# lower_case_table_names=1, an empty data directory made at build. hpl builds this (context: this
# folder), starts it once with --network none, loads the Spider dump and the read-only agent account
# with the same code as its local backend, and commits the result as hpl-intercode-sql:<content hash>.
#   python -m hpl_envs.intercode_sql.servers.docker build                 # offline MariaDB base
#   python -m hpl_envs.intercode_sql.servers.docker build --base mysql:8.0  # needs a registry
# BASE must have mariadbd (+ mariadb-install-db) or mysqld, and /bin/sh. The default,
# hpl-mariadb-base:bookworm, is made offline by hpl from Debian packages:
#   mmdebstrap --variant=minbase --include=mariadb-server,mariadb-client bookworm rootfs.tar
#   docker import rootfs.tar hpl-mariadb-base:bookworm
ARG BASE=hpl-mariadb-base:bookworm
FROM ${BASE}
COPY intercode-sql-server.sh /usr/local/bin/hpl-sql-server
RUN chmod 755 /usr/local/bin/hpl-sql-server && /usr/local/bin/hpl-sql-server --init
ENTRYPOINT ["/usr/local/bin/hpl-sql-server"]
CMD []
