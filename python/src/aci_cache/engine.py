"""A thin, typed wrapper over a policy component (WIT ``aci:cache/policy@0.1.0``, world ``engine``).

One :class:`Engine` is one fresh instance of a policy component in its own wasmtime store. The
component is compiled once per process (cached by content) and instantiated per ``Engine``.

Values use the WIT names: a config is a ``dict`` with the kebab-case field names
(``"low-threshold"``, ...), strategies are the strings ``"ttl"``, ``"batched"``, ``"eager"``.

The policy runs sandboxed: it imports nothing, every call gets a fuel budget (an endless loop
traps instead of hanging the host) and its linear memory is capped. A trap, an exhausted budget
or a result the contract forbids raises :class:`EngineFault`; the instance must then be dropped
(a component instance cannot be entered again after a trap).

Calls cost about 10-30 us each from Python (most of it converting values), so hosts call the
engine once per tick with everything that happened since the last one, not once per write.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import wasmtime
from wasmtime import component as wc

__all__ = [
    "Engine",
    "EngineError",
    "PolicyLoadError",
    "EngineFault",
    "ConfigError",
    "PolicyInfo",
    "Batch",
    "Snapshot",
    "STRATEGIES",
    "INTERFACE",
    "CONFIG_FIELDS",
    "policy_path",
    "packaged_policies",
    "read_policy",
]

#: The exported interface every policy component must have.
INTERFACE = "aci:cache/policy@0.1.0"

#: Strategy names, lowest first.
STRATEGIES = ("ttl", "batched", "eager")

#: The config record's fields in declaration order, with their WIT kinds.
CONFIG_FIELDS = (
    ("low-threshold", "f64"),
    ("high-threshold", "f64"),
    ("window-ms", "s32"),
    ("hold-ms", "s32"),
    ("batch-interval-ms", "s32"),
    ("batch-max-keys", "s32"),
    ("batch-max-bytes", "s32"),
    ("initial-strategy", "strategy"),
)

#: Functions of the interface and their parameter names, checked at load.
_FUNCTIONS = {
    "describe": (),
    "default-config": (),
    "configure": ("cfg", "now-ms"),
    "record-write": ("key", "now-ms"),
    "record-writes": ("keys", "now-ms"),
    "record-remote-writes": ("count", "now-ms"),
    "current-strategy": ("now-ms",),
    "write-rate": ("now-ms",),
    "pending-batch": ("now-ms",),
    "status": ("now-ms",),
    "follow": ("strategy", "now-ms"),
    "lead": ("now-ms",),
}

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1
_S32_MIN, _S32_MAX = -(1 << 31), (1 << 31) - 1

#: Sandbox limits, the same in every host (docs/WIRE.md 7): fuel per call, linear memory cap.
DEFAULT_FUEL = 20_000_000
DEFAULT_MEMORY_BYTES = 32 << 20
#: Address space reserved per linear memory: the cap plus a guard, instead of wasmtime's default
#: 4 GiB + 2 GiB guard per memory (which fails under `ulimit -v` / `prlimit --as` of a few GiB).
#: Bounds checks then are explicit (a few percent slower calls), and a memory that would grow past
#: the reservation moves (memory_may_move) up to the store's cap.
MEMORY_RESERVATION = DEFAULT_MEMORY_BYTES
MEMORY_GUARD = 64 << 10


class EngineError(Exception):
    """Base class of every error raised by this module."""


class PolicyLoadError(EngineError):
    """The file or bytes are not a usable policy component (with the reason)."""


class EngineFault(EngineError):
    """The policy trapped, ran out of fuel or memory, or broke the contract. The instance is dead."""


class ConfigError(EngineError, ValueError):
    """``configure`` refused a config: ``field`` is the WIT field name, ``message`` says why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    version: str


@dataclass(frozen=True)
class Batch:
    keys: List[str]
    flush_all: bool


@dataclass(frozen=True)
class Snapshot:
    strategy: str
    write_rate: float
    buffered_keys: int
    batch_due: bool
    switches: int
    following: bool


