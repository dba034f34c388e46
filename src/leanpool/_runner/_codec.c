/*
 * leanpool._runner._engine's two JSON codecs, in C: the result line and the plain task
 * line.
 *
 * The runner reads a task line and writes a result line for every task, and checks a
 * task file's lines before it runs any.  For the common case of each (a plain
 * success's record; a {"id": ..., "cmd": "..."} line without escapes) these do in C
 * exactly what Python's json makes of it, and leave anything else (None, or the offset
 * they stopped at) to Python's path.  The module gives them as its functions
 * (_module.c); piped.py and results.py call them.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "_codec.h"

/* -- the result line ---------------------------------------------------------------------- */

/* The decimal digits of value into text (at least `width` of them, zero-padded); the
 * number of characters written.  text must hold 21 characters. */
static int format_int(char *text, long long value, int width) {
    char digits[24];
    int n = 0, len = 0;
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value
                                             : (unsigned long long)value;
    do {
        digits[n++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    while (n < width) digits[n++] = '0';
    if (value < 0) text[len++] = '-';
    while (n > 0) text[len++] = digits[--n];
    return len;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int on_stack; /* buf is the caller's stack buffer, not to be freed or realloc'd */
} Out;

static int out_reserve(Out *o, size_t more) {
    if (o->cap - o->len < more) {
        size_t cap = o->cap ? o->cap : 256;
        char *grown;
        while (cap - o->len < more) cap *= 2;
        if (o->on_stack) {
            grown = PyMem_Malloc(cap);
            if (grown != NULL) memcpy(grown, o->buf, o->len);
        } else {
            grown = PyMem_Realloc(o->buf, cap);
        }
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        o->buf = grown;
        o->cap = cap;
        o->on_stack = 0;
    }
    return 0;
}

static int out_put(Out *o, const char *data, size_t len) {
    if (out_reserve(o, len) < 0) return -1;
    memcpy(o->buf + o->len, data, len);
    o->len += len;
    return 0;
}

/* Whether data is strict UTF-8, as Python's decoder takes it: no overlong forms, no
 * surrogates, nothing past U+10FFFF. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            unsigned char lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (i + 2 >= n || s[i + 1] < lo || s[i + 1] > hi || (s[i + 2] & 0xC0) != 0x80)
                return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            unsigned char lo = 0x80, hi = 0xBF;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            if (i + 3 >= n || s[i + 1] < lo || s[i + 1] > hi || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* A JSON string of UTF-8 bytes, escaped as json.dumps(ensure_ascii=False) does. */
static int out_string(Out *o, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t i, start = 0;
    if (out_reserve(o, n + 2) < 0) return -1;
    o->buf[o->len++] = '"';
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t elen = 2;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (out_put(o, s + start, i - start) < 0) return -1;
        start = i + 1;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (out_put(o, esc, elen) < 0) return -1;
    }
    if (out_put(o, s + start, n - start) < 0) return -1;
    return out_put(o, "\"", 1);
}

/* json.dumps(round(seconds, 6)): the shortest repr of the double nearest to the
 * value rounded to six decimals, as Python's round() and float.__repr__ make it.
 *
 * The common duration (0.0001 s to a day) is written from whole microseconds: for
 * those, repr prints the six-decimal value with its trailing zeros dropped.  Whether
 * x * 1e6 rounds to the same integer as Python's correctly rounded decimal is only in
 * doubt near a half; those, and the rest (repr's exponent forms), take Python's own
 * path: float formatting, then parsing back, then repr. */
static int out_duration(Out *o, double seconds) {
    char *fixed, *repr;
    double rounded, scaled = seconds * 1e6, frac;
    int rc;
    scaled = seconds * 1e6;
    frac = scaled - (double)(long long)scaled;
    if (scaled >= 100.0 && scaled < 8.64e10 && (frac < 0.499 || frac > 0.501)) {
        long long us = (long long)(scaled + 0.5);
        char text[48];
        int len = format_int(text, us / 1000000, 1);
        text[len++] = '.';
        len += format_int(text + len, us % 1000000, 6);
        while (text[len - 1] == '0' && text[len - 2] != '.') len--;
        return out_put(o, text, (size_t)len);
    }
    fixed = PyOS_double_to_string(seconds, 'f', 6, 0, NULL);
    if (fixed == NULL) return -1;
    rounded = PyOS_string_to_double(fixed, NULL, NULL);
    PyMem_Free(fixed);
    if (rounded == -1.0 && PyErr_Occurred()) return -1;
    repr = PyOS_double_to_string(rounded, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (repr == NULL) return -1;
    rc = out_put(o, repr, strlen(repr));
    PyMem_Free(repr);
    return rc;
}

/* encode_result(id, status, duration, stdout, stderr, digest=None): see codec_methods. */
static PyObject *encode_result(PyObject *Py_UNUSED(module), PyObject *const *args,
                               Py_ssize_t nargs) {
    PyObject *task_id, *out_obj, *err_obj, *digest = Py_None, *line = NULL;
    long status;
    double duration;
    const char *out_data, *err_data;
    size_t out_len, err_len;
    char stack[512];
    Out o;
    char number[40];
    int len;

    if (nargs < 5 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "encode_result takes 5 or 6 arguments");
        return NULL;
    }
    task_id = args[0];
    status = PyLong_AsLong(args[1]);
    if (status == -1 && PyErr_Occurred()) return NULL;
    duration = PyFloat_AsDouble(args[2]);
    if (duration == -1.0 && PyErr_Occurred()) return NULL;
    out_obj = args[3];
    err_obj = args[4];
    if (nargs == 6) digest = args[5];
    if (!PyBytes_Check(out_obj) || !PyBytes_Check(err_obj)) {
        PyErr_SetString(PyExc_TypeError, "stdout and stderr must be bytes");
        return NULL;
    }
    out_data = PyBytes_AS_STRING(out_obj);
    out_len = (size_t)PyBytes_GET_SIZE(out_obj);
    err_data = PyBytes_AS_STRING(err_obj);
    err_len = (size_t)PyBytes_GET_SIZE(err_obj);
    if (!valid_utf8((const unsigned char *)out_data, out_len) ||
        !valid_utf8((const unsigned char *)err_data, err_len))
        Py_RETURN_NONE; /* the caller gets the bytes as base64 too: Python's path */
    o.buf = stack;
    o.len = 0;
    o.cap = sizeof stack;
    o.on_stack = 1;
    if (out_put(&o, "{\"id\":", 6) < 0) goto done;
    if (PyLong_CheckExact(task_id)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(task_id, &overflow);
        if (!overflow) {
            len = format_int(number, value, 1);
            if (out_put(&o, number, (size_t)len) < 0) goto done;
        } else {
            PyObject *text = PyObject_Str(task_id);
            Py_ssize_t size;
            const char *digits;
            if (text == NULL) goto done;
            digits = PyUnicode_AsUTF8AndSize(text, &size);
            if (digits == NULL || out_put(&o, digits, (size_t)size) < 0) {
                Py_DECREF(text);
                goto done;
            }
            Py_DECREF(text);
        }
    } else if (PyUnicode_CheckExact(task_id)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(task_id, &size);
        if (text == NULL) { /* a lone surrogate: Python's path escapes it */
            PyErr_Clear();
            line = Py_None;
            Py_INCREF(line);
            goto done;
        }
        if (out_string(&o, text, (size_t)size) < 0) goto done;
    } else {
        PyErr_SetString(PyExc_TypeError, "a task id is a str or an int");
        goto done;
    }
    if (out_put(&o, ",\"status\":", 10) < 0) goto done;
    len = format_int(number, status, 1);
    if (out_put(&o, number, (size_t)len) < 0) goto done;
    if (out_put(&o, status == 0 ? ",\"ok\":true" : ",\"ok\":false", status == 0 ? 10 : 11) < 0)
        goto done;
    if (out_put(&o, ",\"duration\":", 12) < 0 || out_duration(&o, duration) < 0) goto done;
    if (out_put(&o, ",\"stdout\":", 10) < 0 || out_string(&o, out_data, out_len) < 0) goto done;
    if (out_put(&o, ",\"stderr\":", 10) < 0 || out_string(&o, err_data, err_len) < 0) goto done;
    if (digest != Py_None) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(digest, &size);
        if (text == NULL || out_put(&o, ",\"task\":", 8) < 0 ||
            out_string(&o, text, (size_t)size) < 0)
            goto done;
    }
    if (out_put(&o, "}\n", 2) < 0) goto done;
    line = PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
done:
    if (!o.on_stack) PyMem_Free(o.buf);
    return line;
}

