"""Read Caffe's text protobuf files (``.prototxt``) strictly, as Caffe does.

Caffe reads solver and net files with protobuf's C++ text parser, which
refuses unknown fields, repeated singular fields, unquoted strings and
unknown enum values. These functions do the same with protobuf's Python
text parser and turn its errors into one-line :class:`InputError` messages
that name the file, line and column::

    solver.prototxt:3:1: unknown field 'momentun' in SolverParameter (did you mean 'momentum'?)

``skip_unknown`` lets a caller accept some unknown fields (``load_net`` uses
it for layer-specific parameters this project does not model): the field and
its value or block are blanked out and the text is parsed again, so line and
column numbers of later errors still point into the original file.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Callable, TypeVar

from google.protobuf import message as _message
from google.protobuf import text_format

from ..errors import InputError
from .files import open_input

__all__ = ["parse_text", "parse_text_string", "read_text_file"]

M = TypeVar("M", bound=_message.Message)

#: ``skip_unknown(message_name, field_name) -> bool``; message_name without
#: the ``caffe.`` package, e.g. ``"LayerParameter"``.
SkipPredicate = Callable[[str, str], bool]

_LOCATION = re.compile(r"^(\d+):(\d+) : ")
_UNKNOWN_FIELD = re.compile(r'^Message type "([\w.]+)" has no field named "([^"]+)"\.$')
_DUPLICATE = re.compile(r'^Message type "([\w.]+)" should not have multiple "([^"]+)" fields\.$')
_ENUM = re.compile(r'Enum type "([\w.]+)" has no value (?:named|with number) (\S+?)\.?$')
# protobuf repeats the offending source line in quotes before the problem
_ECHO = re.compile(r"^'.*?': (?=[A-Z])", re.S)


def read_text_file(path: str | os.PathLike) -> str:
    """Read a text file as UTF-8; missing, unreadable, non-UTF-8 or empty → InputError."""
    path = os.fspath(path)
    with open_input(path) as f:
        try:
            raw = f.read()
        except OSError as e:
            raise InputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            path, f"not UTF-8 text (byte 0x{raw[e.start]:02x}); is this a binary file?", line=line, col=col
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InputError(path, "contains NUL bytes; is this a binary file?", line=line)
    if not text.strip():
        raise InputError(path, "file is empty")
    return text


def parse_text(
    path: str | os.PathLike,
    message_cls: type[M],
    *,
    allow_unknown_fields: bool = False,
    skip_unknown: SkipPredicate | None = None,
) -> M:
    """Parse the text protobuf file ``path`` into a new ``message_cls``.

    Strict like Caffe unless ``allow_unknown_fields`` (which skips every
    unknown field) or ``skip_unknown`` (which skips the unknown fields it
    accepts). A missing, empty, non-UTF-8 or malformed file raises
    :class:`InputError` with the line and column of the problem.
    """
    text = read_text_file(path)
    return parse_text_string(
        text,
        message_cls,
        source=os.fspath(path),
        allow_unknown_fields=allow_unknown_fields,
        skip_unknown=skip_unknown,
    )


def parse_text_string(
    text: str,
    message_cls: type[M],
    *,
    source: str = "<string>",
    allow_unknown_fields: bool = False,
    skip_unknown: SkipPredicate | None = None,
) -> M:
    """Parse protobuf text ``text`` into a new ``message_cls``.

    ``source`` names the text in error messages. A text that sets no field
    at all (empty, or only comments) is refused: Caffe would run with every
    default, which is never what a file meant.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not text.strip():
        raise InputError(source, "file is empty" if source != "<string>" else "text is empty")
    while True:
        msg = message_cls()
        try:
            text_format.Parse(text, msg, allow_unknown_field=allow_unknown_fields)
        except text_format.ParseError as e:
            skipped = _maybe_skip(text, e, skip_unknown)
            if skipped is not None:
                text = skipped
                continue
            raise _to_input_error(e, source, message_cls) from None
        break
    if not msg.ListFields():
        raise InputError(source, f"sets no field of {message_cls.DESCRIPTOR.name} (only comments or skipped fields)")
    return msg


# -- errors ------------------------------------------------------------------


def _short(name: str) -> str:
    return name[len("caffe.") :] if name.startswith("caffe.") else name


def _split_location(err: text_format.ParseError) -> tuple[int | None, int | None, str]:
    text = str(err)
    m = _LOCATION.match(text)
    if m:
        return int(m.group(1)), int(m.group(2)), text[m.end() :]
    return err.GetLine(), err.GetColumn(), text


