"""HPACK, header compression for HTTP/2 (RFC 7541), in C.

The decoder reads the header blocks a peer sends: integers with N-bit prefixes,
string literals (plain or Huffman-coded), the static table, and a dynamic table
whose size the peer may change with size updates, never past the bound our
SETTINGS_HEADER_TABLE_SIZE gives. Everything from the wire is bounds-checked:
an integer of more than four continuation bytes, an index past the tables, a
string longer than the block, a Huffman code with EOS or with padding that is
not a prefix of EOS of at most 7 bits, or a size update after a field (it must
come first in a block, RFC 7541 4.2) is a HpackError. The decoded header list
is measured as RFC 7541 4.1 counts it (name + value + 32 per field) while it is
decoded, so that a block that references one large table entry many times (an
"HPACK bomb") is refused at the field that crosses the limit, with
HeaderListTooLarge, before the list is built.

The encoder writes the response heads we send: a field found whole in the
static or dynamic table is one index; otherwise a literal that names the table
entry when it can, added to the dynamic table when it is likely to repeat on
the connection. Fields that change per response (content-length, etag,
last-modified, age) are literals without indexing, so that they do not push
the repeated ones out of the table; credentials and cookies (authorization,
proxy-authorization, set-cookie, cookie) are never-indexed literals (RFC 7541
7.1.3), so that no intermediary compresses them either. A string is
Huffman-coded when that makes it shorter.

The Huffman code is RFC 7541 Appendix B. Decoding walks a table of 256 states
(the internal nodes of the code tree) four bits at a time, built at import from
the code lengths and codes below: one lookup per nibble, at most one symbol out
per nibble (no code is shorter than five bits).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int16_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


class HpackError(ValueError):
    """A header block that is not valid HPACK: a COMPRESSION_ERROR (RFC 9113 4.3)."""


class HeaderListTooLarge(HpackError):
    """A header block whose decoded list is over the limit (RFC 7541 4.1 sizes)."""


DEFAULT_TABLE_SIZE = 4096

# RFC 7541 Appendix A.
STATIC_TABLE = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"200"), (b":status", b"204"), (b":status", b"206"), (b":status", b"304"),
    (b":status", b"400"), (b":status", b"404"), (b":status", b"500"),
    (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""),
    (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""), (b"max-forwards", b""),
    (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
DEF_STATIC_LEN = 61

cdef tuple _STATIC = STATIC_TABLE
cdef dict _STATIC_FIELD = {}  # (name, value) -> index
cdef dict _STATIC_NAME = {}  # name -> its first index
for _i, _field in enumerate(STATIC_TABLE):
    _STATIC_FIELD.setdefault(_field, _i + 1)
    _STATIC_NAME.setdefault(_field[0], _i + 1)

# Literals without indexing: values that differ from one response to the next.
cdef frozenset _NO_INDEX = frozenset((b"content-length", b"etag", b"last-modified", b"age",
                                      b"content-range", b"x-request-id"))
# Never-indexed literals (RFC 7541 7.1.3).
cdef frozenset _SENSITIVE = frozenset((b"authorization", b"proxy-authorization",
                                       b"set-cookie", b"cookie"))

# RFC 7541 Appendix B: the code of each symbol (0-255, then EOS), aligned to the
# least significant bit, and its length in bits.
cdef uint32_t HUFF_CODE[257]
HUFF_CODE[:] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
    0x3fffffff,
]
cdef uint8_t HUFF_LEN[257]
HUFF_LEN[:] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
]

cdef enum:
    EOS = 256
    HD_STATES = 256
    HD_NONE = -1  # no symbol out of this nibble
    HD_FAIL = -2  # EOS inside the string, or a path out of the code
    INT_MAX_CONT = 4  # continuation bytes of an integer: values up to 2**28 + prefix
    ENTRY_OVERHEAD = 32  # RFC 7541 4.1

# Decoding: state = an internal node of the code tree (0 = the root).
cdef uint8_t HD_NEXT[HD_STATES][16]
cdef int16_t HD_SYM[HD_STATES][16]
cdef uint8_t HD_ACCEPT[HD_STATES]  # may the string end in this state (valid padding)?


cdef int _build_decoder() except -1:
    # The tree: child[node][bit] >= 0 is an internal node, -1 - sym a leaf, -1000 none.
    cdef int child[HD_STATES][2]
    cdef int depth[HD_STATES]
    cdef uint8_t ones[HD_STATES]  # the path from the root is all 1 bits
    cdef int nodes = 1, sym, bit, i, node, nxt, x, k, out, cur
    cdef uint32_t code
    for i in range(HD_STATES):
        child[i][0] = child[i][1] = -1000
    depth[0] = 0
    ones[0] = 1
    for sym in range(257):
        code = HUFF_CODE[sym]
        node = 0
        for i in range(HUFF_LEN[sym] - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                if child[node][bit] != -1000:
                    raise ImportError("_hpack: Huffman table is not a prefix code")
                child[node][bit] = -1 - sym
            else:
                nxt = child[node][bit]
                if nxt == -1000:
                    if nodes >= HD_STATES:
                        raise ImportError("_hpack: Huffman tree too large")
                    nxt = nodes
                    nodes += 1
                    child[node][bit] = nxt
                    child[nxt][0] = child[nxt][1] = -1000
                    depth[nxt] = depth[node] + 1
                    ones[nxt] = ones[node] and bit
                elif nxt < 0:
                    raise ImportError("_hpack: Huffman table is not a prefix code")
                node = nxt
    if nodes != HD_STATES:
        raise ImportError("_hpack: Huffman tree incomplete")
    for node in range(HD_STATES):
        if child[node][0] == -1000 or child[node][1] == -1000:
            raise ImportError("_hpack: Huffman tree incomplete")
        HD_ACCEPT[node] = node == 0 or (ones[node] and depth[node] <= 7)
        for x in range(16):
            cur = node
            out = HD_NONE
            for k in range(3, -1, -1):
                nxt = child[cur][(x >> k) & 1]
                if nxt < 0:
                    sym = -1 - nxt
                    out = HD_FAIL if sym == EOS else sym
                    cur = 0
                    if sym == EOS:
                        break
                else:
                    cur = nxt
            HD_NEXT[node][x] = cur
            HD_SYM[node][x] = out
    return 0


_build_decoder()


cdef inline Py_ssize_t huffman_decode(const uint8_t* p, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """Decode n bytes into out (room for 2 * n): the length, or -1."""
    cdef Py_ssize_t i, o = 0
    cdef int state = 0, s
    cdef uint8_t b
    for i in range(n):
        b = p[i]
        s = HD_SYM[state][b >> 4]
        if s >= 0:
            out[o] = <uint8_t>s
            o += 1
        elif s == HD_FAIL:
            return -1
        state = HD_NEXT[state][b >> 4]
        s = HD_SYM[state][b & 15]
        if s >= 0:
            out[o] = <uint8_t>s
            o += 1
        elif s == HD_FAIL:
            return -1
        state = HD_NEXT[state][b & 15]
    if not HD_ACCEPT[state]:
        return -1
    return o


cdef inline Py_ssize_t huffman_length(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t bits = 0
    cdef Py_ssize_t i
    for i in range(n):
        bits += HUFF_LEN[p[i]]
    return <Py_ssize_t>((bits + 7) >> 3)


cdef inline Py_ssize_t huffman_encode(const uint8_t* p, Py_ssize_t n, uint8_t* out) noexcept nogil:
    cdef uint64_t acc = 0
    cdef int nbits = 0, length
    cdef Py_ssize_t i, o = 0
    for i in range(n):
        length = HUFF_LEN[p[i]]
        acc = (acc << length) | HUFF_CODE[p[i]]
        nbits += length
        while nbits >= 8:
            nbits -= 8
            out[o] = <uint8_t>(acc >> nbits)
            o += 1
        acc &= (<uint64_t>1 << nbits) - 1
    if nbits:
        out[o] = <uint8_t>((acc << (8 - nbits)) | (0xff >> nbits))
        o += 1
    return o


def huffman_encode_bytes(bytes data):
    """Huffman-code `data` (RFC 7541 5.2), padding included."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t size = huffman_length(<const uint8_t*>PyBytes_AS_STRING(data), n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    huffman_encode(<const uint8_t*>PyBytes_AS_STRING(data), n, <uint8_t*>PyBytes_AS_STRING(out))
    return out


