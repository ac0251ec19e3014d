"""The public surface: ``__all__`` is exactly the public API, and everything it mentions is in it.

* ``trio_dtls_server.__all__`` lists every public name of the package and nothing else, and the
  same holds for the :mod:`trio_dtls_server.qt` submodule (the Qt example's items).
* Every class of this package that a public signature mentions -- a function's parameters and
  return type, a public method's or property's, a dataclass field, a type alias -- is exported,
  so a user can name every type they are handed or asked for.  The walker is checked against a
  shrunken export list, so this test fails when an export is removed.
* ``docs/api.rst`` documents every name of both ``__all__`` lists, and nothing that is not
  public.
* The renamed names still work, with a DeprecationWarning: the Qt items at the top level and
  ``DTLSClient.session`` / ``session=`` (now ``tls_session``).
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import trio
from support import IDENTITY, KEY, serving

import trio_dtls_server
from trio_dtls_server import DTLSClient, DTLSServer, qt

API_REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "api.rst"

#: Public classes whose constructor is not public: the library builds them (the server hands
#: a DTLSConnection to the handler; DTLSClient.connect builds the client), so the internal
#: types their ``__init__`` takes are not part of the API.  The reference hides these
#: signatures (``api.rst`` gives them as ``(...)``).
INTERNAL_CONSTRUCTORS = frozenset({"DTLSConnection", "DTLSClient"})

#: Names a user may import: what each ``__all__`` holds, by object.
MODULES = (trio_dtls_server, qt)


def public_names(module: types.ModuleType) -> set[str]:
    """Every name a reader of ``dir(module)`` takes as public: no underscore, not a submodule."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_all_lists_exactly_the_public_names(module: types.ModuleType) -> None:
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "a name is listed twice"
    assert set(exported) == public_names(module)


def test_the_qt_example_items_are_out_of_the_top_level() -> None:
    for name in qt.__all__:
        assert name not in trio_dtls_server.__all__
    # The library's default handler is still Qt's, now found in the qt submodule.
    handler = inspect.signature(DTLSServer).parameters["handler"].default
    assert handler is qt.qt_ack_handler


# -- every class a public signature mentions is exported --------------------------------------


def _classes_in(hint: object) -> Iterator[type]:
    """Every class named anywhere inside a resolved annotation (unions, generics, Callable...)."""
    stack = [hint]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
            continue
        if isinstance(item, enum.Enum):  # Literal[SomeEnum.MEMBER]
            yield type(item)
            continue
        if isinstance(item, typing.TypeVar):
            stack.extend(item.__constraints__)
            if item.__bound__ is not None:
                stack.append(item.__bound__)
            continue
        origin = typing.get_origin(item)
        if origin is not None:
            stack.append(origin)
            stack.extend(typing.get_args(item))
        elif isinstance(item, type):
            yield item
        elif isinstance(item, typing.NewType):
            stack.append(item.__supertype__)


#: Annotations may name a public class that their module imports only for type checking
#: (``qt.qt_ack_handler(connection: "DTLSConnection")``): resolve those by the public name.
_PUBLIC_NAMESPACE = {name: getattr(trio_dtls_server, name) for name in trio_dtls_server.__all__}


def _hints(obj: object) -> dict[str, object]:
    return typing.get_type_hints(obj, localns=_PUBLIC_NAMESPACE, include_extras=True)


def _members(cls: type) -> Iterator[tuple[str, Callable[..., object]]]:
    """The public methods and properties of ``cls`` (and ``__init__``), defined in this package."""
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        if name == "__init__" and cls.__name__ in INTERNAL_CONSTRUCTORS:
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            function = raw.fget
        elif isinstance(raw, staticmethod | classmethod):
            function = raw.__func__
        else:
            function = raw
        if not callable(function) or not (getattr(function, "__module__", None) or "").startswith(
            "trio_dtls_server"
        ):
            continue  # object's, trio.abc's, enum's: not ours to export
        yield name, function


