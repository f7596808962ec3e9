"""The machine fm runs on, as it is right now: cores, CPU quotas, what other processes use, memory; and how many
threads fm uses on it.

    machine.py   read-only facts from the OS: the cores this process may use (affinity, cgroup quota), CPU
                 time counters (the machine's, the cgroup's, this process's), memory this process may use
    threads.py   the thread rule (``configure``) and the governor that steps down when steps stall and back up
                 when the machine frees up (``tick``), one per process, for every command and the Python API

May import: the standard library, ``fmcli.errors``, and torch inside functions (to set the thread count).
Nothing here knows about models, data, sampling or training; they call in.
"""