def huffman_decode_bytes(bytes data):
    """The bytes a Huffman-coded string stands for; HpackError if it is not valid."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(2 * n + 1)
    cdef Py_ssize_t o
    if buf == NULL:
        raise MemoryError()
    try:
        o = huffman_decode(<const uint8_t*>PyBytes_AS_STRING(data), n, buf)
        if o < 0:
            raise HpackError("invalid Huffman-coded string")
        return PyBytes_FromStringAndSize(<char*>buf, o)
    finally:
        PyMem_Free(buf)


# -- decoder --------------------------------------------------------------------------

cdef inline Py_ssize_t read_int(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos,
                                int prefix) except -1:
    """An integer with an N-bit prefix (RFC 7541 5.1) at p[pos[0]] (pos < n)."""
    cdef Py_ssize_t mask = (1 << prefix) - 1
    cdef Py_ssize_t value = p[pos[0]] & mask
    cdef Py_ssize_t i = pos[0] + 1
    cdef int shift = 0, count = 0
    cdef uint8_t b
    if value < mask:
        pos[0] = i
        return value
    while True:
        if i >= n:
            raise HpackError("header block ends inside an integer")
        if count == INT_MAX_CONT:
            raise HpackError("integer too large")
        b = p[i]
        i += 1
        count += 1
        value += <Py_ssize_t>(b & 0x7f) << shift
        shift += 7
        if not b & 0x80:
            break
    pos[0] = i
    return value


cdef class HpackDecoder:
    """The decoding context of one connection (RFC 7541 2.2)."""

    def __cinit__(self, Py_ssize_t max_table_size=DEFAULT_TABLE_SIZE,
                  Py_ssize_t max_header_list_size=1 << 20):
        self.table = []
        self.size = 0
        self.max_size = max_table_size
        self.max_allowed = max_table_size
        self.max_header_list_size = max_header_list_size

    @property
    def table_size(self):
        return self.size

    @property
    def max_table_size(self):
        """The table size the peer's last size update set."""
        return self.max_size

    @property
    def table_entries(self):
        """The dynamic table, newest first (index 62 first)."""
        return list(reversed(self.table))

    cdef int _evict(self, Py_ssize_t room) except -1:
        cdef tuple entry
        cdef Py_ssize_t drop = 0, count = len(self.table)
        while self.size + room > self.max_size and drop < count:
            entry = <tuple>self.table[drop]
            self.size -= PyBytes_GET_SIZE(entry[0]) + PyBytes_GET_SIZE(entry[1]) + ENTRY_OVERHEAD
            drop += 1
        if drop:
            del self.table[:drop]
        return 0

    cdef int _add(self, bytes name, bytes value) except -1:
        cdef Py_ssize_t need = PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + ENTRY_OVERHEAD
        if need > self.max_size:
            self.table.clear()  # RFC 7541 4.4: an entry larger than the table empties it
            self.size = 0
            return 0
        self._evict(need)
        self.table.append((name, value))
        self.size += need
        return 0

    cdef tuple _entry(self, Py_ssize_t index):
        cdef Py_ssize_t dyn, count
        if index == 0:
            raise HpackError("index 0")
        if index <= DEF_STATIC_LEN:
            return <tuple>_STATIC[index - 1]
        dyn = index - DEF_STATIC_LEN - 1
        count = len(self.table)
        if dyn >= count:
            raise HpackError(f"index {index} past the tables")
        return <tuple>self.table[count - 1 - dyn]

    cdef bytes _string(self, const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos):
        cdef bint huff
        cdef Py_ssize_t length, start, o
        cdef uint8_t stackbuf[512]
        cdef uint8_t* buf
        if pos[0] >= n:
            raise HpackError("header block ends before a string")
        huff = p[pos[0]] & 0x80
        length = read_int(p, n, pos, 7)
        start = pos[0]
        if length > n - start:
            raise HpackError("string longer than the header block")
        pos[0] = start + length
        if not huff:
            return PyBytes_FromStringAndSize(<const char*>p + start, length)
        if 2 * length <= 512:
            buf = stackbuf
        else:
            buf = <uint8_t*>PyMem_Malloc(2 * length)
            if buf == NULL:
                raise MemoryError()
        o = huffman_decode(p + start, length, buf)
        try:
            if o < 0:
                raise HpackError("invalid Huffman-coded string")
            return PyBytes_FromStringAndSize(<char*>buf, o)
        finally:
            if buf != stackbuf:
                PyMem_Free(buf)

    cdef list decode_ptr(self, const uint8_t* p, Py_ssize_t n):
        cdef list headers = []
        cdef Py_ssize_t pos = 0, index, total = 0, limit = self.max_header_list_size
        cdef uint8_t b
        cdef bint fields = False
        cdef tuple entry
        cdef bytes name, value
        while pos < n:
            b = p[pos]
            if b & 0x80:  # indexed field (6.1)
                entry = self._entry(read_int(p, n, &pos, 7))
                name = <bytes>entry[0]
                value = <bytes>entry[1]
            elif b & 0xc0 == 0x40:  # literal with incremental indexing (6.2.1)
                index = read_int(p, n, &pos, 6)
                name = <bytes>self._entry(index)[0] if index else self._string(p, n, &pos)
                value = self._string(p, n, &pos)
                self._add(name, value)
            elif b & 0xe0 == 0x20:  # dynamic table size update (6.3)
                if fields:
                    raise HpackError("table size update after a field")
                index = read_int(p, n, &pos, 5)
                if index > self.max_allowed:
                    raise HpackError(f"table size update to {index}, over {self.max_allowed}")
                self.max_size = index
                self._evict(0)
                continue
            else:  # literal without indexing / never indexed (6.2.2, 6.2.3)
                index = read_int(p, n, &pos, 4)
                name = <bytes>self._entry(index)[0] if index else self._string(p, n, &pos)
                value = self._string(p, n, &pos)
            fields = True
            total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + ENTRY_OVERHEAD
            if total > limit:
                raise HeaderListTooLarge(f"header list over {limit} bytes")
            headers.append((name, value))
        return headers

    def decode(self, const uint8_t[::1] data not None):
        """The (name, value) list of one whole header block."""
        if data.shape[0] == 0:
            return []
        return self.decode_ptr(&data[0], data.shape[0])

    def set_max_allowed(self, Py_ssize_t size):
        """Our SETTINGS_HEADER_TABLE_SIZE (acknowledged): the bound for size updates."""
        if size < 0:
            raise ValueError("negative table size")
        self.max_allowed = size
        if self.max_size > size:
            self.max_size = size
            self._evict(0)


