"""The framework internals the platform layer relies on still exist, and no others are used."""
import importlib
import inspect
import pathlib
import re

import pytest

from services.common.internals import PRIVATE_PARTS

SERVICES = pathlib.Path(__file__).resolve().parents[2] / "services"


def _assigned_in(cls, attribute):
    """True if the class or one of its bases sets ``self.<attribute>`` in its source."""
    pattern = re.compile(r"self\.{}\s*=[^=]".format(re.escape(attribute)))
    for klass in cls.__mro__:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


@pytest.mark.parametrize("module, owner, attribute", PRIVATE_PARTS,
                         ids=["{}.{}".format(o, a) for _, o, a in PRIVATE_PARTS])
def test_each_private_part_still_exists_in_the_installed_version(module, owner, attribute):
    cls = getattr(importlib.import_module(module), owner)
    assert hasattr(cls, attribute) or _assigned_in(cls, attribute), (
        "{}.{}.{} is gone: see services/common/internals.py for what relies on it".format(module, owner, attribute))


def test_the_check_notices_a_missing_attribute():
    from nameko.containers import ServiceContainer
    assert not _assigned_in(ServiceContainer, "_no_such_pool") and not hasattr(ServiceContainer, "_no_such_pool")


# attributes with a leading underscore that are public API (namedtuple, SQLAlchemy rows)
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_mapping", "_exit", "_fields"}
# ``something._name`` where ``something`` is not self, cls or super()
_FOREIGN_ACCESS = re.compile(r"(?<![\w.])(?!self\b|cls\b)([a-z_][\w]*)\.(_[a-z]\w*)")
_SELF_ACCESS = re.compile(r"\bself\.(_[a-z]\w*)")


def test_no_other_private_attribute_of_a_framework_object_is_used():
    sources = {path: path.read_text() for path in SERVICES.rglob("*.py")}
    own = set()  # private names the project defines itself
    for text in sources.values():
        own.update(re.findall(r"def (_[a-z]\w*)", text))
        own.update(re.findall(r"^\s*(_[a-z]\w*)\s*=", text, re.M))
        own.update(re.findall(r"self\.(_[a-z]\w*)\s*=[^=]", text))
    listed = {attribute for _, _, attribute in PRIVATE_PARTS}
    unlisted = set()
    for path, text in sources.items():
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            for _, name in _FOREIGN_ACCESS.findall(code):
                if name not in own | listed | PUBLIC_UNDERSCORED:
                    unlisted.add("{}: {}".format(path.relative_to(SERVICES), name))
            # a framework attribute read on self in a subclass (self._sock in WebServer.run)
            for name in _SELF_ACCESS.findall(code):
                if name not in own | listed:
                    unlisted.add("{}: self.{}".format(path.relative_to(SERVICES), name))
    assert not unlisted, "private framework parts not listed in services/common/internals.py: {}".format(
        sorted(unlisted))
