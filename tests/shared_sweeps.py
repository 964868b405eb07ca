"""A pytest plugin (tests/conftest.py loads it): the test modules that read a shared sweep run on
one pytest-xdist worker together, so each sweep fixture runs once a session.

Which modules those are is derived at collection from the fixtures their tests request
(`item.fixturenames`, the whole closure: a module fixture built on `smoke_sweep` counts): a new
test that asks for one joins the group without being listed anywhere. Every other module is
its own scope, as `--dist loadscope` makes it (its module fixtures computed once).

The workers collect, the controller schedules from node ids alone. So each worker writes the
modules it found to a folder the controller made (passed in `workerinput`), before it reports
its collection; the controller reads them when it splits the collection into scopes, which it
does only after every worker has reported. pytest-xdist's own `--dist loadgroup` would carry
the group in the node id, but it sets an attribute pytest 9 no longer reads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Session fixtures that run a whole sweep once per pytest process.
SHARED_SWEEPS = ("smoke_sweep", "lora_repeats")
GROUP = "shared sweeps"  # the scope name of the modules that read one
_FOLDER_KEY = "sla_sweep_shared_sweeps"
_FOLDER = pytest.StashKey[str]()  # the controller's copy of it


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def shared_sweep_modules(items) -> set[str]:
    """The test modules with a test that requests one of SHARED_SWEEPS, directly or through
    another fixture."""
    return {
        module_of(item.nodeid)
        for item in items
        if any(name in getattr(item, "fixturenames", ()) for name in SHARED_SWEEPS)
    }


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker: write the modules reading a shared sweep for the controller."""
    folder = getattr(config, "workerinput", {}).get(_FOLDER_KEY)
    if folder is None:
        return
    worker = config.workerinput["workerid"]
    part = Path(folder) / f"{worker}.json.part"
    part.write_text(json.dumps(sorted(shared_sweep_modules(items))))
    os.replace(part, part.with_suffix(""))  # whole or absent when the controller reads it


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """On the controller, per worker: the folder the workers write their modules to."""
    stash = node.config.stash
    if _FOLDER not in stash:
        stash[_FOLDER] = tempfile.mkdtemp(prefix="sla-sweep-test-groups-")
    node.workerinput[_FOLDER_KEY] = stash[_FOLDER]


def pytest_unconfigure(config):
    if _FOLDER in config.stash:
        shutil.rmtree(config.stash[_FOLDER], ignore_errors=True)


def reported_modules(folder: str) -> set[str]:
    """The modules reading a shared sweep, as the workers found them (every worker collects the
    same tests; xdist refuses to schedule otherwise)."""
    found: set[str] = set()
    for path in Path(folder).glob("*.json"):
        found.update(json.loads(path.read_text()))
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with one scope per module, and one scope for every module reading a
    shared sweep."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedSweepScopes(LoadScopeScheduling):
        _shared: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._shared is None:  # first call: every worker has reported its collection
                self._shared = reported_modules(config.stash[_FOLDER])
            module = module_of(nodeid)
            return GROUP if module in self._shared else module

    return SharedSweepScopes(config, log)
