/*
 * leanpool._runner._engine: the command kind's per-task work, in C.
 *
 * The lean runner's loop spends most of its own time per command task on mechanics
 * that are the same for every task: two pipes, a start in a new session, draining
 * the pipes as they become readable, reaping the exit, probing the process group for
 * leftovers, and the task's result as one JSON line.  This module does exactly that
 * and nothing else; every decision (what to start, when, timeouts, retries, halts,
 * order, the journal) stays in Python (loop.py, shell.py).  It is optional: where it
 * was not built, or with LEANPOOL_PURE_PYTHON=1, the runner does the same in Python
 * (shell.ShellChild), and the test suite runs on both.
 *
 * An Engine is the runner's one epoll set.  The loop registers its own descriptors in
 * it as in a select.epoll (register, modify, unregister, poll); the descriptors of the
 * commands the engine started are tagged as its own, and poll() handles their events
 * in C and returns only the loop's.  A command that ended (main process reaped, pipes
 * closed) waits in the engine's finished list until take_finished() hands it over as
 * (pid, status, stdout, stderr, flags).
 *
 * Starting: vfork(), then in the child, with every signal blocked since before the
 * vfork: the handlers the runner installed back to SIG_DFL (and SIGPIPE and SIGXFSZ,
 * which Python ignores), setsid(), dup2 of stdin (/dev/null), stdout and stderr, the
 * working directory, an empty signal mask, execve (PATH searched for a name without a
 * slash, as posix_spawnp does, with no shell fallback).  A failure in the child is
 * written into the parent's memory (the child shares it until it execs or exits) and
 * raised by spawn() synchronously, as posix_spawn reports it.  glibc's posix_spawn
 * does the same with clone(CLONE_VM | CLONE_VFORK), but also maps and unmaps a stack
 * and reads the stack limit six times per start: this path makes fewer system calls.
 *
 * Only the standard C library and the kernel: the runner stays lean.
 *
 * Three units, by concern: this one, the process engine (the child side of a start,
 * the bookkeeping, conversions, the Engine type's methods); _codec.c, the two JSON
 * codecs, which are the module's functions; _module.c, the module's initialisation and
 * an Engine's life cycle (new, init, dealloc).  Nothing the loop calls per task
 * crosses from one unit to another: each helper of the per-task path stays static
 * beside its callers, where the compiler inlines it as before the split.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_engine.h"

#define READ_CHUNK 65536     /* one pipe buffer on Linux: one read empties it */
#define BIG_PIPE (1 << 20)   /* a pipe that filled a whole read is grown to this */
#define KEEP_BUFFER 65536    /* a finished command's buffer is kept for the next one up to this */

/* What an epoll registration is about: the low two bits of its data; above them, the
 * loop's descriptor, or the command's slot in procs.  A command's descriptors are all
 * unregistered before it is finished (forget_fd), so no event of an earlier command of
 * a slot comes once the slot is free again. */
#define TAG_LOOP 0 /* a descriptor of the Python loop's: data >> 2 is the fd */
#define TAG_OUT 1  /* a command's stdout pipe */
#define TAG_ERR 2  /* its stderr pipe */
#define TAG_EXIT 3 /* its pidfd */
#define TAG_OF(idx, tag) (((uint64_t)(uint32_t)(idx) << 2) | (tag))

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

PyObject *ExecError;  /* the program could not be run (execve failed) */
PyObject *CwdError;   /* the working directory could not be entered */
PyObject *WatchError; /* the started command could not be watched (epoll) */

/* -- the child side of a start ----------------------------------------------------------- */

typedef struct {
    const char *file;     /* argv[0] */
    char *const *argv;
    char *const *envp;
    const char *cwd;      /* or NULL */
    const char *path;     /* PATH for a name without a slash */
    int in_fd, out_fd, err_fd;
    const int *caught;
    int ncaught;
    volatile int err;     /* written by the child: its errno when it failed */
    volatile int stage;   /* 1: chdir, 2: exec */
} ChildPlan;

/* fd as target in the child: dup2, or, when it has that number already (the runner was
 * started with that descriptor closed), its close-on-exec flag cleared, which dup2 onto
 * itself would leave set. */
static int move_fd(int fd, int target) {
    return fd == target ? fcntl(fd, F_SETFD, 0) : dup2(fd, target);
}

/* Runs in the vfork child: only async-signal-safe calls, nothing written but plan->err
 * and plan->stage, and it never returns. */
