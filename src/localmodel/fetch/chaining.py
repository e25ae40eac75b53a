"""sha256 that can stop between blocks and start again from there: chaining values.

sha256 hashes 64-byte blocks in order; between two blocks its whole state is eight 32-bit
words (the *chaining value*) and the count of bytes hashed. Knowing the chaining value at the
start and at the end of a 4 MiB piece lets anyone check that piece alone, and a chain of
checked pieces from the standard start value to the file's sha256 proves the whole file, so
a file filled piece by piece from peers is checked by one sha256 pass per byte instead of two
(a digest per piece, then the file's digest again). See `peers.protocol` for how tables of
chaining values are trusted.

hashlib exposes no chaining value, so this drives OpenSSL's own `SHA256_Update` (the code
hashlib runs for sha256, at the same speed) through its public `SHA256_CTX` structure, in the
very libcrypto that hashlib loaded. Nothing here implements any part of sha256.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import struct
from dataclasses import dataclass

BLOCK = 64
_WORDS = struct.Struct(">8I")


@dataclass(frozen=True)
class ChainState:
    """sha256 after `length` bytes (a multiple of 64): its chaining value, 32 bytes."""

    length: int
    value: bytes


#: The start value of every sha256 (FIPS 180-4, 5.3.3), i.e. the state after no bytes.
START = ChainState(0, _WORDS.pack(0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                                  0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19))


class _Context(ctypes.Structure):
    # openssl/sha.h: typedef struct SHA256state_st { SHA_LONG h[8]; SHA_LONG Nl, Nh;
    # SHA_LONG data[SHA_LBLOCK]; unsigned int num, md_len; } SHA256_CTX;
    _fields_ = [("h", ctypes.c_uint32 * 8), ("Nl", ctypes.c_uint32), ("Nh", ctypes.c_uint32),
                ("data", ctypes.c_uint32 * 16), ("num", ctypes.c_uint), ("md_len", ctypes.c_uint)]


class _Buffer(ctypes.Structure):
    # Python's Py_buffer (Include/pybuffer.h), to pass any bytes-like object without a copy.
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


def _libcrypto() -> ctypes.CDLL:
    importlib.import_module("_hashlib")  # loads the libcrypto hashlib uses: /proc/self/maps names it

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            loaded = [line.split()[-1] for line in maps if "/libcrypto" in line]
    except OSError:
        loaded = []
    candidates = loaded[:1] or [ctypes.util.find_library("crypto") or "libcrypto.so.3"]
    library = ctypes.CDLL(candidates[0])
    library.SHA256_Init.argtypes = [ctypes.POINTER(_Context)]
    library.SHA256_Update.argtypes = [ctypes.POINTER(_Context), ctypes.c_void_p, ctypes.c_size_t]
    library.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Context)]
    return library


_LIB = _libcrypto()
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_Buffer)]
_PyBUF_SIMPLE = 0


class Sha256:
    """hashlib's sha256 interface (`update`, `digest`, `hexdigest`), plus `state()` between
    blocks and a start from any chaining value (`Sha256(ChainState)`)."""

    name = "sha256"

    def __init__(self, start: ChainState = START) -> None:
        if start.length % BLOCK or len(start.value) != 32:
            raise ValueError("a chaining value exists only between 64-byte blocks")
        self._context = _Context()
        _LIB.SHA256_Init(ctypes.byref(self._context))
        self._context.h[:] = _WORDS.unpack(start.value)
        bits = start.length * 8
        self._context.Nl, self._context.Nh = bits & 0xFFFFFFFF, bits >> 32
        self.length = start.length

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = _Buffer()
        _get_buffer(data, ctypes.byref(view), _PyBUF_SIMPLE)
        try:
            # ctypes lets go of the GIL for the call, as hashlib does for large updates.
            _LIB.SHA256_Update(ctypes.byref(self._context), view.buf, view.len)
            self.length += view.len
        finally:
            _release_buffer(ctypes.byref(view))

    def state(self) -> ChainState:
        """The chaining value after the bytes so far (their count must be a multiple of 64)."""
        if self.length % BLOCK:
            raise ValueError(f"{self.length} bytes hashed: not between two blocks")
        return ChainState(self.length, _WORDS.pack(*self._context.h))

    def digest(self) -> bytes:
        copy = _Context()
        # SHA256_Final ends the context it is given: finish a copy.
        ctypes.memmove(ctypes.byref(copy), ctypes.byref(self._context), ctypes.sizeof(_Context))
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, ctypes.byref(copy))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()


def advance(start: ChainState, data: bytes | bytearray | memoryview) -> ChainState:
    """The chaining value after `data` (a multiple of 64 bytes) hashed from `start`."""
    hasher = Sha256(start)
    hasher.update(data)
    return hasher.state()


def finish(start: ChainState, data: bytes | bytearray | memoryview) -> bytes:
    """The sha256 digest of a file whose first `start.length` bytes left `start`, and whose
    remaining bytes are `data`."""
    hasher = Sha256(start)
    hasher.update(data)
    return hasher.digest()


def _self_test() -> None:
    # Refuse to run on a libcrypto whose structure differs from the one described above.
    sample = bytes(range(256)) * 4
    whole = hashlib.sha256(sample).digest()
    middle = advance(START, sample[:512])
    if Sha256().digest() != hashlib.sha256().digest() or finish(middle, sample[512:]) != whole:
        raise ImportError("OpenSSL's SHA256_CTX is not laid out as expected; cannot use chaining values")


_self_test()
