"""Peak client memory against a hostile server on 127.0.0.1 (server in a child process).

Usage: python benchmarks/hostile_memory.py fragments 5e6 | pingflood 1e6  [--trace]
fragments: a text message started with fin=0, N empty continuation frames, then a final "x".
pingflood: N pings (4-byte payloads) while the server never reads, then a text "done".
Prints the client's peak RSS growth (ru_maxrss) and tracemalloc is NOT used (speed).
"""
import base64, hashlib, os, resource, socket, struct, sys, time, multiprocessing as mp

def serve(listener, kind, n, done):
    conn, _ = listener.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in data.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    if kind == "fragments":
        conn.sendall(b"\x01\x00")
        chunk = b"\x00\x00" * 100_000
        for _ in range(n // 100_000):
            conn.sendall(chunk)
        conn.sendall(b"\x80\x01x")
    else:
        for i in range(n // 1000):
            conn.sendall(b"".join(b"\x89\x04" + struct.pack("!I", i * 1000 + j) for j in range(1000)))
        conn.sendall(b"\x81\x04done")
    done.wait(120)
    conn.close()

def main():
    kind, n = sys.argv[1], int(float(sys.argv[2]))
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = mp.get_context("fork")
    done = ctx.Event()
    proc = ctx.Process(target=serve, args=(listener, kind, n, done))
    proc.start()
    try:
        from wsync._handshake import Connector
    except ImportError:
        from wsync._transport import Connector
    import tracemalloc
    trace = "--trace" in sys.argv
    if trace:
        tracemalloc.start()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = Connector(f"ws://127.0.0.1:{listener.getsockname()[1]}", max_frame_size=1 << 20).open(5)
    start = time.monotonic()
    msg = t.recv()
    took = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traced = f"; tracemalloc peak {tracemalloc.get_traced_memory()[1] / 2**20:.2f} MiB" if trace else ""
    print(f"{kind} {n:,}: got {msg!r} in {took:.1f} s; peak RSS growth {(peak - base) / 1024:.1f} MiB{traced}")
    t.abort()
    done.set()
    proc.join(10)

main()
