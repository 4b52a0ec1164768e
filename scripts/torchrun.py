#!/usr/bin/env python3
"""torchrun, runnable where PyTorch is built without libuv (Debian's 2.x: Debian 13, unstable).

Same arguments as torchrun. From PyTorch 2.4 on, torchrun's rendezvous creates its TCPStore
servers without saying `use_libuv`, and the binding's default asks for the libuv server, so a
build without libuv stops with "use_libuv was requested but PyTorch was build without libuv
support" (pytorch/pytorch#148283), and USE_LIBUV=0 does not reach those stores. This runs
torchrun with the classic server as the default instead, and USE_LIBUV=0 for the workers (which
Python's env:// rendezvous and savepoint's process_group_from_environment read). Where
TCPStore has no `use_libuv` (1.13) or USE_LIBUV=1 is set, it is torchrun unchanged.
    python3 scripts/torchrun.py --no-python --standalone --nproc-per-node=4 train_ddp runs/ddp
"""
import os
import sys

import torch.distributed as dist

if os.environ.get("USE_LIBUV") != "1" and "use_libuv" in (dist.TCPStore.__init__.__doc__ or ""):
    os.environ["USE_LIBUV"] = "0"

    class TCPStore(dist.TCPStore):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("use_libuv", False)
            super().__init__(*args, **kwargs)

    # Before torch.distributed.run imports the rendezvous modules that look it up.
    dist.TCPStore = TCPStore

from torch.distributed.run import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "torchrun"
    sys.exit(main())