def signature_classes(names: Iterable[tuple[str, object]]) -> dict[str, set[type]]:
    """For each public object, the classes of this package its signatures mention."""
    found: dict[str, set[type]] = {}
    for name, obj in names:
        hints: list[object] = []
        if inspect.isclass(obj):
            hints.extend(_hints(obj).values())  # dataclass fields and class attributes
            for _, member in _members(obj):
                hints.extend(_hints(member).values())
        elif callable(obj) and isinstance(obj, types.FunctionType):
            hints.extend(_hints(obj).values())
        else:
            hints.append(obj)  # a type alias (Handler, ClientCertificateMode) or a constant
        ours = {
            cls
            for hint in hints
            for cls in _classes_in(hint)
            if cls.__module__.startswith("trio_dtls_server")
        }
        found[name] = ours
    return found


def unexported(exported: set[str]) -> dict[str, set[str]]:
    """Classes mentioned by the signatures of ``exported`` names but not exported themselves."""
    exported_objects = {
        id(getattr(module, name))
        for module in MODULES
        for name in module.__all__
        if name in exported
    }
    objects = [
        (name, getattr(module, name))
        for module in MODULES
        for name in module.__all__
        if name in exported
    ]
    missing: dict[str, set[str]] = {}
    for name, classes in signature_classes(objects).items():
        names = {cls.__qualname__ for cls in classes if id(cls) not in exported_objects}
        if names:
            missing[name] = names
    return missing


def every_export() -> set[str]:
    return {name for module in MODULES for name in module.__all__}


def test_every_class_a_public_signature_mentions_is_exported() -> None:
    assert unexported(every_export()) == {}


def test_the_signature_walk_notices_a_missing_export() -> None:
    # Removing any of these exports must make the check above fail: each is mentioned by a
    # signature of another public name (a field, a parameter, a return type, an alias).
    mentioned_by = {
        "ServerConfig": "DTLSServer",  # DTLSServer(config: ServerConfig | None)
        "RetransmitPolicy": "ServerConfig",  # a dataclass field
        "StatisticsSnapshot": "DTLSServer",  # statistics() -> StatisticsSnapshot
        "DatagramTransport": "DTLSServer",  # serve_on(transport: DatagramTransport)
        "DTLSConnection": "Handler",  # Handler = Callable[[DTLSConnection], Awaitable[None]]
        "ProbeFailure": "ProbeResult",  # a dataclass field
        "CipherSelection": "DTLSServer",  # cipher_selection() -> CipherSelection
    }
    for removed, mentioner in mentioned_by.items():
        missing = unexported(every_export() - {removed})
        assert removed in missing.get(mentioner, set()), (removed, missing)


# -- the API reference documents all of it ----------------------------------------------------

_DIRECTIVE = re.compile(
    r"^\.\. (?:auto(?:class|function|data|exception|module)|py:data)::\s+([\w.]+)", re.MULTILINE
)


def test_the_api_reference_documents_every_public_name_and_nothing_else() -> None:
    documented = set(_DIRECTIVE.findall(API_REFERENCE.read_text(encoding="utf-8")))
    expected = {f"{module.__name__}.{name}" for module in MODULES for name in module.__all__}
    expected.add(qt.__name__)  # the submodule's own page section
    assert documented == expected


# -- renamed names: the old ones still work, with a DeprecationWarning ------------------------


@pytest.mark.parametrize("name", qt.__all__)
def test_the_old_top_level_qt_names_warn_and_still_work(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=r"trio_dtls_server\.qt"):
        value = getattr(trio_dtls_server, name)
    assert value is getattr(qt, name)
    with pytest.raises(AttributeError):
        getattr(trio_dtls_server, "no_such_name")  # noqa: B009 - a name mypy must not see


async def test_dtls_client_session_is_now_tls_session_and_the_old_names_warn() -> None:
    async with serving(DTLSServer({IDENTITY: KEY})) as running:
        async with await DTLSClient.connect(
            running.host, running.port, identity=IDENTITY, key=KEY
        ) as first:
            assert first.tls_session is not None
            with pytest.warns(DeprecationWarning, match="tls_session"):
                assert first.session is first.tls_session
        with pytest.warns(DeprecationWarning, match="tls_session="):
            second = await DTLSClient.connect(
                running.host, running.port, identity=IDENTITY, key=KEY, session=first.tls_session
            )
        async with second:
            assert second.resumed
        async with await DTLSClient.connect(
            running.host, running.port, identity=IDENTITY, key=KEY, tls_session=first.tls_session
        ) as third:
            assert third.resumed
            await third.send(b"ping")
            with trio.fail_after(10):
                assert (await third.receive()).endswith(b": ACK")
