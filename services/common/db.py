"""Each service's own database, through nameko-sqlalchemy.

nameko-sqlalchemy never reads engine options from config, so this subclass
sets the ones that matter here: a pool at least as large as the worker pool
(a connection per concurrent worker, no churn), pre-ping so a restarted
PostgreSQL is survived without a service restart, and for SQLite the WAL
journal and a busy timeout so readers never block the writer.
"""
import re

from nameko_sqlalchemy import Database
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker
from nameko_sqlalchemy.database import Session

DB_URIS_KEY = "DB_URIS"


def engine_options(uri, max_workers=10):
    if uri.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {
        "pool_size": max_workers + 2,
        "max_overflow": max_workers,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 5},
    }


def with_green_driver(uri):
    """Plain ``postgresql://`` URIs use psycopg2, which eventlet makes cooperative.

    SQLAlchemy 2.1 would pick psycopg 3, which blocks the whole process (and
    with it AMQP heartbeats) during every query under eventlet.
    """
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix):]
    return uri


def make_engine(uri, max_workers=10):
    uri = with_green_driver(uri)
    engine = create_engine(uri, **engine_options(uri, max_workers))
    if uri.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def database_uri(config, service_name, base_name):
    return config[DB_URIS_KEY]["{}:{}".format(service_name, base_name)]


def redact(uri):
    """A URI fit for logs: the password replaced."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", uri)


class ServiceDatabase(Database):
    def setup(self):
        config = self.container.config
        service_name = self.container.service_name
        self.db_uri = database_uri(config, service_name, self.declarative_base.__name__)
        self.engine = make_engine(self.db_uri, int(config.get("max_workers", 10)))
        self.Session = sessionmaker(
            bind=self.engine, class_=Session, expire_on_commit=False, **self.session_options
        )
