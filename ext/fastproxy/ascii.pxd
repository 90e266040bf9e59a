# Case-insensitive ASCII helpers shared by the parser and the rewriter
# (inline: compiled into each module that cimports them).


cdef inline char lower(char c) noexcept nogil:
    if c >= b'A' and c <= b'Z':
        return c + 32
    return c


cdef inline bint is_lower_literal(const char* s, size_t n, const char* lit, size_t ln) noexcept nogil:
    """Does `s` equal the lower-case literal `lit`, ignoring the case of `s`?"""
    cdef size_t i
    if n != ln:
        return False
    for i in range(n):
        if lower(s[i]) != lit[i]:
            return False
    return True


cdef inline bint equal_ci(const char* a, const char* b, size_t n) noexcept nogil:
    """Do the `n` bytes at `a` and `b` match, ignoring ASCII case?"""
    cdef size_t i
    for i in range(n):
        if lower(a[i]) != lower(b[i]):
            return False
    return True
