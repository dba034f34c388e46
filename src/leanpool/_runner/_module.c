/*
 * leanpool._runner._engine: the module, and an Engine's life cycle.
 *
 * The module's initialisation (the Engine type, its exceptions and flags, and the
 * codecs' functions from _codec.c) and what an Engine does when it is made and freed
 * (new, init, dealloc): none of it is on the per-task path, which is in _engine.c.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "_codec.h"
#include "_engine.h"

/* -- an Engine's life cycle ---------------------------------------------------------- */

static char **copy_strings(char **strings) {
    size_t n = 0, i;
    char **out;
    while (strings[n] != NULL) n++;
    out = calloc(n + 1, sizeof *out);
    if (out == NULL) return NULL;
    for (i = 0; i < n; i++) {
        out[i] = strdup(strings[i]);
        if (out[i] == NULL) {
            while (i > 0) free(out[--i]);
            free(out);
            return NULL;
        }
    }
    return out;
}

static void free_strings(char **strings) {
    size_t i;
    if (strings == NULL) return;
    for (i = 0; strings[i] != NULL; i++) free(strings[i]);
    free(strings);
}

void Engine_dealloc(Engine *self) {
    int i;
    for (i = 0; i < self->nprocs; i++) {
        Proc *p = &self->procs[i];
        if (p->out.fd >= 0) close(p->out.fd);
        if (p->err.fd >= 0) close(p->err.fd);
        if (p->exit_fd >= 0) close(p->exit_fd);
        free(p->out.buf);
        free(p->err.buf);
    }
    PyMem_Free(self->procs);
    PyMem_Free(self->finished);
    if (self->epfd >= 0) close(self->epfd);
    free_strings(self->base_env);
    free(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"devnull", "env", "path", "max_output", "pidfds", "fs_utf8", NULL};
    int devnull, pidfds, fs_utf8 = 0;
    PyObject *env, *path, *max_output, *keep = NULL;
    char **strings;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOOp|p", kwlist, &devnull, &env, &path,
                                     &max_output, &pidfds, &fs_utf8))
        return -1;
    self->fs_utf8 = fs_utf8;
    if (self->epfd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "an Engine is initialised once");
        return -1;
    }
    self->devnull = devnull;
    self->pidfds = pidfds;
    if (max_output == Py_None) {
        self->max_output = -1;
    } else {
        self->max_output = PyLong_AsSsize_t(max_output);
        if (self->max_output < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "max_output < 0");
            return -1;
        }
    }
    strings = env_array(env, &keep);
    if (strings == NULL) return -1;
    self->base_env = copy_strings(strings);
    PyMem_Free(strings);
    Py_DECREF(keep);
    if (self->base_env == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    {
        char *p;
        Py_ssize_t plen;
        if (PyBytes_AsStringAndSize(path, &p, &plen) < 0) return -1;
        self->path = strdup(p);
        if (self->path == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    note_handlers(self);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    (void)args;
    (void)kwds;
    if (self != NULL) {
        self->epfd = -1;
        self->free_head = -1;
    }
    return (PyObject *)self;
}

/* -- the module ---------------------------------------------------------------------- */

static struct PyModuleDef engine_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "leanpool._runner._engine",
    .m_doc = "The command kind's per-task work in C: start, drain, reap, encode.",
    .m_size = -1,
    .m_methods = codec_methods, /* the module's functions are the codecs' */
};

PyMODINIT_FUNC PyInit__engine(void) {
    PyObject *m;
    if (PyType_Ready(&EngineType) < 0) return NULL;
    m = PyModule_Create(&engine_module);
    if (m == NULL) return NULL;
    ExecError = PyErr_NewExceptionWithDoc("leanpool._runner._engine.ExecError",
                                          "The program could not be run.", PyExc_OSError, NULL);
    CwdError = PyErr_NewExceptionWithDoc("leanpool._runner._engine.CwdError",
                                         "The working directory could not be entered.",
                                         PyExc_OSError, NULL);
    WatchError = PyErr_NewExceptionWithDoc("leanpool._runner._engine.WatchError",
                                           "The command started but could not be watched.",
                                           PyExc_OSError, NULL);
    if (ExecError == NULL || CwdError == NULL || WatchError == NULL) goto fail;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) goto fail;
    Py_INCREF(ExecError);
    Py_INCREF(CwdError);
    Py_INCREF(WatchError);
    if (PyModule_AddObject(m, "ExecError", ExecError) < 0 ||
        PyModule_AddObject(m, "CwdError", CwdError) < 0 ||
        PyModule_AddObject(m, "WatchError", WatchError) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_OUT_TRUNCATED", FLAG_OUT_TRUNCATED) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_ERR_TRUNCATED", FLAG_ERR_TRUNCATED) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_LEFTOVERS", FLAG_LEFTOVERS) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