# --------------------------------------------------------------------------------------------
# Where the shipped policies are


def _packaged_dir() -> Path:
    return Path(__file__).resolve().parent / "policies"


def packaged_policies() -> List[str]:
    """Names of the policy components shipped inside this package."""
    d = _packaged_dir()
    return sorted(p.stem for p in d.glob("*.wasm")) if d.is_dir() else []


def policy_path(name: str = "adaptive") -> Path:
    """Path of a shipped policy component (``adaptive`` or ``fixed``)."""
    p = _packaged_dir() / f"{name}.wasm"
    if not p.is_file():
        raise PolicyLoadError(
            f"policy {name!r} is not shipped in {_packaged_dir()} (have: {packaged_policies() or 'none'}); "
            "a source checkout must run python/setup.sh, which copies target/policies/*.wasm there"
        )
    return p


def read_policy(source: Union[str, os.PathLike, bytes, bytearray, None]) -> "tuple[bytes, str]":
    """(bytes, description) of a policy given as a path, its bytes, or a shipped name."""
    if source is None:
        source = "adaptive"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "policy bytes"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a policy is a path, bytes or a shipped name, got {type(source).__name__}")
    p = Path(source)
    if isinstance(source, str) and not p.suffix and os.sep not in source and not p.exists():
        p = policy_path(source)
    try:
        return p.read_bytes(), str(p)
    except OSError as e:
        raise PolicyLoadError(f"{p}: cannot read: {e}") from e


# --------------------------------------------------------------------------------------------
# Compiling and checking components

_WASM_ENGINE: Optional[wasmtime.Engine] = None
_WASM_ENGINE_LOCK = threading.Lock()
#: Compiled components by sha256, most recently used last. Bounded: a long-lived process that
#: follows many pushed policies must not keep every one it ever ran.
_COMPILED: "OrderedDict[str, wc.Component]" = OrderedDict()
_COMPILED_MAX = 8


def _wasm_engine() -> wasmtime.Engine:
    global _WASM_ENGINE
    with _WASM_ENGINE_LOCK:
        if _WASM_ENGINE is None:
            cfg = wasmtime.Config()
            cfg.consume_fuel = True
            cfg.memory_reservation = MEMORY_RESERVATION
            cfg.memory_guard_size = MEMORY_GUARD
            cfg.memory_reservation_for_growth = 0
            cfg.memory_may_move = True
            _WASM_ENGINE = wasmtime.Engine(cfg)
        return _WASM_ENGINE


def _compile(data: bytes, what: str, digest: Optional[str] = None) -> "wc.Component":
    if len(data) < 8 or data[:4] != b"\0asm":
        raise PolicyLoadError(f"{what}: not a WebAssembly file (no \\0asm header)")
    layer = data[4:8]
    if layer == b"\x01\x00\x00\x00":
        raise PolicyLoadError(
            f"{what}: a core WebAssembly module, not a component; policies must be components "
            f"exporting {INTERFACE} (see policy-build)"
        )
    if layer[2:4] != b"\x01\x00":
        raise PolicyLoadError(f"{what}: unknown WebAssembly binary layer/version {layer.hex()}")
    if digest is None:
        digest = hashlib.sha256(data).hexdigest()
    with _WASM_ENGINE_LOCK:
        comp = _COMPILED.get(digest)
        if comp is not None:
            _COMPILED.move_to_end(digest)
    if comp is not None:
        return comp
    engine = _wasm_engine()
    try:
        comp = wc.Component(engine, data)
    except wasmtime.WasmtimeError as e:
        raise PolicyLoadError(f"{what}: invalid component: {_first_line(e)}") from e
    imports = comp.type.imports(engine)
    if imports:
        raise PolicyLoadError(
            f"{what}: the component imports {sorted(imports)}; a policy must import nothing"
        )
    exports = comp.type.exports(engine)
    if INTERFACE not in exports:
        raise PolicyLoadError(
            f"{what}: the component does not export {INTERFACE} (it exports {sorted(exports) or 'nothing'})"
        )
    with _WASM_ENGINE_LOCK:
        _COMPILED[digest] = comp
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return comp


