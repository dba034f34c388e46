/*
 * Does a start that does not wait for exec cost its parent less CPU?
 *
 * The runner's engine starts each task with vfork(): the parent sleeps until the child
 * has exec'd, and on a busy machine that sleep is most of the start call's wall time
 * (docs/benchmarks.md, "How far one runner goes").  A start that does not wait --
 * clone(CLONE_VM) with a stack of the child's own, the child making raw system calls
 * only -- would free the parent's loop sooner.  This measures whether it also frees CPU:
 * the parent's own CPU per start (getrusage RUSAGE_SELF: its children are not in it)
 * and the starts per second, both ways, N starts of `/bin/echo hi` (output to
 * /dev/null) with 8 in flight, reaped with wait4.
 *
 *     cc -O2 -o /tmp/clone_nowait benchmarks/clone_nowait.c
 *     for i in 1 2 3; do /tmp/clone_nowait 20000 vfork; /tmp/clone_nowait 20000 clone; done
 *
 * x86-64 only (the child's raw system calls are inline assembly: a child that shares
 * the parent's memory and runs beside it must not write errno, which is the parent's).
 * A measurement, not a pattern: the clone child here skips what a real start must do
 * (signal handlers reset, descriptors moved, errors reported).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IN_FLIGHT 8
#define STACK_SIZE 65536

extern char **environ;
static char *child_argv[] = {"/bin/echo", "hi", NULL};

#if defined(__x86_64__)
static long raw3(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static int clone_child(void *unused) {
    (void)unused;
    raw3(SYS_setsid, 0, 0, 0);
    raw3(SYS_execve, (long)child_argv[0], (long)child_argv, (long)environ);
    raw3(SYS_exit_group, 127, 0, 0);
    return 0;
}
#endif

/* vfork in a function of its own, so that no local of the loop lives across it. */
static pid_t __attribute__((noinline)) start_vfork(void) {
    pid_t pid = vfork();
    if (pid == 0) {
        setsid();
        execve(child_argv[0], child_argv, environ);
        _exit(127);
    }
    return pid;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

static double wall_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int n, use_clone, started = 0, running = 0, next_stack = 0;
    /* A stack is free again once its child has exec'd: the kernel clears its word
     * then (CLONE_CHILD_CLEARTID), as it does at exit. */
    static volatile int busy[2 * IN_FLIGHT];
    char *stacks;
    double cpu0, wall0, cpu, wall;
    int devnull = open("/dev/null", O_WRONLY);

    if (argc != 3 || (strcmp(argv[2], "vfork") != 0 && strcmp(argv[2], "clone") != 0)) {
        fprintf(stderr, "usage: clone_nowait N vfork|clone\n");
        return 2;
    }
    n = atoi(argv[1]);
    use_clone = strcmp(argv[2], "clone") == 0;
#if !defined(__x86_64__)
    if (use_clone) {
        fprintf(stderr, "clone: x86-64 only\n");
        return 2;
    }
#endif
    dup2(devnull, 1);
    stacks = malloc(2 * IN_FLIGHT * STACK_SIZE);
    if (stacks == NULL) return 1;
    cpu0 = cpu_s();
    wall0 = wall_s();
    while (started < n || running > 0) {
        while (running < IN_FLIGHT && started < n) {
            pid_t pid;
            if (!use_clone) {
                pid = start_vfork();
            } else {
#if defined(__x86_64__)
                int s = next_stack++ % (2 * IN_FLIGHT);
                while (busy[s]) syscall(SYS_futex, &busy[s], FUTEX_WAIT, busy[s], NULL, NULL, 0);
                busy[s] = 1;
                pid = clone(clone_child, stacks + (size_t)(s + 1) * STACK_SIZE,
                            CLONE_VM | CLONE_CHILD_CLEARTID | SIGCHLD, NULL, NULL, NULL, &busy[s]);
#else
                pid = -1;
#endif
            }
            if (pid < 0) {
                perror("start");
                return 1;
            }
            running++;
            started++;
        }
        if (wait4(-1, NULL, 0, NULL) > 0) running--;
    }
    cpu = cpu_s() - cpu0;
    wall = wall_s() - wall0;
    fprintf(stderr, "%-5s %d starts: parent CPU %.1f us per start, %.0f starts/s\n", argv[2], n,
            cpu / n * 1e6, n / wall);
    return 0;
}
