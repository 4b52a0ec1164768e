"""Gloo ranks for savepoint's DCP scripts (tests/dcp/dcp_py.py, bench/dcp_bench.py): each rank a
process of the calling script, bounded in time, all killed when one fails.

A script calls launch(args, argv, script, bodies) in its launcher process and, in a rank
process (started with --rank/--port), run_rank(args, bodies), where bodies maps args.cmd to a
function (args, mesh) run after the process group is up.
"""

import datetime
import faulthandler
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank(args, bodies):
    """The body of one rank: bodies[args.cmd](args, mesh). Never returns: see the end."""
    # Bounded even if the launcher is gone: dump the Python stacks and exit. SIGUSR1 from the
    # launcher dumps them too before it kills a hung rank.
    faulthandler.dump_traceback_later(args.timeout + 5, exit=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    code = 0
    try:
        import torch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}",
                                rank=args.rank, world_size=args.world,
                                timeout=datetime.timedelta(seconds=args.timeout))
        mesh = init_device_mesh("cpu", (args.world,))
        bodies[args.cmd](args, mesh)
        # All ranks are done with every collective before any leaves (rank 0 hosts the store).
        dist.barrier()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported, then the launcher kills the others
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit, not destroy_process_group() or a normal exit. In torch 2.6 the Gloo process
    # group's destructor joins its worker threads while holding the GIL; a worker that drops
    # the last reference to a tensor with a Python object needs the GIL to free it, and the
    # rank deadlocks (seen with gdb: main thread in ~ProcessGroupGloo -> std::thread::join,
    # worker in c10::impl::PyObjectSlot::maybe_destroy_pyobj waiting for the GIL; fixed in
    # pytorch/pytorch#154976, 2.8+). Interpreter exit without destroy_process_group() can hit
    # the same destructor. Nothing is left to flush: the checkpoint files are closed, the
    # results printed.
    os._exit(code)


def launch(args, argv, script, all_stdout=False):
    """Runs `script` with `argv` as args.world rank processes; prints rank 0's stdout (every
    rank's, in rank order, with all_stdout); returns 0 when all ranks exit 0, else 1 with the
    tail of each rank's stderr."""
    env = dict(os.environ, USE_LIBUV="0", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    port = free_port()
    name = os.path.basename(script)
    logs = tempfile.mkdtemp(prefix=name + ".")
    procs, outs, errs = [], [], []
    try:
        for r in range(args.world):
            outs.append(open(os.path.join(logs, f"{r}.out"), "w+"))
            errs.append(open(os.path.join(logs, f"{r}.err"), "w+"))
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(script), "--rank", str(r), "--port", str(port)]
                + argv, stdin=subprocess.DEVNULL, stdout=outs[r], stderr=errs[r], env=env,
                start_new_session=True))
        deadline = time.monotonic() + args.timeout
        failure = None
        while failure is None:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failure = f"rank {bad[0][0]} exited with code {bad[0][1]}"
            elif all(c == 0 for c in codes):
                break
            elif time.monotonic() > deadline:
                failure = f"timed out after {args.timeout} s"
            else:
                time.sleep(0.05)
        if failure is not None:
            stop(procs)
        for f in outs + errs:
            f.flush()
            f.seek(0)
        for r in range(args.world if all_stdout else 1):
            sys.stdout.write(outs[r].read())
        sys.stdout.flush()
        if failure is None:
            return 0
        print(f"{name} {args.cmd}: FAILED: {failure}", file=sys.stderr)
        for r in range(args.world):
            if r and not all_stdout:
                tail = outs[r].read().splitlines()[-10:]
                if tail:
                    print(f"--- rank {r} stdout (tail)", file=sys.stderr)
                    print("\n".join(tail), file=sys.stderr)
            tail = errs[r].read().splitlines()[-40:]
            print(f"--- rank {r} stderr (tail), exit code {procs[r].returncode}", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
        return 1
    finally:
        stop(procs)
        for f in outs + errs:
            f.close()
        shutil.rmtree(logs, ignore_errors=True)


def stop(procs):
    """Asks the ranks still running for their stacks (SIGUSR1, faulthandler), then kills each
    rank's own process group."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        try:
            os.kill(p.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    if running:
        time.sleep(1)
    for p in running:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