def _field_names(full_name: str, message_cls) -> list[str]:
    """Field names of the message type ``full_name`` reachable from ``message_cls``."""
    seen = set()
    stack = [message_cls.DESCRIPTOR]
    while stack:
        d = stack.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        if d.full_name == full_name:
            return [f.name for f in d.fields]
        stack.extend(f.message_type for f in d.fields if f.message_type is not None)
    return []


def _to_input_error(err: text_format.ParseError, source: str, message_cls) -> InputError:
    line, col, problem = _split_location(err)
    m = _UNKNOWN_FIELD.match(problem)
    if m:
        owner, field = m.group(1), m.group(2)
        problem = f"unknown field '{field}' in {_short(owner)}"
        close = difflib.get_close_matches(field, _field_names(owner, message_cls), n=1, cutoff=0.75)
        if close:
            problem += f" (did you mean '{close[0]}'?)"
        return InputError(source, problem, line=line, col=col)
    m = _DUPLICATE.match(problem)
    if m:
        problem = f"field '{m.group(2)}' of {_short(m.group(1))} is given more than once (it is not repeated)"
        return InputError(source, problem, line=line, col=col)
    problem = _ECHO.sub("", problem, count=1)
    m = _ENUM.search(problem)
    if m:
        problem = f"unknown value {m.group(2)} for {_short(m.group(1))}"
    else:
        problem = problem.rstrip(".")
        problem = problem[:1].lower() + problem[1:]
    return InputError(source, problem, line=line, col=col)


# -- skipping unknown fields -------------------------------------------------


def _maybe_skip(text: str, err: text_format.ParseError, skip_unknown: SkipPredicate | None) -> str | None:
    """The text with the unknown field of ``err`` blanked, or None to refuse it."""
    if skip_unknown is None:
        return None
    line, col, problem = _split_location(err)
    m = _UNKNOWN_FIELD.match(problem)
    if not m or line is None or col is None:
        return None
    if not skip_unknown(_short(m.group(1)), m.group(2)):
        return None
    lines = text.split("\n")
    if line - 1 >= len(lines):
        return None
    start = sum(len(s) + 1 for s in lines[: line - 1]) + (col - 1)
    if not text.startswith(m.group(2), start):
        return None
    end = _field_end(text, start + len(m.group(2)))
    if end is None:
        return None
    # keep newlines so later line:col positions stay those of the file
    blank = "".join(ch if ch == "\n" else " " for ch in text[start:end])
    return text[:start] + blank + text[end:]


def _skip_space(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        else:
            break
    return i


def _skip_string(text: str, i: int) -> int | None:
    quote = text[i]
    i += 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch == quote:
            return i + 1
        elif ch == "\n":
            return None
        else:
            i += 1
    return None


def _skip_block(text: str, i: int) -> int | None:
    """``text[i]`` opens a block ({, < or [); return the index after its close."""
    pairs = {"{": "}", "<": ">", "[": "]"}
    stack = [pairs[text[i]]]
    i += 1
    n = len(text)
    while i < n and stack:
        ch = text[i]
        if ch in "\"'":
            j = _skip_string(text, i)
            if j is None:
                return None
            i = j
        elif ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif ch in pairs:
            stack.append(pairs[ch])
            i += 1
        elif ch == stack[-1]:
            stack.pop()
            i += 1
        elif ch in "}>]":
            return None
        else:
            i += 1
    return i if not stack else None


def _field_end(text: str, i: int) -> int | None:
    """End of a field's value that starts after its name at ``i``."""
    i = _skip_space(text, i)
    if i < len(text) and text[i] == ":":
        i = _skip_space(text, i + 1)
    if i >= len(text):
        return None
    ch = text[i]
    if ch in "{<[":
        end = _skip_block(text, i)
    elif ch in "\"'":
        end = _skip_string(text, i)
        # adjacent string literals concatenate
        while end is not None:
            j = _skip_space(text, end)
            if j < len(text) and text[j] in "\"'":
                end = _skip_string(text, j)
            else:
                break
    else:
        m = re.compile(r"[^\s{}<>\[\],;#:\"']+").match(text, i)
        end = m.end() if m else None
    if end is None:
        return None
    j = _skip_space(text, end)
    if j < len(text) and text[j] in ",;":
        end = j + 1
    return end
