"""InterCode-SQL observations as InterCode's MySQL 8 recordings show them (error texts, DESCRIBE)."""

import os

import pytest

from hpl_envs import make_env
from hpl_envs.intercode_sql import compat
from hpl_envs.intercode_sql.server import find_server_binary

needs_server = pytest.mark.skipif(find_server_binary() is None and not os.environ.get("CI"),
                                  reason="no mariadbd/mysqld here (CI installs mariadb-server)")


@pytest.mark.parametrize(("mariadb", "mysql8"), [
    ("Unknown column 'id' in 'IN/ALL/ANY'", "Unknown column 'id' in 'IN/ALL/ANY subquery'"),
    ("Unknown column 'a.b' in 'SELECT'", "Unknown column 'a.b' in 'field list'"),
    ("Access denied for user 'hpl_agent'@'localhost' to database 'nodb'", "Unknown database 'nodb'"),
    ("SELECT command denied to user 'hpl_agent'@'localhost' for table `mysql`.`user`", "Unknown database 'mysql'"),
    ("execute command denied to user 'hpl_agent'@'localhost' for routine 'db.foo'", "FUNCTION db.foo does not exist"),
    ("Table 'db.t' doesn't exist", "Table 'db.t' doesn't exist"),
])
def test_error_texts(mariadb, mysql8):
    assert compat.mysql8_error(mariadb) == mysql8


def test_describe_types_bytes_or_str():
    rows = [("id", "int(11)", "NO", "PRI", None, "auto_increment"), ("flag", "tinyint(1)", "YES", "", "0", "")]
    assert compat.mysql8_schema_rows(rows) == [("id", b"int", "NO", "PRI", None, "auto_increment"),
                                               ("flag", b"tinyint(1)", "YES", "", b"0", "")]
    assert compat.mysql8_schema_rows(rows, "str") == [("id", "int", "NO", "PRI", None, "auto_increment"),
                                                      ("flag", "tinyint(1)", "YES", "", "0", "")]
    with pytest.raises(ValueError, match="describe_types"):
        compat.mysql8_schema_rows(rows, "text")


@needs_server
def test_on_the_server_failing_gold_and_error_texts():
    env = make_env("intercode-sql", max_turns=20, describe_types="str")
    try:
        env.reset(options={"task_id": "164"})  # Spider's gold SQL for task 164 is broken
        assert env.evaluate()[1]["gold_error"].startswith("Error executing query")
        env.step("SELECT 1 FROM DUAL WHERE 1 = 0")  # an empty result, as the failing gold "returns"
        assert env.step("submit")[1] == 1.0
        env.reset(options={"task_id": "0"})
        assert env.step("USE nodb")[0] == "Error executing query: Unknown database 'nodb'"
        assert env.step("SELECT * FROM mysql.user")[0] == "Error executing query: Unknown database 'mysql'"
        obs = env.step("SELECT * FROM poker_player WHERE nosuch NOT IN (SELECT people_id FROM people)")[0]
        assert obs == "Error executing query: Unknown column 'nosuch' in 'IN/ALL/ANY subquery'"
        assert env.step("DESC people")[0].startswith("[('People_ID', 'int', 'NO', 'PRI', None")
    finally:
        env.close()
    with pytest.raises(ValueError, match="describe_types"):
        make_env("intercode-sql", describe_types="text")
