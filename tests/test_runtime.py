"""wakesleep.runtime: the allocator setting the command line applies."""

import platform
import sys

import pytest

from wakesleep import runtime


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv("WAKESLEEP_MALLOC", "default")
    assert runtime.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_thresholds_are_set_once_on_glibc(monkeypatch):
    import ctypes.util

    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.delenv("WAKESLEEP_MALLOC", raising=False)
    calls = []
    real = ctypes.CDLL

    class Recorder:
        def __init__(self, name):
            self.lib = real(name)

        @property
        def mallopt(self):
            fn = self.lib.mallopt

            def wrapped(param, value):
                calls.append((param, value))
                return fn(param, value)

            wrapped.argtypes = wrapped.restype = None
            return wrapped

    monkeypatch.setattr(runtime.ctypes, "CDLL", Recorder)
    if ctypes.util.find_library("c") is None:
        pytest.skip("no C library found")
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True  # cached: mallopt is not called again
    assert calls == [(-3, runtime.MMAP_THRESHOLD), (-1, runtime.TRIM_THRESHOLD)]