def _cause(e: BaseException) -> str:
    """What a trap was (``wasm trap: all fuel consumed by WebAssembly``), without wasmtime's
    backtrace of anonymous wasm functions, which says nothing to an operator reading a status."""
    s = str(e)
    if "Caused by:" in s:
        tail = s.rsplit("Caused by:", 1)[1]
        return " ".join(l.strip() for l in tail.splitlines() if l.strip())[:300]
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return " ".join(l.strip() for l in s.splitlines() if l.strip())[:500]


# --------------------------------------------------------------------------------------------
# Fast value conversion.
#
# wasmtime-py's generic Func.__call__ re-reads the function type and every record's field list
# through the C API on each call (about two thirds of a call's cost). The converters below are
# built once per function from the same type objects and skip that; anything they do not know
# falls back to the type's own convert_to_c / convert_from_c. `Engine(fast=False)` uses plain
# Func.__call__ (the conformance tests run both).

try:  # internals of wasmtime-py 50.x; without them the plain path is used
    from wasmtime import _ffi as _ffi  # type: ignore
    from wasmtime.component._enter import enter_wasm as _enter_wasm  # type: ignore
    import ctypes as _ctypes

    _FAST_OK = all(
        hasattr(_ffi, n)
        for n in (
            "wasmtime_component_val_t",
            "wasmtime_component_valrecord_t",
            "wasmtime_component_valrecord_new_uninit",
            "wasmtime_component_valrecord_delete",
            "wasmtime_component_func_call",
            "wasmtime_component_val_delete",
            "WASMTIME_COMPONENT_RECORD",
        )
    )
except Exception:  # pragma: no cover
    _FAST_OK = False


class _CachedRecord:
    """RecordType with its fields read once; lifts to a dict keyed by WIT field name."""

    def __init__(self, rt: Any):
        self.fields = [(name, _cached(ty)) for name, ty in rt.fields]

    def convert_to_c(self, store: Any, val: Any, ptr: Any) -> None:
        fields = self.fields
        raw = _ffi.wasmtime_component_valrecord_t()
        _ffi.wasmtime_component_valrecord_new_uninit(raw, len(fields))
        i = 0
        cleanup = True
        try:
            get = val.__getitem__ if isinstance(val, Mapping) else (lambda n: getattr(val, n))
            for name, ty in fields:
                ty.convert_to_c(store, get(name), _ctypes.pointer(raw.data[i].val))
                raw.data[i].name = _ffi.str_to_capi(name)
                i += 1
            ptr.contents.kind = _ffi.WASMTIME_COMPONENT_RECORD
            ptr.contents.of.record = raw
            cleanup = False
        finally:
            if cleanup:
                for j in range(i, len(fields)):
                    raw.data[j].val.kind = _ffi.WASMTIME_COMPONENT_BOOL
                    raw.data[j].val.of.boolean = False
                _ffi.wasmtime_component_valrecord_delete(_ctypes.byref(raw))

    def convert_from_c(self, c: Any) -> Any:
        rec = c.of.record
        try:
            ret = {}
            data = rec.data
            for i, (name, ty) in zip(range(rec.size), self.fields):
                raw_val = data[i].val
                ret[name] = ty.convert_from_c(raw_val)
                raw_val.kind = _ffi.WASMTIME_COMPONENT_BOOL
                raw_val.of.boolean = False
            return ret
        finally:
            _ffi.wasmtime_component_valrecord_delete(rec)


