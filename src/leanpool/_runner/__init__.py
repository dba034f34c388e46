"""The lean runner: the separate process that starts, watches and reports every task.

::

    caller (big)                          runner (lean)                       tasks
    TaskRunner.add() ──► spool.jsonl ─────► intake ─► schedule ─► kinds ─► vfork+exec ──► sh -c CMD
    TaskRunner.run() ──► spawn runner         ▲                    │ (shell)   (own session each)
                         stdin: more/end ─────┘                    └► calls ─► worker ─► f(*args)
                         cancel/stop; EOF: caller gone            (fd 3: request, fd 4: reply)
    Result ◄── reader ◄─ stdout JSONL ◄── outbox ◄── results ◄── loop (epoll) ◄── pipes, pidfds
                                            └─► journal (O_APPEND, fsync'd) first

The caller starts it as ``sys.executable -I -S -c BOOTSTRAP PACKAGE_DIR CONFIG``: the
bootstrap gives ``leanpool`` an empty package object, so ``leanpool/__init__`` (the API,
tqdm) is never imported, and the runner imports only the standard library,
``leanpool._errors``, ``leanpool._protocol`` and this package.  Its memory does not grow
with the number of tasks: it holds the running tasks and one chunk of the spool.

Rooms: ``main`` (one try, one fatal record), ``loop`` (epoll dispatch and the phase),
``intake`` (control channel and spool), ``schedule`` (retries, throttling), ``timers``
(typed deadlines), ``children`` (the interface a kind of child implements), ``kinds``
(which kind runs which task), ``shell`` (the command kind), ``piped`` (the command
kind on the C engine, whose units are ``_engine.c`` (start, drain, reap, and the epoll
set), ``_codec.c`` (the result line and the common task line in C) and ``_module.c``),
``calls`` (the call kind and its worker processes), ``spawn``
(posix_spawn of a process spec), ``reaping`` (pidfds or SIGCHLD, process groups),
``leftovers`` (groups a task left behind), ``results`` (outcome to record), ``outbox``
(journal first, ordering, non-blocking stdout).
"""