static void __attribute__((noreturn, noinline)) child_exec(ChildPlan *plan) {
    struct sigaction dfl;
    sigset_t none;
    int i;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (i = 0; i < plan->ncaught; i++) sigaction(plan->caught[i], &dfl, NULL);
    sigaction(SIGPIPE, &dfl, NULL);
    sigaction(SIGXFSZ, &dfl, NULL);
    setsid();
    if (move_fd(plan->in_fd, 0) < 0 || move_fd(plan->out_fd, 1) < 0 ||
        move_fd(plan->err_fd, 2) < 0) {
        plan->stage = 2;
        plan->err = errno;
        _exit(127);
    }
    if (plan->cwd != NULL && chdir(plan->cwd) != 0) {
        plan->stage = 1;
        plan->err = errno;
        _exit(127);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (strchr(plan->file, '/') != NULL) {
        execve(plan->file, plan->argv, plan->envp);
        plan->err = errno;
    } else {
        /* posix_spawnp's search: each PATH entry in turn; EACCES is remembered and
         * reported if nothing else runs; ENOENT, ENOTDIR and the like move on. */
        size_t flen = strlen(plan->file);
        const char *p = plan->path;
        int seen_eacces = 0, last = ENOENT;
        char buf[4096];
        if (flen == 0) {
            plan->err = ENOENT;
        } else if (flen + 2 > sizeof buf) {
            plan->err = ENAMETOOLONG;
        } else {
            for (;;) {
                const char *end = strchr(p, ':');
                size_t dlen = end ? (size_t)(end - p) : strlen(p);
                if (dlen + flen + 2 <= sizeof buf) {
                    if (dlen == 0) {
                        memcpy(buf, plan->file, flen + 1); /* an empty entry: the cwd */
                    } else {
                        memcpy(buf, p, dlen);
                        buf[dlen] = '/';
                        memcpy(buf + dlen + 1, plan->file, flen + 1);
                    }
                    execve(buf, plan->argv, plan->envp);
                    switch (errno) {
                    case EACCES:
                        seen_eacces = 1;
                        break;
                    case ENOENT:
                    case ENOTDIR:
                    case ESTALE:
                    case ENODEV:
                    case ETIMEDOUT:
                        break;
                    default:
                        plan->stage = 2;
                        plan->err = errno;
                        _exit(127);
                    }
                    last = errno;
                }
                if (end == NULL) break;
                p = end + 1;
            }
            plan->err = seen_eacces ? EACCES : last;
        }
    }
    plan->stage = 2;
    _exit(127);
}

/* vfork and run child_exec in the child; the parent resumes once the child has
 * exec'd or exited.  A function of its own, so that no local of the caller lives
 * across the vfork.  Every signal is blocked from before the vfork until the child
 * has reset the handlers: a handler of the runner's must never run in the child,
 * which shares the runner's memory until it execs. */
static pid_t __attribute__((noinline)) start_child(ChildPlan *plan, int *saved_errno) {
    sigset_t all, old;
    pid_t pid;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = vfork();
    if (pid == 0) child_exec(plan);
    *saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* -- the engine's bookkeeping ------------------------------------------------------------- */

static int take_slot(Engine *self) {
    int idx;
    if (self->free_head < 0) {
        int n = self->nprocs ? self->nprocs * 2 : 16;
        /* The finished list holds each command once at most: room for all of them now,
         * so that finishing one never needs memory (finish cannot fail). */
        int *finished = PyMem_Realloc(self->finished, (size_t)n * sizeof *finished);
        Proc *grown;
        if (finished == NULL) {
            errno = ENOMEM;
            PyErr_SetFromErrno(PyExc_OSError); /* out of resources for now, as EMFILE */
            return -1;
        }
        self->finished = finished;
        self->finished_cap = n;
        grown = PyMem_Realloc(self->procs, (size_t)n * sizeof *grown);
        if (grown == NULL) {
            errno = ENOMEM;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        memset(grown + self->nprocs, 0, (size_t)(n - self->nprocs) * sizeof *grown);
        for (idx = n - 1; idx >= self->nprocs; idx--) {
            grown[idx].next_free = self->free_head;
            grown[idx].out.fd = grown[idx].err.fd = grown[idx].exit_fd = -1;
            self->free_head = idx;
        }
        self->procs = grown;
        self->nprocs = n;
    }
    idx = self->free_head;
    self->free_head = self->procs[idx].next_free;
    self->running++;
    return idx;
}

static void stream_reset(Stream *s) {
    s->fd = -1;
    s->watch = WATCH_NONE;
    s->wide = 0;
    s->truncated = 0;
    s->len = 0;
    if (s->cap > KEEP_BUFFER) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
}

static void free_slot(Engine *self, int idx) {
    Proc *p = &self->procs[idx];
    p->pid = 0;
    p->finished = 0;
    stream_reset(&p->out);
    stream_reset(&p->err);
    p->next_free = self->free_head;
    self->free_head = idx;
    self->running--;
}

static Proc *find(Engine *self, pid_t pid, int *idx_out) {
    int i;
    for (i = 0; i < self->nprocs; i++) {
        if (self->procs[i].pid == pid && pid != 0) {
            if (idx_out != NULL) *idx_out = i;
            return &self->procs[i];
        }
    }
    return NULL;
}

/* Let go of a stream's read end.  An armed one is unregistered first (see forget_fd);
 * one whose one-shot event came is disarmed already, and a disarmed registration
 * reports nothing however long a copy of the descriptor lives on (the kernel drops it
 * with the pipe's last descriptor): it is closed alone, one system call fewer per
 * stream on every command's way out. */
static void forget_stream(Engine *self, Stream *s) {
    if (s->fd >= 0) {
        if (s->watch == WATCH_ARMED) epoll_ctl(self->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
        s->watch = WATCH_NONE;
    }
}

/* Let go of a command's pidfd, registered level-triggered: unregistered before it is
 * closed.  Closing alone would drop the registration only with the descriptor's last
 * copy, and a command started a moment ago may still hold one (a vfork parent resumes
 * before its child closes its close-on-exec descriptors; on a busy machine the child
 * may wait milliseconds for a CPU): the registration would then report the exit on
 * every wait until then, and the loop would spin (as pipes once did: 50 waits a task on
 * 1-10 ms tasks).  An event of its command that came in the same wait is then passed
 * over (on_event: the command finished). */
static void forget_fd(Engine *self, int *fd) {
    if (*fd >= 0) {
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, *fd, NULL);
        close(*fd);
        *fd = -1;
    }
}

static int finish(Engine *self, int idx) {
    Proc *p = &self->procs[idx];
    if (p->finished) return 0;
    /* finished_cap >= nprocs (take_slot): there is room. */
    p->finished = 1;
    self->finished[self->nfinished++] = idx;
    return 0;
}

/* Keep data read from a stream, up to max_output.  The bytes were read into the
 * buffer at s->len already; got says how many. */
static void keep(Engine *self, Stream *s, size_t got) {
    if (self->max_output >= 0 && s->len + got > (size_t)self->max_output) {
        got = (size_t)self->max_output > s->len ? (size_t)self->max_output - s->len : 0;
        s->truncated = 1;
    }
    s->len += got;
}

static int reserve(Stream *s, size_t more) {
    if (s->cap - s->len < more) {
        size_t cap = s->cap ? s->cap : READ_CHUNK;
        char *grown;
        while (cap - s->len < more) cap *= 2;
        grown = realloc(s->buf, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->buf = grown;
        s->cap = cap;
    }
    return 0;
}

static int group_alive(pid_t pgid) {
    if (kill(-pgid, 0) == 0) return 1;
    return errno == EPERM; /* a member changed its credentials: it is still there */
}

static int exit_status(int raw) {
    if (WIFEXITED(raw)) return WEXITSTATUS(raw);
    if (WIFSIGNALED(raw)) return -WTERMSIG(raw);
    return raw;
}

/* Read what fd holds now, then close it; 1 if a writer still held it.  At most one
 * pipe's capacity: a leftover that keeps writing must not keep the loop here. */
static int drain(Engine *self, Proc *p, Stream *s) {
    int flags = fcntl(s->fd, F_GETFL);
    long budget = fcntl(s->fd, F_GETPIPE_SZ);
    int held = 1;
    if (flags >= 0) fcntl(s->fd, F_SETFL, flags | O_NONBLOCK);
    if (budget <= 0) budget = BIG_PIPE;
    while (budget > 0) {
        ssize_t got;
        if (reserve(s, (size_t)budget) < 0) {
            PyErr_Clear(); /* out of memory: drop what is left */
            break;
        }
        got = read(s->fd, s->buf + s->len, (size_t)budget);
        if (got == 0) {
            held = 0;
            break;
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            break; /* EAGAIN: a writer holds it, nothing buffered */
        }
        budget -= got;
        if (!p->abandoned) keep(self, s, (size_t)got);
    }
    forget_stream(self, s);
    return held;
}

/* The main process is reaped: keep what its pipes hold now, and let go of them. */
static int exited(Engine *self, int idx, int status) {
    Proc *p = &self->procs[idx];
    int held = 0;
    p->status = status;
    p->reaped = 1;
    forget_fd(self, &p->exit_fd);
    if (p->out.fd >= 0) held |= drain(self, p, &p->out);
    if (p->err.fd >= 0) held |= drain(self, p, &p->err);
    if (held || group_alive(p->pid)) p->leftovers = 1;
    return finish(self, idx);
}

static int try_reap(Engine *self, int idx) {
    Proc *p = &self->procs[idx];
    int raw;
    pid_t got;
    do {
        got = waitpid(p->pid, &raw, WNOHANG);
    } while (got < 0 && errno == EINTR);
    if (got == p->pid) return exited(self, idx, exit_status(raw)) < 0 ? -1 : 1;
    return 0; /* runs on (ECHILD cannot be: only the runner reaps, and it tells exited()) */
}

/* Watch the main process's exit through a pidfd.  0: watched (or SIGCHLD will tell);
 * -1 with errno: out of descriptors, the loop looks again shortly. */
static int watch_exit(Engine *self, int idx) {
    Proc *p = &self->procs[idx];
    struct epoll_event ev;
    int fd;
    if (p->reaped || p->exit_fd >= 0 || !self->pidfds) return 0;
    fd = (int)syscall(SYS_pidfd_open, p->pid, 0);
    if (fd < 0) return -1;
    ev.events = EPOLLIN;
    ev.data.u64 = TAG_OF(idx, TAG_EXIT);
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    p->exit_fd = fd;
    return 0;
}

/* Register a stream's read end, or re-arm it after its event (see WATCH_*). */
static int arm_stream(Engine *self, int idx, Stream *s, int tag) {
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = TAG_OF(idx, tag);
    if (epoll_ctl(self->epfd, s->watch == WATCH_FIRED ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd,
                  &ev) < 0)
        return -1;
    s->watch = WATCH_ARMED;
    return 0;
}

static int on_stream(Engine *self, int idx, Stream *s, uint32_t events) {
    Proc *p = &self->procs[idx];
    if (s->fd < 0) return 0; /* closed by an earlier event of this batch */
    s->watch = WATCH_FIRED;   /* one-shot: this event disarmed it */
    if (events & EPOLLIN) {
        size_t size = s->wide ? BIG_PIPE : READ_CHUNK;
        ssize_t got;
        if (reserve(s, size) < 0) return -1;
        got = read(s->fd, s->buf + s->len, size);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) goto go_on;
            got = 0; /* a read error: treat as the end of the stream */
        }
        if (got > 0) {
            if (!p->abandoned) keep(self, s, (size_t)got);
            if ((size_t)got == READ_CHUNK && size == READ_CHUNK) {
                /* A full buffer's worth in one read: more is coming. */
                if (fcntl(s->fd, F_SETPIPE_SZ, BIG_PIPE) >= 0) s->wide = 1;
            }
            /* With EPOLLHUP no writer is left; a short read then emptied the pipe. */
            if (!(events & EPOLLHUP) || (size_t)got == size) goto go_on;
        }
    }
    forget_stream(self, s);
    if (p->out.fd < 0 && p->err.fd < 0) {
        if (p->reaped) return finish(self, idx);
        switch (try_reap(self, idx)) {
        case -1:
            return -1;
        case 0: /* it closed its pipes but runs on: its exit will tell */
            if (p->exit_fd < 0 && watch_exit(self, idx) < 0) {
                /* out of descriptors: the loop's exit sweep comes back to it */
            }
            return 0;
        }
    }
    return 0;
go_on:
    if (arm_stream(self, idx, s, s == &p->out ? TAG_OUT : TAG_ERR) < 0) {
        /* EPOLL_CTL_MOD of a registered descriptor does not allocate: this is not
         * expected.  Should it happen, the exit is watched instead, and the pipe is
         * drained then (drain); the stream stays disarmed. */
        if (p->exit_fd < 0 && watch_exit(self, idx) < 0) {
            /* the loop's exit sweep comes back to it */
        }
    }
    return 0;
}

static int on_event(Engine *self, uint64_t data, uint32_t events) {
    int idx = (int)(data >> 2);
    Proc *p;
    if (idx < 0 || idx >= self->nprocs) return 0;
    p = &self->procs[idx];
    if (p->pid == 0 || p->finished) return 0; /* ended earlier in the same wait */
    switch (data & 3) {
    case TAG_OUT:
        return on_stream(self, idx, &p->out, events);
    case TAG_ERR:
        return on_stream(self, idx, &p->err, events);
    case TAG_EXIT:
        if (p->exit_fd < 0) return 0;
        return try_reap(self, idx) < 0 ? -1 : 0;
    }
    return 0;
}

/* -- conversions ---------------------------------------------------------------------- */

/* Room for n C strings and their NULL, and a list of n to keep what owns them. */
static char **new_array(Py_ssize_t n, PyObject **keep) {
    char **out;
    *keep = PyList_New(n);
    out = PyMem_Malloc((size_t)(n + 1) * sizeof *out);
    if (*keep == NULL || out == NULL) {
        Py_CLEAR(*keep);
        PyMem_Free(out);
        PyErr_NoMemory();
        return NULL;
    }
    return out;
}

/* A NULL-terminated array of C strings from a list of str or bytes (os.fsencode'd);
 * *keep holds the bytes objects that own them. */
static char **string_array(PyObject *seq, PyObject **keep, const char *what, int fs_utf8) {
    Py_ssize_t i, n;
    char **out;
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    out = new_array(n, keep);
    if (out == NULL) {
        Py_DECREF(fast);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i), *bytes;
        Py_ssize_t size;
        const char *text = NULL;
        if (fs_utf8 && PyUnicode_CheckExact(item)) {
            /* The str's own UTF-8, kept by the str: with a UTF-8 filesystem encoding,
             * os.fsencode's bytes, unless it holds surrogate escapes (then os.fsencode's
             * own path below, as for any other encoding). */
            text = PyUnicode_AsUTF8AndSize(item, &size);
            if (text == NULL) PyErr_Clear();
        }
        if (text != NULL) {
            Py_INCREF(item);
            PyList_SET_ITEM(*keep, i, item);
            out[i] = (char *)text;
        } else {
            if (!PyUnicode_FSConverter(item, &bytes)) goto fail;
            PyList_SET_ITEM(*keep, i, bytes);
            out[i] = PyBytes_AS_STRING(bytes);
            size = PyBytes_GET_SIZE(bytes);
        }
        if ((Py_ssize_t)strlen(out[i]) != size) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto fail;
        }
    }
    out[n] = NULL;
    Py_DECREF(fast);
    return out;
fail:
    Py_DECREF(fast);
    Py_CLEAR(*keep);
    PyMem_Free(out);
    return NULL;
}

