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

#define READ_CHUNK 65536     /* one pipe buffer on Linux: one read empties it */
#define BIG_PIPE (1 << 20)   /* a pipe that filled a whole read is grown to this */
#define MAX_EVENTS 256
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

/* flags of a finished command, as take_finished() gives them */
#define FLAG_OUT_TRUNCATED 1
#define FLAG_ERR_TRUNCATED 2
#define FLAG_LEFTOVERS 4 /* its group outlived its main process (or held its pipes) */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

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

static PyObject *ExecError;  /* the program could not be run (execve failed) */
static PyObject *CwdError;   /* the working directory could not be entered */
static PyObject *WatchError; /* the started command could not be watched (epoll) */

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
static char **env_array(PyObject *mapping, PyObject **keep) {
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

/* -- the type ------------------------------------------------------------------------- */

static void Engine_dealloc(Engine *self) {
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

static void note_handlers(Engine *self);

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
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

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    (void)args;
    (void)kwds;
    if (self != NULL) {
        self->epfd = -1;
        self->free_head = -1;
    }
    return (PyObject *)self;
}

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
static void note_handlers(Engine *self) {
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

static PyTypeObject EngineType = {
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

/* encode_result(id, status, duration, stdout, stderr, digest=None): see module_methods. */
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

/* parse_plain(line) -> (id, cmd) | None: see module_methods. */
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

/* check_plain_lines(fd, size) -> (offset, lines, tasks): see module_methods.
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

static PyMethodDef module_methods[] = {
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

static struct PyModuleDef engine_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "leanpool._runner._engine",
    .m_doc = "The command kind's per-task work in C: start, drain, reap, encode.",
    .m_size = -1,
    .m_methods = module_methods,
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
