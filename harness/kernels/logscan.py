"""Byte scanner for the solver lines of a ``caffe train`` glog log.

numba only (no I/O, no printing). ``harness.logs.read_runs`` hands each
chunk of whole lines to :func:`scan` as a read-only ``uint8`` array and gets
back one *event* per candidate line, in file order: the lines the slow path
of ``harness.logs`` looks at (a line holding ``solver.cpp:`` or
``caffe.cpp:``, or starting with glog's ``F``).

A candidate line whose only location token is ``solver.cpp:N`` (no
``caffe.cpp:``, not an ``F`` line) and whose message after ``] `` has one of
these exact shapes (``D`` digits, ``V`` a ``%g`` number, ``NAME`` bytes
without a space, an optional ``\\r`` before the line end) is a *bulk* event::

    Iteration D (V iter/s, Vs/D iters), loss = V          EV_DISPLAY
    Iteration D, loss = V                                  EV_SHORT_LOSS
        Train net output #D: NAME = V                      EV_OUTPUT
        Train net output #D: NAME = V (* V = V loss)       EV_OUTPUT, F_WEIGHT
    Iteration D, lr = V                                    EV_LR
    Gradient clipping: scaling down gradients (L2 norm V > V) by scale factor V
                                                           EV_CLIP

Each of these shapes is one alternative of ``harness.logs``' line regex that
no earlier alternative can match, so the slow path gives the same record.
Any other candidate line is an ``EV_RARE`` event (its start only): the
caller parses it with the regex. So is a bulk shape whose iteration exceeds
Caffe's ``int`` (``2^31 - 1``): the slow path reports it.

Numbers: ``V`` follows the grammar ``[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?``
or ``[-+]?(inf|nan)``, longest match. Its value is computed exactly when
Clinger's fast path applies: at most 15 significant digits make an integer
mantissa ``M < 2^53`` and the decimal exponent ``E`` has ``|E| <= 22``, so
``M * 10^E`` (or ``M / 10^-E``) is one IEEE operation on exact doubles,
correctly rounded like Python's ``float()``; ``inf``, ``nan`` and zeros
carry their sign (``-nan`` has the sign bit set, as ``float("-nan")``).
Anything else (more digits, ``1e+38``, ``-2.32449e-30``) sets ``F_PYFLOAT``:
the caller converts that line's numbers with ``float()``. Numbers the caller
does not store (``iter/s``, the lapse, the weighted loss) are only checked
against the grammar.

An output line's key is the byte span ``D: NAME`` (``kstart``/``kend``);
equal spans share a key id, numbered in order of first appearance.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

__all__ = [
    "EV_RARE",
    "EV_DISPLAY",
    "EV_SHORT_LOSS",
    "EV_OUTPUT",
    "EV_LR",
    "EV_CLIP",
    "F_PYFLOAT",
    "F_WEIGHT",
    "ST_OK",
    "ST_KEYS_FULL",
    "ST_EVENTS_FULL",
    "C_EVENTS",
    "C_KEYS",
    "C_SOLVER",
    "C_LINES",
    "C_STATUS",
    "scan",
]

EV_RARE, EV_DISPLAY, EV_SHORT_LOSS, EV_OUTPUT, EV_LR, EV_CLIP = range(6)
#: flags: a number needs Python's float(); an output line has a loss weight
F_PYFLOAT, F_WEIGHT = 1, 2
#: status: complete; the key table or the event arrays filled up (the
#: scan stopped at that line)
ST_OK, ST_KEYS_FULL, ST_EVENTS_FULL = 0, 1, 2
#: slots of ``counts``: events, distinct output keys, ``solver.cpp:``
#: occurrences, lines scanned, status
C_EVENTS, C_KEYS, C_SOLVER, C_LINES, C_STATUS = range(5)

_INT_MAX = 2**31 - 1
#: 10^0 .. 10^22, all exact doubles
_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)
#: nan, -nan, inf, -inf with the bits float() gives (numba folds -nan to nan)
_SPECIAL = np.array([float("nan"), float("-nan"), float("inf"), float("-inf")], dtype=np.float64)


def _lit(s: str):
    return np.frombuffer(s.encode(), dtype=np.uint8).copy()


_ITERATION = _lit("Iteration ")
_ITER_S = _lit(" iter/s, ")
_S_SLASH = _lit("s/")
_ITERS = _lit(" iter")
_DISP_LOSS = _lit("), loss = ")
_LR = _lit(", lr = ")
_SHORT_LOSS = _lit(", loss = ")
_OUTPUT = _lit("    Train net output #")
_WEIGHT = _lit(" (* ")
_EQ = _lit(" = ")
_LOSS_PAREN = _lit(" loss)")
_CLIP = _lit("Gradient clipping: scaling down gradients (L2 norm ")
_GT = _lit(" > ")
_SCALE = _lit(") by scale factor ")

_SIG = dict(cache=True, error_model="numpy", nogil=True)
_inline = numba.njit(**_SIG)


@_inline
def _at(buf, i, e, lit):
    """``i + len(lit)`` if ``buf[i:e]`` starts with ``lit``, else -1."""
    k = lit.size
    if i < 0 or i + k > e:
        return -1
    for t in range(k):
        if buf[i + t] != lit[t]:
            return -1
    return i + k


@_inline
def _uint(buf, i, e):
    """``(end, value)`` of the digits at ``i`` (value capped at 2^31);
    end -1 when there is no digit."""
    j = i
    v = 0
    while j < e and 48 <= buf[j] <= 57:
        if v <= _INT_MAX:
            v = v * 10 + (int(buf[j]) - 48)
        j += 1
    if j == i:
        return -1, 0
    return j, min(v, _INT_MAX + 1)


@_inline
def _num(buf, i, e):
    """``(end, value, exact)`` of the longest %g number at ``buf[i:e]``;
    end -1 when there is none, ``exact`` False when ``value`` is not
    ``float()``'s (then it is 0)."""
    if i < 0:
        return -1, 0.0, False
    j = i
    neg = False
    if j < e and (buf[j] == 45 or buf[j] == 43):  # - +
        neg = buf[j] == 45
        j += 1
    if j + 3 <= e:
        c0, c1, c2 = buf[j], buf[j + 1], buf[j + 2]
        if c0 == 105 and c1 == 110 and c2 == 102:  # inf
            return j + 3, _SPECIAL[3 if neg else 2], True
        if c0 == 110 and c1 == 97 and c2 == 110:  # nan
            return j + 3, _SPECIAL[1 if neg else 0], True
    m = 0  # mantissa of the significant digits
    nd = 0  # significant digits (leading zeros excluded)
    ndig = 0  # all mantissa digits
    frac = 0  # digits after the point
    while j < e and 48 <= buf[j] <= 57:
        d = int(buf[j]) - 48
        if nd or d:
            if nd < 18:
                m = m * 10 + d
            nd += 1
        ndig += 1
        j += 1
    if j < e and buf[j] == 46:  # .
        j += 1
        while j < e and 48 <= buf[j] <= 57:
            d = int(buf[j]) - 48
            if nd or d:
                if nd < 18:
                    m = m * 10 + d
                nd += 1
            ndig += 1
            frac += 1
            j += 1
    if ndig == 0:
        return -1, 0.0, False
    x = 0
    if j < e and buf[j] == 101:  # e
        k = j + 1
        eneg = False
        if k < e and (buf[k] == 45 or buf[k] == 43):
            eneg = buf[k] == 45
            k += 1
        if k < e and 48 <= buf[k] <= 57:
            while k < e and 48 <= buf[k] <= 57:
                if x < 100000:
                    x = x * 10 + (int(buf[k]) - 48)
                k += 1
            if eneg:
                x = -x
            j = k
    if nd == 0:
        v = 0.0
    elif nd > 15:
        return j, 0.0, False
    else:
        p = x - frac
        if 0 <= p <= 22:
            v = np.float64(m) * _POW10[p]
        elif -22 <= p < 0:
            v = np.float64(m) / _POW10[-p]
        else:
            return j, 0.0, False
    return j, (-v if neg else v), True