/* "K=V" strings from a mapping of bytes to bytes. */
char **env_array(PyObject *mapping, PyObject **keep) {
    PyObject *items = PyMapping_Items(mapping);
    Py_ssize_t i, n;
    char **out;
    if (items == NULL) return NULL;
    n = PyList_GET_SIZE(items);
    out = new_array(n, keep);
    if (out == NULL) {
        Py_DECREF(items);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(items, i), *key, *value, *entry;
        char *k, *v;
        Py_ssize_t klen, vlen;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "env items must be pairs");
            goto fail;
        }
        key = PyTuple_GET_ITEM(pair, 0);
        value = PyTuple_GET_ITEM(pair, 1);
        if (PyBytes_AsStringAndSize(key, &k, &klen) < 0 ||
            PyBytes_AsStringAndSize(value, &v, &vlen) < 0)
            goto fail;
        if ((Py_ssize_t)strlen(k) != klen || (Py_ssize_t)strlen(v) != vlen) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto fail;
        }
        if (klen == 0 || memchr(k, '=', (size_t)klen) != NULL) {
            PyErr_SetString(PyExc_ValueError, "illegal environment variable name");
            goto fail;
        }
        entry = PyBytes_FromStringAndSize(NULL, klen + 1 + vlen);
        if (entry == NULL) goto fail;
        memcpy(PyBytes_AS_STRING(entry), k, (size_t)klen);
        PyBytes_AS_STRING(entry)[klen] = '=';
        memcpy(PyBytes_AS_STRING(entry) + klen + 1, v, (size_t)vlen);
        PyList_SET_ITEM(*keep, i, entry);
        out[i] = PyBytes_AS_STRING(entry);
    }
    out[n] = NULL;
    Py_DECREF(items);
    return out;
