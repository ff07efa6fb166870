"""Load network descriptions (DBC, KCD, ARXML, SYM) through cantools, repairing what can be.

The format is chosen by the file's extension (``.dbc .kcd .arxml .sym``) or by an explicit
``database_format=``; nothing is guessed. Text is read as UTF-8 and, when that fails, as
cp1252 (the encoding of DBC files written on Windows); the encoding used for each file is
stated in the :class:`LoadReport`. KCD and ARXML are XML and read as UTF-8 only.

Real files have faults. With ``repair=True`` (the default) three are repaired and reported:

- a message or signal name that starts with a digit (``0_COUNTER``: DBC names are C
  identifiers and cantools refuses the file) is renamed with a leading underscore
  (``_0_COUNTER``), and every reference to it in the file is renamed with it;
- a frame (id and extended flag) defined twice in one file: the last definition is kept (the
  one cantools looks the id up to) and the earlier dropped, with a warning naming both
  messages and their lines;
- a message whose signals overlap or do not fit (cantools' strict check) is loaded as it is
  written, and the fault is reported as a warning.

With ``repair=False`` each of these is a :class:`~can_dbc.errors.DbcError` naming the file,
the line and the fault. Every other fault cantools or its parser finds is translated once
into a :class:`~can_dbc.errors.DbcError`, with the line number when the parser gives one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from xml.etree import ElementTree

import textparser
from cantools.database.can import Database, Message
from cantools.database.errors import Error as CantoolsError

from can_dbc.errors import DbcError

__all__ = [
    "FORMATS",
    "LoadReport",
    "LoadWarning",
    "LoadedNetwork",
    "Repair",
    "load_network",
    "load_network_string",
]

#: The network formats, by file extension.
FORMATS: dict[str, str] = {".dbc": "dbc", ".kcd": "kcd", ".arxml": "arxml", ".sym": "sym"}

# The encodings tried, in order, for each format.
_ENCODINGS: dict[str, tuple[str, ...]] = {
    "dbc": ("utf-8", "cp1252"),
    "sym": ("utf-8", "cp1252"),
    "kcd": ("utf-8",),
    "arxml": ("utf-8",),
}

# What cantools' parsers raise on a malformed file (besides their own errors): the DBC and
# SYM grammars raise textparser.ParseError, the XML formats ElementTree.ParseError, and the
# builders raise the builtin errors below on values that parse but make no sense.
_PARSE_FAULTS: tuple[type[Exception], ...] = (
    textparser.Error,
    CantoolsError,
    ElementTree.ParseError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)

PathArg = str | PathLike[str]


@dataclass(frozen=True)
class Repair:
    """One change made to a file so that it loads."""

    file: str
    line: int
    change: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.change}"


@dataclass(frozen=True)
class LoadWarning:
    """A fault that was kept (the file loads, but not as its author meant)."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class LoadReport:
    """What loading did: repairs made, warnings kept, and the text encoding of each file."""

    repairs: list[Repair] = field(default_factory=list)
    warnings: list[LoadWarning] = field(default_factory=list)
    encodings: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True when nothing was repaired and nothing is to be warned about."""
        return not self.repairs and not self.warnings

    def lines(self) -> list[str]:
        """The report as human-readable lines (repairs first)."""
        return [f"repaired {r}" for r in self.repairs] + [f"warning {w}" for w in self.warnings]


@dataclass(frozen=True)
class LoadedNetwork:
    """A loaded network: the cantools database, the files it came from, and the report."""

    database: Database
    report: LoadReport
    paths: tuple[Path, ...]


# --- the DBC name repair ----------------------------------------------------------------------

_BO_NAME = re.compile(r"^([ \t]*BO_[ \t]+\d+[ \t]+)(\w+)([ \t]*:)")
_SG_NAME = re.compile(r"^([ \t]*SG_[ \t]+)(\w+)(?=[ \t]*(?:M|m\d+M?)?[ \t]*:)")
# A DBC string, as cantools' tokenizer reads it.
_DBC_STRING = r'"(?:\\"|[^"])*?"'


def _find_bad_names(text: str) -> list[tuple[int, str, str, str | None]]:
    """Definitions whose name starts with a digit: (line, kind, name, message name)."""
    found: list[tuple[int, str, str, str | None]] = []
    message: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if (bo := _BO_NAME.match(line)) is not None:
            message = bo.group(2)
            if message[0].isdigit():
                found.append((number, "message", message, None))
        elif (sg := _SG_NAME.match(line)) is not None and sg.group(2)[0].isdigit():
            found.append((number, "signal", sg.group(2), message))
    return found


def _unused_name(base: str, taken: set[str]) -> str:
    name = base
    n = 1
    while name in taken:
        name = f"{base}_{n}"
        n += 1
    return name


def _repair_names(text: str, file: str, report: LoadReport) -> str:
    """Rename definitions starting with a digit (and every reference to them)."""
    bad = _find_bad_names(text)
    if not bad:
        return text
    taken = set(re.findall(r"\w+", text))
    renames: dict[str, str] = {}
    for number, kind, name, message in bad:
        if name not in renames:
            renames[name] = _unused_name(f"_{name}", taken)
            taken.add(renames[name])
        where = f" of message {message}" if message is not None else ""
        report.repairs.append(
            Repair(
                file,
                number,
                f"renamed {kind} {name}{where} to {renames[name]} "
                "(a DBC name must not start with a digit)",
            )
        )
    names = "|".join(re.escape(n) for n in sorted(renames, key=len, reverse=True))
    pattern = re.compile(rf"({_DBC_STRING})|(?<!\w)({names})(?!\w)")

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return match.group(1)
        return renames[match.group(2)]

    return pattern.sub(substitute, text)


def _message_lines(text: str) -> dict[str, list[int]]:
    """The lines of the ``BO_`` definitions, by message name, in file order."""
    lines: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if (bo := _BO_NAME.match(line)) is not None:
            lines.setdefault(bo.group(2), []).append(number)
    return lines


# --- loading ----------------------------------------------------------------------------------


def _format_of(path: Path, database_format: str | None) -> str:
    if database_format is not None:
        if database_format not in _ENCODINGS:
            known = ", ".join(sorted(_ENCODINGS))
            raise DbcError(
                f"unknown database format {database_format!r} (known: {known})", path=str(path)
            )
        return database_format
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = " ".join(sorted(FORMATS))
        raise DbcError(
            f"unknown network file extension {path.suffix!r} (known: {known}; "
            "or pass database_format=)",
            path=str(path),
        )
    return fmt


def _read_text(path: Path, fmt: str) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DbcError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    encodings = _ENCODINGS[fmt]
    for encoding in encodings:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise DbcError(f"not text in {' or '.join(encodings)}", path=str(path))


def _fault_line(exc: BaseException) -> int | None:
    """The line number a parser error carries, if any (textparser, ElementTree)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, textparser.ParseError):
            return seen.line
        position = getattr(seen, "position", None)
        if isinstance(seen, ElementTree.ParseError) and isinstance(position, tuple):
            return int(position[0])
        seen = seen.__cause__ or seen.__context__
    return None


