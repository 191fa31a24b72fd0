"""Frame-receive micro-benchmark: Transport.recv() per small text frame, no syscalls.

Usage: python benchmarks/frames_bench.py [old|new]
A fake socket serves pre-built unmasked server frames in 64 KiB reads, so the figure is the
parsing + decoding cost per frame (what recv() adds on top of the kernel).
"""
import sys, time, socket
N = 400_000
payload = b'{"type":"response","messageId":"m-000001","content":"hello","timestamp":"2026-11-27T13:40:30.123Z"}'
frame = bytes([0x81, len(payload)]) + payload
stream = frame * N

class FakeSock:
    def __init__(self, data): self.data = memoryview(data); self.pos = 0
    def recv(self, n):
        chunk = bytes(self.data[self.pos:self.pos + n]); self.pos += len(chunk); return chunk
    def recv_into(self, buf, n=0):
        n = n or len(buf); chunk = self.data[self.pos:self.pos + n]; buf[:len(chunk)] = chunk; self.pos += len(chunk); return len(chunk)
    def fileno(self): return -1
    def settimeout(self, t): pass
    def gettimeout(self): return None

def make(kind, sock):
    if kind == "old":
        from wsync._framing import Transport, _BufferedSocket
        return Transport(_BufferedSocket(sock, None), max_frame_size=1 << 20, where="bench")
    from wsync._connection import Transport
    return Transport(sock, max_frame_size=1 << 20, where="bench")

best = None
for _ in range(5):
    t = make(sys.argv[1], FakeSock(stream))
    recv = t.recv
    start = time.perf_counter()
    for _ in range(N):
        recv()
    per = (time.perf_counter() - start) / N * 1e6
    best = per if best is None else min(best, per)
print(f"{sys.argv[1]}: {best:.3f} us per {len(payload)}-byte text frame (best of 5 x {N})")