fail:
    Py_DECREF(items);
    Py_CLEAR(*keep);
    PyMem_Free(out);
    return NULL;
}

/* -- the type ------------------------------------------------------------------------- */

static PyObject *loop_ctl(Engine *self, int op, int fd, unsigned int events) {
    struct epoll_event ev;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed Engine");
        return NULL;
    }
    ev.events = events;
    ev.data.u64 = ((uint64_t)(uint32_t)fd << 2) | TAG_LOOP;
    if (epoll_ctl(self->epfd, op, fd, &ev) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Engine_register(Engine *self, PyObject *args) {
    PyObject *obj;
    unsigned int events = EPOLLIN | EPOLLPRI | EPOLLOUT;
    int fd;
    if (!PyArg_ParseTuple(args, "O|I:register", &obj, &events)) return NULL;
    fd = PyObject_AsFileDescriptor(obj);
    if (fd < 0) return NULL;
    return loop_ctl(self, EPOLL_CTL_ADD, fd, events);
}

static PyObject *Engine_modify(Engine *self, PyObject *args) {
    PyObject *obj;
    unsigned int events;
    int fd;
    if (!PyArg_ParseTuple(args, "OI:modify", &obj, &events)) return NULL;
    fd = PyObject_AsFileDescriptor(obj);
    if (fd < 0) return NULL;
    return loop_ctl(self, EPOLL_CTL_MOD, fd, events);
}

static PyObject *Engine_unregister(Engine *self, PyObject *obj) {
    int fd = PyObject_AsFileDescriptor(obj);
    if (fd < 0) return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed Engine");
        return NULL;
    }
    if (epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Engine_poll(Engine *self, PyObject *args) {
    double timeout = -1.0;
    int ms, n, i;
    PyObject *ready;
    if (PyTuple_GET_SIZE(args) > 1) {
        PyErr_SetString(PyExc_TypeError, "poll takes at most one argument");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) == 1 && PyTuple_GET_ITEM(args, 0) != Py_None) {
        timeout = PyFloat_AsDouble(PyTuple_GET_ITEM(args, 0));
        if (timeout == -1.0 && PyErr_Occurred()) return NULL;
    }
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed Engine");
        return NULL;
    }
    if (timeout < 0) {
        ms = -1;
    } else if (timeout * 1000.0 > (double)INT_MAX) {
        ms = INT_MAX;
    } else {
        double whole = timeout * 1000.0;
        ms = (int)whole;
        if ((double)ms < whole) ms++; /* round up, as select.epoll does */
    }
    /* The GIL is kept: the runner has one thread, and taking it back would cost more
     * than the wait saves anyone. */
    n = epoll_wait(self->epfd, self->events, MAX_EVENTS, ms);
    if (n < 0) {
        if (errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0) return NULL;
        n = 0; /* a signal: the loop looks at its flags and comes back */
    }
    ready = PyList_New(0);
    if (ready == NULL) return NULL;
    for (i = 0; i < n; i++) {
        uint64_t data = self->events[i].data.u64;
        uint32_t events = self->events[i].events;
        if ((data & 3) == TAG_LOOP) {
            PyObject *pair = PyTuple_New(2);
            if (pair != NULL) {
                PyTuple_SET_ITEM(pair, 0, PyLong_FromLong((long)(data >> 2)));
                PyTuple_SET_ITEM(pair, 1, PyLong_FromUnsignedLong(events));
                if (PyTuple_GET_ITEM(pair, 0) == NULL || PyTuple_GET_ITEM(pair, 1) == NULL)
                    Py_CLEAR(pair);
            }
            if (pair == NULL || PyList_Append(ready, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(ready);
                return NULL;
            }
            Py_DECREF(pair);
        } else if (on_event(self, data, events) < 0) {
            Py_DECREF(ready);
            return NULL;
        }
    }
    return ready;
}

static PyObject *Engine_spawn(Engine *self, PyObject *args) {
    PyObject *argv_obj, *env_obj = Py_None, *cwd_obj = Py_None;
    PyObject *argv_keep = NULL, *env_keep = NULL, *cwd_bytes = NULL;
    char **argv = NULL, **envp = NULL;
    ChildPlan plan;
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    int idx = -1, saved;
    pid_t pid;
    Proc *p;

    switch (PyTuple_GET_SIZE(args)) {
    case 3:
        cwd_obj = PyTuple_GET_ITEM(args, 2);
        /* fall through */
    case 2:
        env_obj = PyTuple_GET_ITEM(args, 1);
        /* fall through */
    case 1:
        argv_obj = PyTuple_GET_ITEM(args, 0);
        break;
    default:
        PyErr_SetString(PyExc_TypeError, "spawn(argv, env=None, cwd=None)");
        return NULL;
    }
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed Engine");
        return NULL;
    }
    argv = string_array(argv_obj, &argv_keep, "argv must be a sequence", self->fs_utf8);
    if (argv == NULL) goto fail;
    if (argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        goto fail;
    }
    if (env_obj != Py_None) {
        envp = env_array(env_obj, &env_keep);
        if (envp == NULL) goto fail;
    }
    if (cwd_obj != Py_None) {
        if (!PyUnicode_FSConverter(cwd_obj, &cwd_bytes)) goto fail;
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(cwd_bytes)) != PyBytes_GET_SIZE(cwd_bytes)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto fail;
        }
    }
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    idx = take_slot(self);
    if (idx < 0) goto fail;

    plan.file = argv[0];
    plan.argv = argv;
    plan.envp = envp != NULL ? envp : self->base_env;
    plan.cwd = cwd_bytes != NULL ? PyBytes_AS_STRING(cwd_bytes) : NULL;
    plan.path = self->path;
    plan.in_fd = self->devnull;
    plan.out_fd = out[1];
    plan.err_fd = err[1];
    plan.caught = self->caught;
    plan.ncaught = self->ncaught;
    plan.err = 0;
    plan.stage = 0;

    pid = start_child(&plan, &saved);
    /* The child now holds the only write ends, so EOF on ours means it is done. */
    close(out[1]);
    close(err[1]);
    out[1] = err[1] = -1;
    if (pid < 0) {
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    if (plan.err != 0) {
        int raw;
        PyObject *exc;
        while (waitpid(pid, &raw, 0) < 0 && errno == EINTR) {
        }
        PyObject *type = plan.stage == 1 ? CwdError : ExecError, *name;
        if (plan.stage == 1) {
            name = cwd_obj;
            Py_INCREF(name);
        } else {
            name = PySequence_GetItem(argv_obj, 0);
        }
        if (name != NULL) {
            exc = PyObject_CallFunction(type, "isO", plan.err, strerror(plan.err), name);
            Py_DECREF(name);
            if (exc != NULL) {
                PyErr_SetObject(type, exc);
                Py_DECREF(exc);
            }
        }
        goto fail;
    }
    p = &self->procs[idx];
    p->pid = pid;
    p->exit_fd = -1;
    p->status = 0;
    p->reaped = p->abandoned = p->finished = p->leftovers = 0;
    p->out.fd = out[0];
    p->err.fd = err[0];
    out[0] = err[0] = -1;
    if (arm_stream(self, idx, &p->out, TAG_OUT) == 0 && arm_stream(self, idx, &p->err, TAG_ERR) == 0)
        goto started;
    /* The epoll set is full (max_user_watches): undo the start. */
    saved = errno;
    kill(-pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    forget_stream(self, &p->out);
    forget_stream(self, &p->err);
    free_slot(self, idx);
    idx = -1;
    errno = saved;
    PyErr_SetFromErrno(WatchError);
    goto fail;
started:
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(argv_keep);
    Py_XDECREF(env_keep);
    Py_XDECREF(cwd_bytes);
    return PyLong_FromLong((long)pid);
fail:
    if (idx >= 0) free_slot(self, idx);
    if (out[0] >= 0) close(out[0]);
    if (out[1] >= 0) close(out[1]);
    if (err[0] >= 0) close(err[0]);
    if (err[1] >= 0) close(err[1]);
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(argv_keep);
    Py_XDECREF(env_keep);
    Py_XDECREF(cwd_bytes);
    return NULL;
}

static PyObject *Engine_take_finished(Engine *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *done = PyList_New(self->nfinished);
    int i;
    if (done == NULL) return NULL;
    for (i = 0; i < self->nfinished; i++) {
        int idx = self->finished[i];
        Proc *p = &self->procs[idx];
        int flags = (p->out.truncated ? FLAG_OUT_TRUNCATED : 0) |
                    (p->err.truncated ? FLAG_ERR_TRUNCATED : 0) |
                    (p->leftovers ? FLAG_LEFTOVERS : 0);
        PyObject *item = PyTuple_New(5);
        if (item != NULL) {
            PyTuple_SET_ITEM(item, 0, PyLong_FromLong((long)p->pid));
            PyTuple_SET_ITEM(item, 1, PyLong_FromLong(p->status));
            PyTuple_SET_ITEM(item, 2, PyBytes_FromStringAndSize(p->out.buf, (Py_ssize_t)p->out.len));
            PyTuple_SET_ITEM(item, 3, PyBytes_FromStringAndSize(p->err.buf, (Py_ssize_t)p->err.len));
            PyTuple_SET_ITEM(item, 4, PyLong_FromLong(flags));
            if (PyTuple_GET_ITEM(item, 0) == NULL || PyTuple_GET_ITEM(item, 1) == NULL ||
                PyTuple_GET_ITEM(item, 2) == NULL || PyTuple_GET_ITEM(item, 3) == NULL ||
                PyTuple_GET_ITEM(item, 4) == NULL)
                Py_CLEAR(item);
        }
        if (item == NULL) { /* nothing is let go: all of them come with the next call */
            Py_DECREF(done);
            return NULL;
        }
        PyList_SET_ITEM(done, i, item);
    }
    for (i = 0; i < self->nfinished; i++) free_slot(self, self->finished[i]);
    self->nfinished = 0;
    return done;
}

static int pid_arg(PyObject *obj, pid_t *pid) {
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) return -1;
    *pid = (pid_t)value;
    return 0;
}

