/*
 * ceiling: the least a pool has to do to run shell tasks the way leanpool's runner
 * runs them, and hand each task's output back.
 *
 * Usage: ceiling PARALLEL < commands   (one shell command per line; line i is task i)
 *
 * Per task, the same work as the runner (src/leanpool/_runner), and nothing more:
 *   - two pipes, one for stdout and one for stderr (pipe2 with O_CLOEXEC);
 *   - posix_spawn (glibc's clone(CLONE_VM|CLONE_VFORK) path) of `/bin/sh -c LINE`,
 *     with POSIX_SPAWN_SETSID (a new session per child), POSIX_SPAWN_SETSIGDEF for
 *     SIGPIPE and SIGXFSZ (reset to default in the child), POSIX_SPAWN_SETSIGMASK (an
 *     empty mask), and file actions that dup2 one /dev/null descriptor (opened once,
 *     as the runner does) to 0 and the pipes' write ends to 1 and 2;
 *   - only descriptors 0, 1 and 2 are inherited: every other descriptor of this
 *     process is close-on-exec (those it inherited are marked so at start);
 *   - both pipes are drained as they become readable, in one poll() loop over every
 *     running task (reads of 64 KiB; a pipe that fills a whole read is grown to 1 MiB
 *     and read 1 MiB at a time, as the runner does; a short read with POLLHUP is taken
 *     as the end, without a read for EOF);
 *   - when both pipes reached EOF the child is reaped with waitpid();
 *   - the task's whole output is forwarded on this program's stdout as one record,
 *     written with one writev() as soon as the task is done:
 *
 *         "INDEX STATUS OUTBYTES ERRBYTES\n" OUTBYTES bytes of stdout, ERRBYTES of stderr
 *
 *     INDEX is the task's line number from 0; STATUS is the exit code, or minus the
 *     signal number when a signal ended the task (leanpool's convention).
 *
 * What it leaves out is what is particular to leanpool, not to running tasks: JSON,
 * ids, timeouts, journals, spill files, the caller's liveness.  So its speed is the
 * machine's limit for a pool that does this work; the harness (bench.py) checks each
 * record against its task (index, status, exact stdout, empty stderr).  Its own stdout
 * pipe is grown to 1 MiB, as the runner grows its own.
 * Exit status: 0, or 1 on a usage or system error (a task that could not be started
 * is a system error here: /bin/sh always exists).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define READ_CHUNK 65536
#define BIG_PIPE (1 << 20)

struct stream {
    int fd;      /* read end of the pipe; -1 once it reached EOF */
    int big;     /* 1 once a read filled READ_CHUNK: the pipe was grown to BIG_PIPE */
    char *data;  /* everything read so far, kept until the task's record is written */
    size_t len, cap;
};

struct slot {
    pid_t pid;    /* 0 when the slot is free */
    size_t index; /* the task's line number, from 0 */
    struct stream out, err;
};

static int devnull = -1;
static posix_spawnattr_t attr;

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Reads stdin into an array of NUL-terminated lines (newline stripped); every line,
 * empty or not, is a task, so that INDEX is the line number. */