def _fault_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing or unknown element {text}"
    return text


def _parse(text: str, fmt: str, file: str) -> Database:
    database = Database(strict=False)
    adders = {
        "dbc": database.add_dbc_string,
        "kcd": database.add_kcd_string,
        "arxml": database.add_arxml_string,
        "sym": database.add_sym_string,
    }
    try:
        adders[fmt](text)
    except _PARSE_FAULTS as exc:
        raise DbcError(
            f"cannot load as {fmt.upper()}: {_fault_text(exc)}", path=file, line=_fault_line(exc)
        ) from exc
    return database


def _check_strict(
    database: Database, text: str, fmt: str, file: str, *, repair: bool, report: LoadReport
) -> None:
    """Run cantools' strict check on each message; a fault is a warning or an error."""
    lines = _message_lines(text) if fmt == "dbc" else {}
    for message in database.messages:
        try:
            message.refresh(strict=True)
        except CantoolsError as exc:
            line = lines.get(message.name, [None])[0]
            if not repair:
                raise DbcError(
                    f"{exc} (load with repair=True to accept it)", path=file, line=line
                ) from exc
            report.warnings.append(LoadWarning(file, line, f"{exc} Loaded without strict check."))


def _check_duplicate_frames(
    database: Database, text: str, fmt: str, file: str, *, repair: bool, report: LoadReport
) -> None:
    """Find frames (id, extended) defined twice; the last definition is kept, with a warning.

    cantools keeps every definition but looks frames up by id, so an earlier one would be
    hidden from the decoders while its name still resolved.
    """
    lines = _message_lines(text) if fmt == "dbc" else {}
    seen: dict[str, int] = {}
    located: list[tuple[Message, int | None]] = []
    for message in database.messages:
        at = lines.get(message.name, [])
        index = seen.get(message.name, 0)
        seen[message.name] = index + 1
        located.append((message, at[index] if index < len(at) else None))

    def where(message: Message, line: int | None) -> str:
        return f"{message.name} (line {line})" if line is not None else message.name

    last: dict[tuple[int, bool], tuple[Message, int | None]] = {}
    for message, line in located:
        last[(message.frame_id, bool(message.is_extended_frame))] = (message, line)
    dropped: list[Message] = []
    for message, line in located:
        kept, kept_line = last[(message.frame_id, bool(message.is_extended_frame))]
        if kept is message:
            continue
        kind = "extended" if message.is_extended_frame else "standard"
        fault = (
            f"{kind} frame 0x{message.frame_id:x} is defined twice: "
            f"{where(message, line)} and {where(kept, kept_line)}"
        )
        if not repair:
            raise DbcError(
                f"{fault} (load with repair=True to keep the last)", path=file, line=kept_line
            )
        report.warnings.append(
            LoadWarning(file, line, f"{fault}; {kept.name} is kept, {message.name} dropped.")
        )
        dropped.append(message)
    if dropped:
        for message in dropped:
            database.messages.remove(message)
        database.refresh()