/* -- the plain task line ------------------------------------------------------------------ */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

/* A JSON string without escapes or control characters, as UTF-8; NULL when the string
 * is anything else (Python's decoder then decides).  *start, *len: its content. */
static const char *plain_string(const char *p, const char *end, const char **start, size_t *len) {
    const char *q;
    if (p >= end || *p != '"') return NULL;
    q = ++p;
    while (q < end && *q != '"') {
        if (*q == '\\' || (unsigned char)*q < 0x20) return NULL;
        q++;
    }
    if (q >= end) return NULL;
    *start = p;
    *len = (size_t)(q - p);
    return q + 1;
}

/* One plain task line, scanned: {"id": <integer or string>, "cmd": "<string>"} in either
 * order, strings without escapes or control characters, an integer of at most 18
 * digits (no fraction, no exponent, no leading zero), JSON whitespace around.  Nothing
 * is decoded: the strings' bytes are not checked for UTF-8 here. */
typedef struct {
    int id_is_string;
    const char *id, *cmd;
    size_t id_len, cmd_len;
} PlainLine;

static int scan_plain(const char *p, const char *end, PlainLine *line) {
    const char *start;
    size_t len;
    int seen_id = 0, seen_cmd = 0, members = 0;

    p = skip_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = skip_ws(p + 1, end);
    for (;;) {
        int is_id;
        p = plain_string(p, end, &start, &len);
        if (p == NULL) return 0;
        if (len == 2 && memcmp(start, "id", 2) == 0 && !seen_id) {
            is_id = seen_id = 1;
        } else if (len == 3 && memcmp(start, "cmd", 3) == 0 && !seen_cmd) {
            is_id = 0;
            seen_cmd = 1;
        } else {
            return 0; /* another field, or one given twice */
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = skip_ws(p + 1, end);
        if (p >= end) return 0;
        if (*p == '"') {
            p = plain_string(p, end, &start, &len);
            if (p == NULL) return 0;
            if (is_id) {
                line->id_is_string = 1;
                line->id = start;
                line->id_len = len;
            } else {
                line->cmd = start;
                line->cmd_len = len;
            }
        } else if (is_id && (*p == '-' || (*p >= '0' && *p <= '9'))) {
            const char *q = p;
            if (*q == '-') q++;
            if (q >= end || *q < '0' || *q > '9') return 0;
            if (*q == '0' && q + 1 < end && q[1] >= '0' && q[1] <= '9') return 0;
            while (q < end && *q >= '0' && *q <= '9') q++;
            if (q - p > 18) return 0; /* big: Python's int rules apply */
            if (q < end && (*q == '.' || *q == 'e' || *q == 'E')) return 0; /* a float */
            line->id_is_string = 0;
            line->id = p;
            line->id_len = (size_t)(q - p);
            p = q;
        } else {
            return 0;
        }
        members++;
        p = skip_ws(p, end);
        if (p >= end) return 0;
        if (*p == '}') break;
        if (*p != ',' || members == 2) return 0;
        p = skip_ws(p + 1, end);
    }
    p = skip_ws(p + 1, end);
    return p == end && seen_id && seen_cmd;
}

/* parse_plain(line) -> (id, cmd) | None: see codec_methods. */
static PyObject *parse_plain(PyObject *Py_UNUSED(module), PyObject *raw) {
    PlainLine line;
    PyObject *task_id, *cmd, *pair;
    const char *p;

    if (!PyBytes_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "parse_plain takes bytes");
        return NULL;
    }
    p = PyBytes_AS_STRING(raw);
    if (!scan_plain(p, p + PyBytes_GET_SIZE(raw), &line)) Py_RETURN_NONE;
    cmd = PyUnicode_DecodeUTF8(line.cmd, (Py_ssize_t)line.cmd_len, "strict");
    if (cmd == NULL) {
        PyErr_Clear(); /* not UTF-8: Python's decoder says where */
        Py_RETURN_NONE;
    }
    if (line.id_is_string) {
        task_id = PyUnicode_DecodeUTF8(line.id, (Py_ssize_t)line.id_len, "strict");
        if (task_id == NULL) {
            PyErr_Clear();
            Py_DECREF(cmd);
            Py_RETURN_NONE;
        }
    } else {
        char number[24];
        memcpy(number, line.id, line.id_len);
        number[line.id_len] = '\0';
        task_id = PyLong_FromLongLong(strtoll(number, NULL, 10));
        if (task_id == NULL) {
            Py_DECREF(cmd);
            return NULL;
        }
    }
    pair = PyTuple_Pack(2, task_id, cmd);
    Py_DECREF(task_id);
    Py_DECREF(cmd);
    return pair;
}