class _CachedList:
    def __init__(self, lt: Any):
        self.lt = lt
        self.element = _cached(lt.element)
        self.is_bytes = isinstance(lt.element, wc.U8)

    def convert_to_c(self, store: Any, val: Any, ptr: Any) -> None:
        if self.is_bytes:
            return self.lt.convert_to_c(store, val, ptr)
        if not isinstance(val, list):
            raise TypeError("expected list value")
        element = self.element
        raw = _ffi.wasmtime_component_vallist_t()
        _ffi.wasmtime_component_vallist_new_uninit(raw, len(val))
        i = 0
        cleanup = True
        try:
            data = raw.data
            for e in val:
                element.convert_to_c(store, e, _ctypes.pointer(data[i]))
                i += 1
            ptr.contents.kind = _ffi.WASMTIME_COMPONENT_LIST
            ptr.contents.of.list = raw
            cleanup = False
        finally:
            if cleanup:
                for j in range(i, len(val)):
                    raw.data[j].kind = _ffi.WASMTIME_COMPONENT_BOOL
                    raw.data[j].of.boolean = False
                _ffi.wasmtime_component_vallist_delete(_ctypes.byref(raw))

    def convert_from_c(self, c: Any) -> Any:
        if self.is_bytes:
            return self.lt.convert_from_c(c)
        lst = c.of.list
        try:
            element = self.element
            data = lst.data
            ret = []
            for i in range(lst.size):
                raw_item = data[i]
                ret.append(element.convert_from_c(raw_item))
                raw_item.kind = _ffi.WASMTIME_COMPONENT_BOOL
                raw_item.of.boolean = False
            return ret
        finally:
            _ffi.wasmtime_component_vallist_delete(_ctypes.byref(lst))


if _FAST_OK:
    try:
        # wasm_byte_vec_new copies the bytes in one C call (str_to_capi takes three).
        _byte_vec_new = _ctypes.CFUNCTYPE(
            None, _ctypes.POINTER(_ffi.wasm_byte_vec_t), _ctypes.c_size_t, _ctypes.c_char_p
        )(("wasm_byte_vec_new", _ffi.dll))
    except Exception:  # pragma: no cover
        _FAST_OK = False


class _StringList:
    """list<string> by address arithmetic over the C array: one C call per element to lower,
    one string_at per element to lift, and one delete for the whole list."""

    def __init__(self) -> None:
        V = _ffi.wasmtime_component_val_t
        U = dict(V._fields_)["of"]
        B = _ffi.wasm_byte_vec_t
        self.stride = _ctypes.sizeof(V)
        self.kind_off = V.kind.offset
        self.vec_off = V.of.offset + U.string.offset
        self.kind = _ffi.WASMTIME_COMPONENT_STRING.value
        if dict(V._fields_)["kind"] is not _ctypes.c_ubyte:
            raise TypeError("unexpected layout")
        if (B.size.offset, B.data.offset, _ctypes.sizeof(B)) != (0, _ctypes.sizeof(_ctypes.c_size_t), 2 * _ctypes.sizeof(_ctypes.c_size_t)):
            raise TypeError("unexpected layout")
        import struct

        self.vec = struct.Struct("@NP")
        self.new_at = _ctypes.CFUNCTYPE(None, _ctypes.c_void_p, _ctypes.c_size_t, _ctypes.c_char_p)(
            ("wasm_byte_vec_new", _ffi.dll)
        )

    def convert_to_c(self, store: Any, val: Any, ptr: Any) -> None:
        if not isinstance(val, list):
            raise TypeError("expected list value")
        n = len(val)
        raw = _ffi.wasmtime_component_vallist_t()
        _ffi.wasmtime_component_vallist_new_uninit(raw, n)
        base = _ctypes.cast(raw.data, _ctypes.c_void_p).value or 0
        stride, kind_off, vec_off, new_at = self.stride, self.kind_off, self.vec_off, self.new_at
        # Every slot starts as a bool so a failure half-way can delete the list safely.
        if n:
            _ctypes.memset(base, 0, n * stride)
        try:
            for i, e in enumerate(val):
                if not isinstance(e, str):
                    raise TypeError(f"expected str in list, got {type(e).__name__}")
                b = e.encode("utf-8")
                at = base + i * stride
                new_at(at + vec_off, len(b), b)
                _ctypes.memset(at + kind_off, self.kind, 1)
        except BaseException:
            _ffi.wasmtime_component_vallist_delete(_ctypes.byref(raw))
            raise
        ptr.contents.kind = _ffi.WASMTIME_COMPONENT_LIST
        ptr.contents.of.list = raw

    def convert_from_c(self, c: Any) -> Any:
        lst = c.of.list
        try:
            n = lst.size
            if not n:
                return []
            base = _ctypes.cast(lst.data, _ctypes.c_void_p).value
            stride, vec_off, kind = self.stride, self.vec_off, self.kind
            mem = _ctypes.string_at(base, n * stride)
            unpack, string_at = self.vec.unpack_from, _ctypes.string_at
            out = []
            for i in range(n):
                off = i * stride
                if mem[off + self.kind_off] != kind:
                    raise TypeError("list element is not a string")
                size, data = unpack(mem, off + vec_off)
                out.append(string_at(data, size).decode("utf-8") if size else "")
            return out
        finally:
            _ffi.wasmtime_component_vallist_delete(_ctypes.byref(lst))


