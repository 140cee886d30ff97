"""Child processes that never outlive the process that started them.

`loyalty up` is the local supervisor: when it dies, even by SIGKILL (no handler runs), its
services, the broker and Postgres must go too. Each child is started with the Linux
parent-death signal (`prctl(PR_SET_PDEATHSIG)`), which the kernel sends the moment the parent
exits, however it exits. We chose it over a process group (a SIGKILL of the supervisor alone
does not reach the group) and over a watchdog polling the parent (it needs code in every child
and reacts only at its next poll).

Two details make it reliable: the signal is armed after any change of user (the kernel clears
it when credentials change, so the switch to Postgres's system user is done here, not by
`Popen(user=...)`), and a parent that died between fork and `prctl` is caught by comparing
`getppid()` with the pid recorded before the fork. Elsewhere than Linux no signal is armed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def dies_with_parent(sig: signal.Signals = signal.SIGKILL, *,
                     user: str | None = None) -> Callable[[], None] | None:
    """A `preexec_fn` that arms `sig` for when this process dies (running as `user` if
    given); None where the platform has no parent-death signal and no user switch is asked."""
    linux = sys.platform.startswith("linux")
    if not linux and user is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True) if linux else None
    parent = os.getpid()
    ids = None
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        ids = (entry.pw_uid, entry.pw_gid)

    def preexec() -> None:
        if ids is not None:
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, int(sig))
            if os.getppid() != parent:  # the parent died before the signal was armed
                os.kill(os.getpid(), sig)

    return preexec
