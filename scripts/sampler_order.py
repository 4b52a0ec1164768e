#!/usr/bin/env python3
"""The order of savepoint::DistributedSampler, written independently of the C++ (the tests
pin a prefix this script printed): a Fisher-Yates shuffle driven by splitmix64.
    sampler_order.py <size> <seed> <epoch> [count]"""
import sys

M = (1 << 64) - 1


def permutation(size, seed, epoch):
    order = list(range(size))
    state = (seed ^ ((epoch * 0xD1B54A32D192ED03) & M)) & M
    for i in range(size - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & M
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        z ^= z >> 31
        j = z % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


if __name__ == "__main__":
    size, seed, epoch = (int(a) for a in sys.argv[1:4])
    count = int(sys.argv[4]) if len(sys.argv) > 4 else size
    print(", ".join(str(i) for i in permutation(size, seed, epoch)[:count]))