@_inline
def _classify(buf, loc, e):
    """The bulk event of the message after ``solver.cpp:`` at ``loc``
    (line content up to ``e``): ``(kind, flags, ival, v0, v1, v2, kstart,
    kend)``; kind EV_RARE when it is none of the bulk shapes."""
    rare = (EV_RARE, 0, 0, 0.0, 0.0, 0.0, 0, 0)
    i, _ = _uint(buf, loc, e)
    if i < 0 or i + 2 > e or buf[i] != 93 or buf[i + 1] != 32:  # "] "
        return rare
    i += 2
    j = _at(buf, i, e, _ITERATION)
    if j >= 0:
        j, it = _uint(buf, j, e)
        if j < 0 or it > _INT_MAX:
            return rare
        if j + 2 <= e and buf[j] == 32 and buf[j + 1] == 40:  # " ("
            k, _, _ = _num(buf, j + 2, e)
            k, _, _ = _num(buf, _at(buf, k, e, _ITER_S), e)
            k = _at(buf, k, e, _S_SLASH)
            if k < 0:
                return rare
            k, _ = _uint(buf, k, e)
            k = _at(buf, k, e, _ITERS)
            if k >= 0 and k < e and buf[k] == 115:  # s
                k += 1
            k, v, exact = _num(buf, _at(buf, k, e, _DISP_LOSS), e)
            if k != e:
                return rare
            return EV_DISPLAY, 0 if exact else F_PYFLOAT, it, v, 0.0, 0.0, 0, 0
        k, v, exact = _num(buf, _at(buf, j, e, _LR), e)
        if k == e:
            return EV_LR, 0 if exact else F_PYFLOAT, it, v, 0.0, 0.0, 0, 0
        k, v, exact = _num(buf, _at(buf, j, e, _SHORT_LOSS), e)
        if k == e:
            return EV_SHORT_LOSS, 0 if exact else F_PYFLOAT, it, v, 0.0, 0.0, 0, 0
        return rare
    j = _at(buf, i, e, _OUTPUT)
    if j >= 0:
        kstart = j
        j, _ = _uint(buf, j, e)
        if j < 0 or j + 2 > e or buf[j] != 58 or buf[j + 1] != 32:  # ": "
            return rare
        j += 2
        while j < e and buf[j] != 32:
            j += 1
        kend = j
        k, v, exact = _num(buf, _at(buf, j, e, _EQ), e)
        if k == e:
            return EV_OUTPUT, 0 if exact else F_PYFLOAT, 0, v, 0.0, 0.0, kstart, kend
        k, w, exact_w = _num(buf, _at(buf, k, e, _WEIGHT), e)
        k, _, _ = _num(buf, _at(buf, k, e, _EQ), e)
        k = _at(buf, k, e, _LOSS_PAREN)
        if k != e:
            return rare
        return EV_OUTPUT, F_WEIGHT | (0 if exact and exact_w else F_PYFLOAT), 0, v, w, 0.0, kstart, kend
    j = _at(buf, i, e, _CLIP)
    if j >= 0:
        k, a, ea = _num(buf, j, e)
        k, b, eb = _num(buf, _at(buf, k, e, _GT), e)
        k, c, ec = _num(buf, _at(buf, k, e, _SCALE), e)
        if k != e:
            return rare
        return EV_CLIP, 0 if ea and eb and ec else F_PYFLOAT, 0, a, b, c, 0, 0
    return rare