# -- encoder --------------------------------------------------------------------------

cdef struct Buf:
    uint8_t* data
    Py_ssize_t len
    Py_ssize_t cap


cdef inline int buf_reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef uint8_t* grown
    if b.len + more <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < b.len + more:
        cap = b.len + more
    grown = <uint8_t*>PyMem_Realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int put_int(Buf* b, Py_ssize_t value, int prefix, uint8_t flags) except -1:
    cdef Py_ssize_t mask = (1 << prefix) - 1
    buf_reserve(b, 10)
    if value < mask:
        b.data[b.len] = flags | <uint8_t>value
        b.len += 1
        return 0
    b.data[b.len] = flags | <uint8_t>mask
    b.len += 1
    value -= mask
    while value >= 0x80:
        b.data[b.len] = <uint8_t>(value & 0x7f) | 0x80
        b.len += 1
        value >>= 7
    b.data[b.len] = <uint8_t>value
    b.len += 1
    return 0


cdef inline int put_string(Buf* b, bytes s, bint huffman) except -1:
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
    cdef Py_ssize_t h = huffman_length(p, n) if huffman else n
    if h < n:
        put_int(b, h, 7, 0x80)
        buf_reserve(b, h)
        huffman_encode(p, n, b.data + b.len)
        b.len += h
    else:
        put_int(b, n, 7, 0)
        buf_reserve(b, n)
        memcpy(b.data + b.len, p, n)
        b.len += n
    return 0