/* Whether a plain line is a valid task as tasks.parse_line takes it: its strings UTF-8,
 * and its cmd holding something besides whitespace (an ASCII character that
 * str.isspace() does not take; a cmd of other characters only is left to Python). */
static int plain_line_valid(const PlainLine *line) {
    size_t i;
    int seen = 0;
    if (!valid_utf8((const unsigned char *)line->cmd, line->cmd_len)) return 0;
    if (line->id_is_string && !valid_utf8((const unsigned char *)line->id, line->id_len))
        return 0;
    for (i = 0; i < line->cmd_len && !seen; i++) {
        unsigned char c = (unsigned char)line->cmd[i];
        if (c < 0x80 && !(c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)))
            seen = 1;
    }
    return seen;
}

/* Whether a line is blank as parse_line takes it (nothing but whitespace): ASCII
 * whitespace only; a line of other whitespace is left to Python. */
static int blank_line(const char *p, const char *end) {
    for (; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (!(c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F))) return 0;
    }
    return 1;
}

/* check_plain_lines(fd, size) -> (offset, lines, tasks): see codec_methods.
 * Invariants: buf[0:have] holds the file's bytes from offset `checked`, read up to
 * `pos`; every line before `checked` is blank or a valid plain task. */
static PyObject *check_plain_lines(PyObject *Py_UNUSED(module), PyObject *args) {
    int fd, failed = 0, saved = 0;
    long long size, pos = 0, checked = 0, lines = 0, tasks = 0;
    size_t cap = 1 << 16, have = 0;
    char *buf;

    if (!PyArg_ParseTuple(args, "iL:check_plain_lines", &fd, &size)) return NULL;
    buf = PyMem_Malloc(cap);
    if (buf == NULL) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        size_t start = 0;
        int at_end;
        if (pos < size && have < cap) {
            size_t want = cap - have;
            ssize_t got;
            if ((long long)want > size - pos) want = (size_t)(size - pos);
            got = pread(fd, buf + have, want, pos);
            if (got < 0) {
                if (errno == EINTR) continue;
                failed = 1;
                saved = errno;
                break;
            }
            if (got == 0) size = pos; /* the file is shorter than it was: end there */
            pos += got;
            have += (size_t)got;
        }
        at_end = pos >= size;
        while (start < have) {
            PlainLine plain;
            char *line = buf + start, *nl = memchr(line, '\n', have - start);
            char *stop = nl != NULL ? nl : buf + have;
            size_t next = (size_t)(stop - buf) + (nl != NULL ? 1 : 0);
            if (nl == NULL && !at_end) break; /* a partial line: read on */
            if (blank_line(line, stop)) {
                lines++; /* skipped by the parser, but a line all the same */
            } else if (scan_plain(line, stop, &plain) && plain_line_valid(&plain)) {
                lines++;
                tasks++;
            } else {
                goto done; /* Python's parser takes it from here */
            }
            checked += (long long)(next - start);
            start = next;
        }
        if (at_end && start >= have) break;  /* the whole file */
        if (start == 0 && have == cap) break; /* a line longer than the buffer */
        memmove(buf, buf + start, have - start);
        have -= start;
    }