static char **read_commands(size_t *count) {
    size_t cap = 1024, n = 0;
    char **lines = malloc(cap * sizeof *lines);
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    if (lines == NULL) die("malloc");
    while ((len = getline(&line, &line_cap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if (n == cap) {
            cap *= 2;
            lines = realloc(lines, cap * sizeof *lines);
            if (lines == NULL) die("realloc");
        }
        lines[n] = strdup(line);
        if (lines[n] == NULL) die("strdup");
        n++;
    }
    free(line);
    *count = n;
    return lines;
}

static void setup(void) {
    sigset_t none, reset;
    short flags = POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
#ifdef CLOSE_RANGE_CLOEXEC
    /* Whatever this process inherited beyond 0-2 must not reach the tasks. */
    close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
#endif
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) die("open /dev/null");
    if (posix_spawnattr_init(&attr) != 0) die("posix_spawnattr_init");
    sigemptyset(&none);
    sigemptyset(&reset);
    sigaddset(&reset, SIGPIPE);
    sigaddset(&reset, SIGXFSZ);
    if (posix_spawnattr_setsigmask(&attr, &none) != 0 ||
        posix_spawnattr_setsigdefault(&attr, &reset) != 0 ||
        posix_spawnattr_setflags(&attr, flags) != 0)
        die("posix_spawnattr");
    /* The harness reads records in 1 MiB chunks; the runner grows its stdout so too. */
    fcntl(1, F_SETPIPE_SZ, BIG_PIPE); /* not a pipe, or over the quota: keep it */
}

static void start(struct slot *slot, size_t index, char *command) {
    int out[2], err[2];
    posix_spawn_file_actions_t actions;
    char sh[] = "/bin/sh", dash_c[] = "-c";
    char *argv[] = {sh, dash_c, command, NULL};
    int rc;

    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) die("pipe2");
    posix_spawn_file_actions_init(&actions);
    /* dup2 clears close-on-exec on the new descriptor: exactly 0, 1 and 2 survive exec. */
    posix_spawn_file_actions_adddup2(&actions, devnull, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    rc = posix_spawn(&slot->pid, "/bin/sh", &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    /* The child now holds the only write ends, so EOF on ours means it is done. */
    close(out[1]);
    close(err[1]);
    if (rc != 0) {
        errno = rc;
        die("posix_spawn");
    }
    slot->index = index;
    slot->out.fd = out[0];
    slot->err.fd = err[0];
    slot->out.len = slot->err.len = 0;
    slot->out.big = slot->err.big = 0;
}

/* One read of a readable (or hung-up) pipe into the stream's buffer; closes it at EOF. */
static void drain(struct stream *s, short revents) {
    size_t size = s->big ? BIG_PIPE : READ_CHUNK;
    ssize_t got;
    if (revents & POLLIN) {
        if (s->cap - s->len < size) {
            while (s->cap - s->len < size) s->cap = s->cap ? 2 * s->cap : READ_CHUNK;
            s->data = realloc(s->data, s->cap);
            if (s->data == NULL) die("realloc");
        }
        got = read(s->fd, s->data + s->len, size);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) return;
            die("read");
        }
        if (got > 0) {
            s->len += (size_t)got;
            if (!s->big && (size_t)got == READ_CHUNK) {
                s->big = 1;
                fcntl(s->fd, F_SETPIPE_SZ, BIG_PIPE); /* over the quota: keep 64 KiB */
            }
            /* With POLLHUP no writer is left: a short read emptied the pipe. */
            if (!(revents & POLLHUP) || (size_t)got == size) return;
        }
    }
    close(s->fd);
    s->fd = -1;
}

static void write_all(struct iovec *iov, int count) {
    while (count > 0) {
        ssize_t put = writev(1, iov, count);
        if (put < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        while (count > 0 && (size_t)put >= iov->iov_len) {
            put -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + put;
            iov->iov_len -= (size_t)put;
        }
    }
}

/* Both pipes are closed: reap the child, write its record, free the slot. */
static void finish(struct slot *slot) {
    int status;
    char head[96];
    struct iovec iov[3];
    while (waitpid(slot->pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    status = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    iov[0].iov_base = head;
    iov[0].iov_len = (size_t)snprintf(head, sizeof head, "%zu %d %zu %zu\n", slot->index,
                                      status, slot->out.len, slot->err.len);
    iov[1].iov_base = slot->out.data;
    iov[1].iov_len = slot->out.len;
    iov[2].iov_base = slot->err.data;
    iov[2].iov_len = slot->err.len;
    write_all(iov, 3);
    slot->pid = 0;
}

int main(int argc, char **argv) {
    size_t count, next = 0, running = 0, i;
    long parallel;
    char **commands;
    struct slot *slots;
    struct pollfd *pfds;
    struct stream **owner;

    if (argc != 2 || (parallel = strtol(argv[1], NULL, 10)) < 1) {
        fprintf(stderr, "usage: ceiling PARALLEL < commands\n");
        return 1;
    }
    commands = read_commands(&count);
    setup();
    slots = calloc((size_t)parallel, sizeof *slots);
    pfds = calloc(2 * (size_t)parallel, sizeof *pfds);
    owner = calloc(2 * (size_t)parallel, sizeof *owner);
    if (slots == NULL || pfds == NULL || owner == NULL) die("calloc");

    for (;;) {
        size_t npoll = 0;
        for (i = 0; i < (size_t)parallel && next < count; i++) {
            if (slots[i].pid == 0) {
                start(&slots[i], next, commands[next]);
                next++;
                running++;
            }
        }
        if (running == 0) break;
        for (i = 0; i < (size_t)parallel; i++) {
            struct stream *pair[2] = {&slots[i].out, &slots[i].err};
            if (slots[i].pid == 0) continue;
            for (int k = 0; k < 2; k++) {
                if (pair[k]->fd < 0) continue;
                pfds[npoll].fd = pair[k]->fd;
                pfds[npoll].events = POLLIN;
                owner[npoll++] = pair[k];
            }
        }
        if (poll(pfds, npoll, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (i = 0; i < npoll; i++)
            if (pfds[i].revents != 0) drain(owner[i], pfds[i].revents);
        for (i = 0; i < (size_t)parallel; i++) {
            if (slots[i].pid != 0 && slots[i].out.fd < 0 && slots[i].err.fd < 0) {
                finish(&slots[i]);
                running--;
            }
        }
    }
    return 0;
}