class _FastString:
    """String and enum converters: one C call to lower, a string_at to lift."""

    __slots__ = ("kind", "field")

    def __init__(self, kind: Any, field: str):
        self.kind = kind
        self.field = field

    def convert_to_c(self, store: Any, val: Any, ptr: Any) -> None:
        if not isinstance(val, str):
            raise TypeError(f"expected str, got {type(val).__name__}")
        b = val.encode("utf-8")
        c = ptr.contents
        c.kind = self.kind
        _byte_vec_new(_ctypes.byref(getattr(c.of, self.field)), len(b), b)

    def convert_from_c(self, c: Any) -> Any:
        vec = getattr(c.of, self.field)
        n = vec.size
        ret = _ctypes.string_at(vec.data, n).decode("utf-8") if n else ""
        _ffi.wasm_byte_vec_delete(_ctypes.byref(vec))
        return ret


def _cached(ty: Any) -> Any:
    if isinstance(ty, wc.String):
        return _FastString(_ffi.WASMTIME_COMPONENT_STRING, "string")
    if isinstance(ty, wc.EnumType):
        return _FastString(_ffi.WASMTIME_COMPONENT_ENUM, "enumeration")
    if isinstance(ty, wc.RecordType):
        return _CachedRecord(ty)
    if isinstance(ty, wc.ListType):
        if isinstance(ty.element, wc.String):
            try:
                return _StringList()
            except Exception:  # pragma: no cover - another C layout: the generic path
                pass
        return _CachedList(ty)
    return ty  # leaves (string, ints, floats, enums) and results keep wasmtime's converters


class _FastFunc:
    """Func.__call__ with the parameter and result types read once."""

    __slots__ = ("func", "params", "result")

    def __init__(self, func: Any, store: Any):
        fty = func.type(store)
        self.func = func
        self.params = [_cached(t) for _n, t in fty.params]
        r = fty.result
        self.result = None if r is None else _cached(r)

    def __call__(self, store: Any, *params: Any) -> Any:
        ptys = self.params
        n_params = len(ptys)
        param_capi = (_ffi.wasmtime_component_val_t * n_params)()
        n = 0
        try:
            for ty, val in zip(ptys, params):
                ty.convert_to_c(store, val, _ctypes.pointer(param_capi[n]))
                n += 1
            rty = self.result
            if rty is None:
                result_space = None
                result_capi = None
                result_len = 0
            else:
                result_space = _ffi.wasmtime_component_val_t()
                result_capi = _ctypes.byref(result_space)
                result_len = 1
            fref = _ctypes.byref(self.func._func)
            ctx = store._context()
            _enter_wasm(
                lambda: _ffi.wasmtime_component_func_call(fref, ctx, param_capi, n, result_capi, result_len)
            )
            if rty is None:
                return None
            return rty.convert_from_c(result_space)
        finally:
            for i in range(n):
                _ffi.wasmtime_component_val_delete(_ctypes.byref(param_capi[i]))


def _plain_lift(v: Any) -> Any:
    """Normalise wasmtime-py's generic results (Record objects) to dicts like the fast path."""
    if isinstance(v, wc.Record):
        return {k: _plain_lift(x) for k, x in vars(v).items()}
    if isinstance(v, list):
        return [_plain_lift(x) for x in v]
    return v