def _load_text(text: str, fmt: str, file: str, *, repair: bool, report: LoadReport) -> Database:
    if fmt == "dbc":
        if repair:
            text = _repair_names(text, file, report)
        else:
            bad = _find_bad_names(text)
            if bad:
                number, kind, name, _message = bad[0]
                raise DbcError(
                    f"{kind} name {name!r} starts with a digit, which DBC does not allow "
                    "(load with repair=True to rename it)",
                    path=file,
                    line=number,
                )
    database = _parse(text, fmt, file)
    _check_duplicate_frames(database, text, fmt, file, repair=repair, report=report)
    _check_strict(database, text, fmt, file, repair=repair, report=report)
    return database


def _merge(parts: Sequence[tuple[str, Database]]) -> Database:
    """One database of the messages of several files; a frame defined twice is an error."""
    if len(parts) == 1:
        return parts[0][1]
    by_id: dict[tuple[int, bool], str] = {}
    by_name: dict[str, str] = {}
    messages: list[Message] = []
    nodes = []
    node_names: set[str] = set()
    for file, database in parts:
        for message in database.messages:
            key = (message.frame_id, message.is_extended_frame)
            if key in by_id:
                raise DbcError(
                    f"frame 0x{message.frame_id:x} ({message.name}) is also defined in "
                    f"{by_id[key]}",
                    path=file,
                )
            if message.name in by_name:
                raise DbcError(
                    f"message name {message.name} is also defined in {by_name[message.name]}",
                    path=file,
                )
            by_id[key] = file
            by_name[message.name] = file
            messages.append(message)
        for node in database.nodes:
            if node.name not in node_names:
                node_names.add(node.name)
                nodes.append(node)
    first = parts[0][1]
    return Database(
        messages=messages,
        nodes=nodes,
        version=first.version,
        dbc_specifics=first.dbc,
        strict=False,
    )


def _as_paths(path_or_paths: PathArg | Iterable[PathArg]) -> tuple[Path, ...]:
    if isinstance(path_or_paths, str | PathLike):
        return (Path(path_or_paths),)
    paths = tuple(Path(p) for p in path_or_paths)
    if not paths:
        raise DbcError("no network file given")
    return paths


def load_network(
    path_or_paths: PathArg | Iterable[PathArg],
    *,
    repair: bool = True,
    database_format: str | None = None,
) -> LoadedNetwork:
    """Load one network file, or several into one database.

    ``database_format`` (``dbc``, ``kcd``, ``arxml``, ``sym``) overrides the extension for
    every file given. Several files must not define the same frame (id and extended flag) or
    message name. Raises :class:`~can_dbc.errors.DbcError`.
    """
    paths = _as_paths(path_or_paths)
    report = LoadReport()
    parts: list[tuple[str, Database]] = []
    for path in paths:
        fmt = _format_of(path, database_format)
        text, encoding = _read_text(path, fmt)
        report.encodings[str(path)] = encoding
        parts.append((str(path), _load_text(text, fmt, str(path), repair=repair, report=report)))
    return LoadedNetwork(database=_merge(parts), report=report, paths=paths)


def load_network_string(
    text: str, database_format: str, *, repair: bool = True, source: str = "<string>"
) -> LoadedNetwork:
    """Load a network from text in the given format (the same rules as :func:`load_network`)."""
    fmt = _format_of(Path(source), database_format)
    report = LoadReport()
    database = _load_text(text, fmt, source, repair=repair, report=report)
    return LoadedNetwork(database=database, report=report, paths=())