@_inline
def _same(buf, a0, a1, b0, b1):
    if a1 - a0 != b1 - b0:
        return False
    for t in range(a1 - a0):
        if buf[a0 + t] != buf[b0 + t]:
            return False
    return True


_BUF = types.Array(types.uint8, 1, "C", readonly=True)
_I64 = types.Array(types.int64, 1, "C")
_I8 = types.Array(types.int8, 1, "C")
_F64 = types.Array(types.float64, 1, "C")


@numba.njit(types.void(_BUF, types.int64, _I8, _I8, _I64, _I64, _I64, _F64, _F64, _F64, _I64, _I64, _I64, _I64),
            **_SIG)
def scan(buf, pos, kind, flags, line, start, ival, v0, v1, v2, key, kstart, kend, counts):
    """Scan the lines of ``buf[pos:]`` into events (see the module docstring).

    Event ``n`` (in file order) has ``kind[n]``, ``flags[n]``, ``line[n]``
    (0-based line index counted from ``pos``), ``start[n]`` (offset of its
    line), ``ival[n]`` (the iteration of a display, loss or lr line),
    ``v0..v2[n]`` (loss, lr, or output value and loss weight, or clipping's
    L2 norm, ``clip_gradients`` and scale factor) and ``key[n]`` (an output's
    key id, whose span is ``kstart[id]:kend[id]``). The event arrays bound
    the events (one per line always suffices), the key arrays the distinct
    keys; ``C_STATUS`` says when either was too short. ``counts`` gets
    the totals at ``C_EVENTS``, ``C_KEYS``, ``C_SOLVER`` (occurrences of
    ``solver.cpp:``, for the caller's cross-check), ``C_LINES`` and
    ``C_STATUS``.
    """
    n = buf.size
    ne = 0
    nk = 0
    nsolver = 0
    lino = 0
    last_key = -1
    kcap = kstart.size
    status = ST_OK
    ls = pos
    while ls < n:
        j = ls
        ns = 0
        nc = 0
        loc = -1
        while j < n:
            c = buf[j]
            if c == 10:
                break
            if c == 58 and j - ls >= 9 and buf[j - 1] == 112 and buf[j - 2] == 112 and buf[j - 3] == 99 \
                    and buf[j - 4] == 46:  # ".cpp:"
                if j - ls >= 10 and buf[j - 5] == 114 and buf[j - 6] == 101 and buf[j - 7] == 118 \
                        and buf[j - 8] == 108 and buf[j - 9] == 111 and buf[j - 10] == 115:  # "solver"
                    ns += 1
                    if loc < 0:
                        loc = j + 1
                elif buf[j - 5] == 101 and buf[j - 6] == 102 and buf[j - 7] == 102 and buf[j - 8] == 97 \
                        and buf[j - 9] == 99:  # "caffe"
                    nc += 1
            j += 1
        le = j
        nsolver += ns
        if ns or nc or buf[ls] == 70:  # F
            if ne == kind.size:
                status = ST_EVENTS_FULL
                break
            e = le
            if e > ls and buf[e - 1] == 13:
                e -= 1
            ek, fl, it, a, b, c3, k0, k1 = EV_RARE, 0, 0, 0.0, 0.0, 0.0, 0, 0
            if ns == 1 and nc == 0 and buf[ls] != 70:
                ek, fl, it, a, b, c3, k0, k1 = _classify(buf, loc, e)
            kid = 0
            if ek == EV_OUTPUT:
                kid = -1
                g = last_key + 1
                if g < nk and _same(buf, kstart[g], kend[g], k0, k1):
                    kid = g
                else:
                    for t in range(nk):
                        if _same(buf, kstart[t], kend[t], k0, k1):
                            kid = t
                            break
                if kid < 0:
                    if nk == kcap:
                        status = ST_KEYS_FULL
                        break
                    kstart[nk] = k0
                    kend[nk] = k1
                    kid = nk
                    nk += 1
                last_key = kid
            kind[ne] = ek
            flags[ne] = fl
            line[ne] = lino
            start[ne] = ls
            ival[ne] = it
            v0[ne] = a
            v1[ne] = b
            v2[ne] = c3
            key[ne] = kid
            ne += 1
        ls = le + 1
        lino += 1
    counts[C_EVENTS] = ne
    counts[C_KEYS] = nk
    counts[C_SOLVER] = nsolver
    counts[C_LINES] = lino
    counts[C_STATUS] = status
