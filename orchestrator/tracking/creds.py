"""A tracking URI's credentials stay out of everything a sweep writes or prints.

MLflow reads a server's credentials from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD /
MLFLOW_TRACKING_TOKEN or from ~/.mlflow/credentials by itself. A URI written as
`http://user:password@host:port` works too: its user and password move into those variables
(where the environment does not already set them) and the sweep goes on with the bare URI, which
is the one printed, stored in sweep.json and spec.yaml, and handed to Tune's callback. (A
database URI keeps its credentials: the database reads them from it.)
"""

from __future__ import annotations

import copy
import dataclasses
import os
from urllib.parse import unquote, urlsplit, urlunsplit

USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def public_uri(uri: str) -> str:
    """`uri` without any user:password@ (every other part as it is)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def move_credentials_to_env(uri: str) -> str:
    """A server URI's user and password into MLflow's variables (those already set win); the
    bare URI. A database URI stays as it is: the database reads its credentials from it."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    if parts.username:
        os.environ.setdefault(USER_ENV, unquote(parts.username))
    if parts.password:
        os.environ.setdefault(PASSWORD_ENV, unquote(parts.password))
    return public_uri(uri)


def without_credentials(spec):
    """The ExperimentSpec with its tracking URI bare (and its credentials in the environment),
    in `storage` and in the source that spec.yaml is written from."""
    uri = spec.storage.tracking_uri
    bare = move_credentials_to_env(uri)
    if bare == uri:
        return spec
    source = copy.deepcopy(spec.source)
    if isinstance(source.get("storage"), dict) and "tracking_uri" in source["storage"]:
        source["storage"]["tracking_uri"] = bare
    storage = dataclasses.replace(spec.storage, tracking_uri=bare)
    return dataclasses.replace(spec, storage=storage, source=source)
