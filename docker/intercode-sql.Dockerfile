# MySQL 8 with InterCode's Spider databases baked in, for hpl's `docker` InterCode-SQL backend.
# The dump is data, not part of this repository: build with the data folder as context,
#   docker build -f docker/intercode-sql.Dockerfile -t hpl-intercode-sql:latest "$HPL_DATA_DIR/intercode_sql"
# hpl starts it with a random root password on a free 127.0.0.1 port (backend="docker").
FROM mysql:8.0
ENV MYSQL_ROOT_HOST=%
# drop the dump's own admin/admin account; hpl creates a read-only agent account itself
COPY ic_spider_dbs.sql /tmp/ic_spider_dbs.sql
RUN sed -E '/^\s*(CREATE USER|GRANT|FLUSH PRIVILEGES)/d' /tmp/ic_spider_dbs.sql \
      > /docker-entrypoint-initdb.d/01-spider.sql && rm /tmp/ic_spider_dbs.sql
# InterCode runs MySQL with lower_case_table_names=1 (169 gold queries need it); it must be set at init
CMD ["mysqld", "--lower_case_table_names=1"]