static PyObject *Engine_watch_exit(Engine *self, PyObject *obj) {
    pid_t pid;
    int idx;
    if (pid_arg(obj, &pid) < 0) return NULL;
    if (find(self, pid, &idx) == NULL || self->procs[idx].finished) Py_RETURN_TRUE;
    if (watch_exit(self, idx) < 0) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static PyObject *Engine_abandon(Engine *self, PyObject *obj) {
    pid_t pid;
    int idx;
    Proc *p;
    if (pid_arg(obj, &pid) < 0) return NULL;
    p = find(self, pid, &idx);
    if (p == NULL || p->finished) Py_RETURN_TRUE;
    p->abandoned = 1;
    p->out.len = p->err.len = 0;
    /* No output is wanted: close the pipes now, so that a descendant that escaped the
     * group cannot keep the runner waiting for EOF. */
    forget_stream(self, &p->out);
    forget_stream(self, &p->err);
    if (p->reaped) {
        if (finish(self, idx) < 0) return NULL;
        Py_RETURN_TRUE;
    }
    if (watch_exit(self, idx) < 0) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static PyObject *Engine_exited(Engine *self, PyObject *args) {
    long pid;
    int status, idx;
    Proc *p;
    if (!PyArg_ParseTuple(args, "li:exited", &pid, &status)) return NULL;
    p = find(self, (pid_t)pid, &idx);
    if (p == NULL || p->reaped) Py_RETURN_NONE;
    if (exited(self, idx, status) < 0) return NULL;
    Py_RETURN_NONE;
}

/* Which signals have a handler in the runner now, as the kernel says: those the signal
 * module installed, and any other (faulthandler's, an extension's).  A started command
 * gets them back at SIG_DFL before it execs. */
void note_handlers(Engine *self) {
    int sig;
    self->ncaught = 0;
    for (sig = 1; sig < NSIG; sig++) {
        struct sigaction current;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &current) != 0) continue;
        if (!(current.sa_flags & SA_SIGINFO) &&
            (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
            continue;
        self->caught[self->ncaught++] = sig;
    }
}

static PyObject *Engine_note_handlers(Engine *self, PyObject *Py_UNUSED(ignored)) {
    note_handlers(self);
    Py_RETURN_NONE;
}

static PyObject *Engine_fileno(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->epfd);
}

static PyObject *Engine_close(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_get_finished(Engine *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->nfinished);
}

static PyObject *Engine_get_running(Engine *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->running);
}

