/*
 * ceiling: the least any pool has to do to run shell tasks and read their output.
 *
 * Usage: ceiling PARALLEL < commands   (one shell command per line)
 *
 * It runs each line as `/bin/sh -c LINE`, at most PARALLEL at once, started with
 * posix_spawn (glibc's clone(CLONE_VM|CLONE_VFORK) path), stdin from /dev/null and
 * stdout into a pipe.  One poll() loop drains every pipe as it becomes readable; on EOF
 * the child is reaped with waitpid().  No JSON, no per-task bookkeeping beyond a
 * buffer: whatever a pool written in any language adds on top of this is its overhead,
 * so its speed is the machine's limit for the workload.
 *
 * For each task it prints one line, "INDEX STATUS NBYTES VALUE", where VALUE is the
 * integer the output starts with (0 if none), so that the harness can check that every
 * task ran and every byte arrived without this program sending the bytes on.
 * Exit status: 0, or 1 on a usage or system error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define READ_CHUNK 65536
#define HEAD_KEEP 32 /* bytes of output kept to parse VALUE from */

struct slot {
    pid_t pid;       /* 0 when the slot is free */
    int fd;          /* read end of the child's stdout pipe */
    size_t index;    /* the task's line number, from 0 */
    size_t nbytes;   /* output bytes read so far */
    char head[HEAD_KEEP + 1];
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Reads stdin into an array of NUL-terminated lines (newline stripped). */
static char **read_commands(size_t *count) {
    size_t cap = 1024, n = 0;
    char **lines = malloc(cap * sizeof *lines);
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    if (lines == NULL) die("malloc");
    while ((len = getline(&line, &line_cap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if (len == 0) continue;
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

static int start(struct slot *slot, size_t index, char *command) {
    int fds[2];
    posix_spawn_file_actions_t actions;
    char sh[] = "/bin/sh", dash_c[] = "-c";
    char *argv[] = {sh, dash_c, command, NULL};
    int rc;

    if (pipe2(fds, O_CLOEXEC) != 0) die("pipe2");
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1); /* dup2 clears CLOEXEC */
    rc = posix_spawn(&slot->pid, "/bin/sh", &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    if (rc != 0) {
        errno = rc;
        die("posix_spawn");
    }
    slot->fd = fds[0];
    slot->index = index;
    slot->nbytes = 0;
    slot->head[0] = '\0';
    return 0;
}

/* Reads what is there; on EOF reaps the child, prints its line and frees the slot. */
static int drain(struct slot *slot, char *buf) {
    ssize_t got = read(slot->fd, buf, READ_CHUNK);
    int status;
    if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) return 0;
        die("read");
    }
    if (got > 0) {
        if (slot->nbytes < HEAD_KEEP) {
            size_t keep = HEAD_KEEP - slot->nbytes;
            if (keep > (size_t)got) keep = (size_t)got;
            memcpy(slot->head + slot->nbytes, buf, keep);
            slot->head[slot->nbytes + keep] = '\0';
        }
        slot->nbytes += (size_t)got;
        return 0;
    }
    close(slot->fd);
    while (waitpid(slot->pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("%zu %d %zu %lld\n", slot->index, status, slot->nbytes, strtoll(slot->head, NULL, 10));
    slot->pid = 0;
    return 1;
}

int main(int argc, char **argv) {
    size_t count, next = 0, running = 0, i;
    long parallel;
    char **commands;
    struct slot *slots;
    struct pollfd *pfds;
    size_t *owner;
    char *buf;

    if (argc != 2 || (parallel = strtol(argv[1], NULL, 10)) < 1) {
        fprintf(stderr, "usage: ceiling PARALLEL < commands\n");
        return 1;
    }
    commands = read_commands(&count);
    slots = calloc((size_t)parallel, sizeof *slots);
    pfds = calloc((size_t)parallel, sizeof *pfds);
    owner = calloc((size_t)parallel, sizeof *owner);
    buf = malloc(READ_CHUNK);
    if (slots == NULL || pfds == NULL || owner == NULL || buf == NULL) die("calloc");

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
            if (slots[i].pid != 0) {
                pfds[npoll].fd = slots[i].fd;
                pfds[npoll].events = POLLIN;
                owner[npoll++] = i;
            }
        }
        if (poll(pfds, npoll, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (i = 0; i < npoll; i++)
            if (pfds[i].revents != 0) running -= (size_t)drain(&slots[owner[i]], buf);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