cdef class HpackEncoder:
    """The encoding context of one connection. The dynamic table is kept as a
    list (oldest first) plus maps from a field and from a name to the insertion
    number of their newest entry: entry number k has index 62 + (inserted - 1 - k)."""

    def __cinit__(self, Py_ssize_t max_table_size=DEFAULT_TABLE_SIZE):
        self.table = []
        self.by_field = {}
        self.by_name = {}
        self.inserted = 0
        self.size = 0
        self.cap = max_table_size  # our own bound: never more table than this
        self.max_size = max_table_size
        self.pending_min = -1
        self.huffman = True

    @property
    def table_size(self):
        return self.size

    @property
    def max_table_size(self):
        return self.max_size

    def set_max_table_size(self, Py_ssize_t peer_limit):
        """The peer's SETTINGS_HEADER_TABLE_SIZE: our table is at most that (and at
        most what we were made with); the next block starts with the size update."""
        cdef Py_ssize_t size = min(peer_limit, self.cap)
        if size < 0:
            raise ValueError("negative table size")
        if size == self.max_size and self.pending_min < 0:
            return
        if self.pending_min < 0 or size < self.pending_min:
            self.pending_min = size  # the smallest size since the last block
        self.max_size = size
        self._evict(0)

    cdef int _evict(self, Py_ssize_t room) except -1:
        cdef tuple entry
        cdef Py_ssize_t drop = 0, count = len(self.table), first = self.inserted - count
        cdef object key
        while self.size + room > self.max_size and drop < count:
            entry = <tuple>self.table[drop]
            self.size -= PyBytes_GET_SIZE(entry[0]) + PyBytes_GET_SIZE(entry[1]) + ENTRY_OVERHEAD
            if self.by_field.get(entry) == first + drop:
                del self.by_field[entry]
            key = entry[0]
            if self.by_name.get(key) == first + drop:
                del self.by_name[key]
            drop += 1
        if drop:
            del self.table[:drop]
        return 0

    cdef int _add(self, tuple field, Py_ssize_t need) except -1:
        self._evict(need)
        self.table.append(field)
        self.by_field[field] = self.inserted
        self.by_name[field[0]] = self.inserted
        self.inserted += 1
        self.size += need
        return 0

    cdef bytes encode_list(self, list headers):
        cdef Buf b
        cdef object item, found
        cdef tuple field
        cdef bytes name, value
        cdef Py_ssize_t index, need
        cdef bint huff = self.huffman
        b.data = <uint8_t*>PyMem_Malloc(256)
        if b.data == NULL:
            raise MemoryError()
        b.len = 0
        b.cap = 256
        try:
            if self.pending_min >= 0:
                if self.pending_min < self.max_size:
                    put_int(&b, self.pending_min, 5, 0x20)
                put_int(&b, self.max_size, 5, 0x20)
                self.pending_min = -1
            for item in headers:
                field = <tuple?>item
                if len(field) != 2:
                    raise ValueError("a header field is a (name, value) pair")
                name = <bytes?>field[0]
                value = <bytes?>field[1]
                # Whole fields in the static table: pseudo-headers, accept-encoding and
                # empty values only; any other field skips that lookup.
                if (PyBytes_GET_SIZE(value) == 0 or PyBytes_AS_STRING(name)[0] == 58
                        or name == b"accept-encoding"):
                    found = _STATIC_FIELD.get(field)
                    if found is not None:
                        put_int(&b, <Py_ssize_t>found, 7, 0x80)
                        continue
                found = self.by_field.get(field)
                if found is not None:
                    put_int(&b, DEF_STATIC_LEN + self.inserted - <Py_ssize_t>found, 7, 0x80)
                    continue
                found = _STATIC_NAME.get(name)
                if found is not None:
                    index = <Py_ssize_t>found
                else:
                    found = self.by_name.get(name)
                    index = DEF_STATIC_LEN + self.inserted - <Py_ssize_t>found if found is not None else 0
                need = PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + ENTRY_OVERHEAD
                if name in _SENSITIVE:
                    put_int(&b, index, 4, 0x10)
                elif name in _NO_INDEX or need > self.max_size * 3 // 4:
                    put_int(&b, index, 4, 0x00)
                else:
                    put_int(&b, index, 6, 0x40)
                    if not index:
                        put_string(&b, name, huff)
                    put_string(&b, value, huff)
                    # The caller's own tuple: a field sent again (the same objects,
                    # see _h2stream's field cache) is found by identity.
                    self._add(field, need)
                    continue
                if not index:
                    put_string(&b, name, huff)
                put_string(&b, value, huff)
            return PyBytes_FromStringAndSize(<char*>b.data, b.len)
        finally:
            PyMem_Free(b.data)

    def encode(self, headers, bint huffman=True):
        """One header block for `headers`, a sequence of (name, value) bytes pairs
        (names in lower case)."""
        self.huffman = huffman
        return self.encode_list(headers if type(headers) is list else list(headers))