static PyMethodDef Engine_methods[] = {
    {"register", (PyCFunction)Engine_register, METH_VARARGS,
     "register(fd, events=EPOLLIN|EPOLLPRI|EPOLLOUT): watch one of the loop's descriptors."},
    {"modify", (PyCFunction)Engine_modify, METH_VARARGS, "modify(fd, events)"},
    {"unregister", (PyCFunction)Engine_unregister, METH_O, "unregister(fd)"},
    {"poll", (PyCFunction)Engine_poll, METH_VARARGS,
     "poll(timeout=-1) -> [(fd, events)]: wait for events; the commands' own are handled "
     "here, the loop's are returned."},
    {"spawn", (PyCFunction)Engine_spawn, METH_VARARGS,
     "spawn(argv, env=None, cwd=None) -> pid: start a command in a new session, stdin "
     "from /dev/null, stdout and stderr into pipes the engine drains."},
    {"take_finished", (PyCFunction)Engine_take_finished, METH_NOARGS,
     "take_finished() -> [(pid, status, stdout, stderr, flags)]: the commands that ended "
     "since the last call, each reaped, its pipes closed."},
    {"watch_exit", (PyCFunction)Engine_watch_exit, METH_O,
     "watch_exit(pid) -> bool: watch the main process's exit through a pidfd; False when "
     "out of descriptors (look again shortly)."},
    {"abandon", (PyCFunction)Engine_abandon, METH_O,
     "abandon(pid) -> bool: drop the command's output and close its pipes; its exit is "
     "watched (False: out of descriptors, as watch_exit)."},
    {"exited", (PyCFunction)Engine_exited, METH_VARARGS,
     "exited(pid, status): the loop reaped this command (SIGCHLD, no pidfds)."},
    {"note_handlers", (PyCFunction)Engine_note_handlers, METH_NOARGS,
     "note_handlers(): look again at which signals have a handler (after installing "
     "one); a started command gets them back at SIG_DFL."},
    {"fileno", (PyCFunction)Engine_fileno, METH_NOARGS, "The epoll descriptor."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "Close the epoll descriptor."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"finished", (getter)Engine_get_finished, NULL, "Commands waiting for take_finished().", NULL},
    {"running", (getter)Engine_get_running, NULL, "Commands started and not yet taken.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leanpool._runner._engine.Engine",
    .tp_doc = "The runner's epoll set, and the commands it starts, drains and reaps.",
    .tp_basicsize = sizeof(Engine),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Engine_new,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};
