/*
 * leanpool._runner._engine: what _engine.c (the process engine, the Engine type's
 * methods) and _module.c (the module, an Engine's life cycle) share: an Engine's data,
 * and the few functions one unit calls in the other, none of them per task.
 *
 * Private to the extension; what it declares is hidden: the built module exports
 * PyInit__engine alone, as when it was one unit.  A unit defines PY_SSIZE_T_CLEAN
 * and _GNU_SOURCE and includes Python.h before it.
 */
#ifndef LEANPOOL_ENGINE_H
#define LEANPOOL_ENGINE_H

#include <Python.h>

#include <signal.h>
#include <sys/epoll.h>
#include <sys/types.h>

#define MAX_EVENTS 256

/* flags of a finished command, as take_finished() gives them */
#define FLAG_OUT_TRUNCATED 1
#define FLAG_ERR_TRUNCATED 2
#define FLAG_LEFTOVERS 4 /* its group outlived its main process (or held its pipes) */

/* How a stream's read end is registered in the epoll set (Stream.watch).  Both pipes
 * are one-shot: most commands' pipes give one event each (data and hang-up together,
 * or the hang-up alone), after which the registration is disarmed and the pipe is
 * closed without EPOLL_CTL_DEL; a stream that goes on is re-armed after each event. */
#define WATCH_NONE 0  /* not registered (closed, or not yet) */
#define WATCH_ARMED 1 /* EPOLLIN | EPOLLONESHOT, armed: unregistered before it is closed */
#define WATCH_FIRED 2 /* its event came: registered but disarmed, reports nothing more */

typedef struct {
    int fd;        /* read end; -1 once closed */
    int watch;     /* WATCH_* */
    int wide;      /* grown to BIG_PIPE */
    int truncated; /* bytes past max_output were dropped */
    char *buf;
    size_t len, cap;
} Stream;

/* One started command.  Invariants: pid == 0 exactly when the slot is free (then it
 * is on the free list); reaped is set exactly when its status is known; finished is
 * set when it is reaped and holds no descriptor, and then it is on the finished list
 * until take_finished() frees the slot. */
typedef struct {
    pid_t pid;
    int exit_fd;
    int status;
    int reaped;
    int abandoned;
    int finished;
    int leftovers;
    int next_free;
    Stream out, err;
} Proc;

typedef struct {
    PyObject_HEAD
    int epfd;
    int devnull;
    int pidfds;          /* exits are watched through pidfds (else the loop reaps on SIGCHLD) */
    int fs_utf8;         /* the filesystem encoding is UTF-8: a str's UTF-8 is its argv bytes */
    Py_ssize_t max_output; /* -1: keep everything */
    char **base_env;     /* NULL-terminated "K=V" strings, owned */
    char *path;          /* PATH, for names without a slash */
    int caught[NSIG];    /* signals with a handler in the runner: SIG_DFL in children */
    int ncaught;
    Proc *procs;
    int nprocs;          /* slots in use or free, allocated */
    int free_head;       /* -1: none */
    int running;         /* slots in use */
    int *finished;
    int nfinished, finished_cap;
    struct epoll_event events[MAX_EVENTS];
} Engine;

#pragma GCC visibility push(hidden)

/* _engine.c */
extern PyTypeObject EngineType;
extern PyObject *ExecError, *CwdError, *WatchError;
char **env_array(PyObject *mapping, PyObject **keep); /* "K=V" strings from a mapping */
void note_handlers(Engine *self); /* which signals have a handler in the runner now */

/* _module.c */
PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds);
int Engine_init(Engine *self, PyObject *args, PyObject *kwds);
void Engine_dealloc(Engine *self);

#pragma GCC visibility pop

#endif