class _PlainFunc:
    __slots__ = ("func",)

    def __init__(self, func: Any, store: Any):
        self.func = func

    def __call__(self, store: Any, *params: Any) -> Any:
        conv = []
        for p in params:
            if isinstance(p, Mapping):
                r = wc.Record()
                for k, x in p.items():
                    setattr(r, k, x)
                p = r
            conv.append(p)
        return _plain_lift(self.func(store, *conv))


# --------------------------------------------------------------------------------------------
# The engine


def _check_now(now_ms: int) -> int:
    if isinstance(now_ms, bool) or not isinstance(now_ms, int):
        raise TypeError(f"now_ms must be an int (milliseconds), got {type(now_ms).__name__}")
    if not 0 <= now_ms <= _U64_MAX:
        raise ValueError(f"now_ms must be in 0..2**64-1, got {now_ms}")
    return now_ms


def _check_strategy(s: Any, what: str = "strategy") -> str:
    if s not in STRATEGIES:
        raise ValueError(f"{what} must be one of {', '.join(STRATEGIES)}, got {s!r}")
    return s


class Engine:
    """One fresh instance of a policy component.

    ``source`` is a path to a ``.wasm`` component, its bytes, or the name of a shipped policy
    (``"adaptive"``, ``"fixed"``); default ``"adaptive"``.

    Methods are thread-safe (one lock per instance); a fault (:class:`EngineFault`) kills the
    instance, and every later call raises it again.
    """

    def __init__(
        self,
        source: Union[str, os.PathLike, bytes, bytearray, None] = None,
        *,
        fast: bool = True,
        fuel: int = DEFAULT_FUEL,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        label: Optional[str] = None,
    ):
        data, what = read_policy(source)
        if label is not None:
            what = label
        self.source = what
        #: The component's bytes (a fresh instance after a fault is made from exactly these).
        self.data = data
        #: sha256 (lowercase hex) of the component's bytes: the policy's identity in a fleet.
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._fuel = int(fuel)
        self._lock = threading.Lock()
        self._dead: Optional[str] = None
        comp = _compile(data, what, self.sha256)
        engine = _wasm_engine()
        store = wasmtime.Store(engine)
        if memory_bytes and memory_bytes > 0:
            store.set_limits(memory_size=int(memory_bytes))
        store.set_fuel(self._fuel)
        try:
            inst = wc.Linker(engine).instantiate(store, comp)
        except wasmtime.WasmtimeError as e:
            raise PolicyLoadError(f"{what}: instantiation failed: {_first_line(e)}") from e
        iface = inst.get_export_index(store, INTERFACE)
        if iface is None:  # pragma: no cover - checked on the type already
            raise PolicyLoadError(f"{what}: does not export {INTERFACE}")
        wrap = _FastFunc if (fast and _FAST_OK) else _PlainFunc
        self.fast = wrap is _FastFunc
        funcs = {}
        for name, params in _FUNCTIONS.items():
            idx = inst.get_export_index(store, name, iface)
            f = inst.get_func(store, idx) if idx is not None else None
            if f is None:
                raise PolicyLoadError(f"{what}: {INTERFACE} lacks the function {name!r}")
            got = tuple(n for n, _t in f.type(store).params)
            if got != params:
                raise PolicyLoadError(
                    f"{what}: {INTERFACE}#{name} takes ({', '.join(got)}), expected ({', '.join(params)})"
                )
            funcs[name] = wrap(f, store)
        self._store = store
        self._f = funcs
        info = self.describe()
        self.name, self.version = info.name, info.version

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            if self._dead is not None:
                raise EngineFault(f"policy instance is dead: {self._dead}")
            store = self._store
            try:
                store.set_fuel(self._fuel)
                return self._f[name](store, *args)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
                self._dead = f"{name} faulted: {_cause(e)}"
                raise EngineFault(self._dead) from e

    def _fault(self, why: str) -> EngineFault:
        with self._lock:
            self._dead = why
        return EngineFault(why)

    def _strategy(self, v: Any, fn: str) -> str:
        if v not in STRATEGIES:
            raise self._fault(f"{fn} returned an unknown strategy {v!r}")
        return v

    @property
    def dead(self) -> Optional[str]:
        """Why the instance faulted, or None while it is usable."""
        return self._dead

    # -- the interface -------------------------------------------------------------------------

    def describe(self) -> PolicyInfo:
        r = self._call("describe")
        return PolicyInfo(r["name"], r["version"])

    def default_config(self) -> Dict[str, Any]:
        return dict(self._call("default-config"))

    def configure(self, cfg: Mapping[str, Any], now_ms: int) -> None:
        """Validate and apply ``cfg`` (WIT field names; missing fields come from
        :meth:`default_config`). Raises :class:`ConfigError` naming the first bad field."""
        now_ms = _check_now(now_ms)
        unknown = set(cfg) - {n for n, _k in CONFIG_FIELDS}
        if unknown:
            raise TypeError(f"unknown config fields: {', '.join(sorted(unknown))}")
        full = self.default_config() if len(cfg) < len(CONFIG_FIELDS) else {}
        full.update(cfg)
        rec: Dict[str, Any] = {}
        for name, kind in CONFIG_FIELDS:
            v = full[name]
            if kind == "f64":
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(name, f"must be a number, got {v!r}")
                v = float(v)
            elif kind == "s32":
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(name, f"must be an integer, got {v!r}")
                if not _S32_MIN <= v <= _S32_MAX:
                    raise ConfigError(name, f"must fit in a signed 32-bit integer, got {v}")
            else:
                if v not in STRATEGIES:
                    raise ConfigError(name, f"must be one of {', '.join(STRATEGIES)}, got {v!r}")
            rec[name] = v
        r = _plain_lift(self._call("configure", rec, now_ms))
        if r is None:
            return None
        if isinstance(r, Mapping) and "field" in r:
            raise ConfigError(str(r["field"]), str(r["message"]))
        raise self._fault(f"configure returned {r!r}")  # pragma: no cover

    def record_write(self, key: str, now_ms: int) -> str:
        return self._strategy(self._call("record-write", key, _check_now(now_ms)), "record-write")

    def record_writes(self, keys: Sequence[str], now_ms: int) -> str:
        if not isinstance(keys, list):
            keys = list(keys)
        return self._strategy(self._call("record-writes", keys, _check_now(now_ms)), "record-writes")

    def record_remote_writes(self, count: int, now_ms: int) -> str:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _U32_MAX:
            raise ValueError(f"count must be an int in 0..2**32-1, got {count!r}")
        return self._strategy(
            self._call("record-remote-writes", count, _check_now(now_ms)), "record-remote-writes"
        )

    def current_strategy(self, now_ms: int) -> str:
        return self._strategy(self._call("current-strategy", _check_now(now_ms)), "current-strategy")

    def write_rate(self, now_ms: int) -> float:
        return float(self._call("write-rate", _check_now(now_ms)))

    def pending_batch(self, now_ms: int) -> Batch:
        r = self._call("pending-batch", _check_now(now_ms))
        return Batch(list(r["keys"]), bool(r["flush-all"]))

    def status(self, now_ms: int) -> Snapshot:
        r = self._call("status", _check_now(now_ms))
        return Snapshot(
            self._strategy(r["strategy"], "status"),
            float(r["write-rate"]),
            int(r["buffered-keys"]),
            bool(r["batch-due"]),
            int(r["switches"]),
            bool(r["following"]),
        )

    def follow(self, strategy: str, now_ms: int) -> None:
        self._call("follow", _check_strategy(strategy), _check_now(now_ms))

    def lead(self, now_ms: int) -> None:
        self._call("lead", _check_now(now_ms))

    def __repr__(self) -> str:
        return f"<Engine {self.name} {self.version} from {self.source}{' (dead)' if self._dead else ''}>"
