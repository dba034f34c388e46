/*
 * leanpool._runner._engine: what _codec.c (the result line's encoder, the plain task
 * line's parser and validator) gives the module: its functions, with their docstrings.
 *
 * Private to the extension, and hidden: the built module exports PyInit__engine alone.
 * A unit defines PY_SSIZE_T_CLEAN and includes Python.h before it.
 */
#ifndef LEANPOOL_CODEC_H
#define LEANPOOL_CODEC_H

#include <Python.h>

#pragma GCC visibility push(hidden)

extern PyMethodDef codec_methods[]; /* encode_result, parse_plain, check_plain_lines */

#pragma GCC visibility pop

#endif
