"""Stand-in for ember's vsock muxer, for checking io-bench without a VM: listens on a Unix
socket, takes `CONNECT <port>\n`, connects to a Unix socket (where `io-bench guest --unix`
serves), answers `OK 1234\n` and relays bytes both ways. Usage: hybrid-proxy.py UDS TARGET"""
import os, socket, threading, sys
path = sys.argv[1]
try: os.unlink(path)
except FileNotFoundError: pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(path); srv.listen(64)
def pipe(a, b):
    try:
        while True:
            d = a.recv(262144)
            if not d: break
            b.sendall(d)
    except OSError: pass
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
def handle(c):
    line = b""
    while not line.endswith(b"\n"):
        ch = c.recv(1)
        if not ch: c.close(); return
        line += ch
    port = int(line.split()[1])
    v = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try: v.connect(sys.argv[2])
    except OSError: c.close(); return
    c.sendall(b"OK 1234\n")
    t1 = threading.Thread(target=pipe, args=(c, v)); t2 = threading.Thread(target=pipe, args=(v, c))
    t1.start(); t2.start(); t1.join(); t2.join(); c.close(); v.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