done:
    Py_END_ALLOW_THREADS
    PyMem_Free(buf);
    if (failed) {
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(LLL)", checked, lines, tasks);
}

PyMethodDef codec_methods[] = {
    {"check_plain_lines", (PyCFunction)check_plain_lines, METH_VARARGS,
     "check_plain_lines(fd, size) -> (offset, lines, tasks): the validation pass of a "
     "task file, in C, as far as its lines are plain (as parse_plain takes them, valid "
     "as tasks.parse_line would find them) or blank: the first byte, line count and "
     "task count after that prefix.  Python's parser goes on from offset."},
    {"parse_plain", (PyCFunction)parse_plain, METH_O,
     "parse_plain(line) -> (id, cmd) | None: the common task line, {\"id\": ..., "
     "\"cmd\": \"...\"}, as json.loads reads it, for strings without escapes and ids "
     "of up to 18 digits; None for any other line, which Python's parser takes."},
    {"encode_result", (PyCFunction)(void (*)(void))encode_result, METH_FASTCALL,
     "encode_result(id, status, duration, stdout, stderr, digest=None) -> bytes | None: "
     "the plain result record as encode_line writes it (id, status, ok, duration, stdout, "
     "stderr, and the journal's task digest); None when an output is not UTF-8 or the id "
     "holds a lone surrogate, which Python's path encodes."},
    {NULL, NULL, 0, NULL},
};
