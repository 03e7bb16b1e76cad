#!/usr/bin/env python3
"""A tour of the herald protocol with a minimal client: Python 3.8+, standard library only.

Start a dev server (`cargo run --release -- serve --dev`), then run
    python3 examples/ws_client.py [host:port]        (default 127.0.0.1:7070)
bob subscribes to a channel, alice publishes to it and to bob's inbox, bob receives and acks,
loses his connection, and resumes his session without losing what was sent meanwhile.
"""
import base64, json, os, socket, struct, sys


class Herald:
    """Just enough RFC 6455 (text frames, client masking, ping, close) plus herald framing."""

    def __init__(self, addr, hello):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.rx = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        status = self.rx.readline()
        assert b" 101 " in status, status
        while self.rx.readline() not in (b"\r\n", b""):
            pass  # rest of the HTTP response head
        self.pending, self.seq = [], 0
        self.send(dict(t="hello", v=1, **hello))
        self.welcome = self.next()
        assert self.welcome["t"] == "welcome", self.welcome

    def _frame(self, opcode, data):
        mask = os.urandom(4)
        n = len(data)
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | (n if n < 126 else 126 if n < 65536 else 127))
        head += b"" if n < 126 else struct.pack("!H" if n < 65536 else "!Q", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def send(self, obj):
        self._frame(0x1, json.dumps(obj).encode())

    def request(self, obj):
        """Sends a request (pub/sub/unsub) with the next seq and returns that seq."""
        self.seq += 1
        self.send(dict(obj, seq=self.seq))
        return self.seq

    def next(self):
        """The next server object. One text frame may hold several, separated by newlines."""
        while not self.pending:
            b0, b1 = self.rx.read(2)
            n = b1 & 0x7F
            n = struct.unpack("!H", self.rx.read(2))[0] if n == 126 else \
                struct.unpack("!Q", self.rx.read(8))[0] if n == 127 else n
            data, opcode = self.rx.read(n), b0 & 0x0F
            if opcode == 0x8:  # close: status code, then reason
                raise ConnectionError(f"closed {struct.unpack('!H', data[:2])[0]}: {data[2:].decode()}")
            if opcode == 0x9:
                self._frame(0xA, data)  # WebSocket-level ping
            elif opcode == 0x1:
                self.pending += [json.loads(line) for line in data.decode().split("\n") if line]
        obj = self.pending.pop(0)
        if obj["t"] == "ping":  # herald heartbeat: answer and keep reading
            self.send({"t": "pong"})
            return self.next()
        return obj

    def close(self):
        self.sock.close()  # no bye: the session waits for a resume


def show(who, obj):
    print(f"{who:>5} <- {json.dumps(obj)}")
    return obj


def tour(addr):
    bob = Herald(addr, {"uid": "bob", "device": "phone"})
    show("bob", bob.welcome)
    bob.request({"t": "sub", "chan": "room1"})
    show("bob", bob.next())  # ok: {"s":"chan:room1","o":<last offset>}

    alice = Herald(addr, {"uid": "alice", "device": "laptop"})
    alice.request({"t": "pub", "to": "chan:room1", "body": {"text": "hello room"}})
    show("alice", alice.next())  # ok: stored at offset o of chan:room1
    alice.request({"t": "pub", "to": "user:bob", "body": {"text": "hi bob"}, "id": os.urandom(8).hex()})
    show("alice", alice.next())  # ok: {"s":"inbox","o":…,"online":1}

    handled = {}  # stream -> highest offset handled: an offset may come again after a resume


    def receive(client, count):
        while count:
            m = client.next()
            if m["t"] == "msg" and m["o"] <= handled.get(m["s"], 0):
                continue  # already handled: drop it
            show("bob", m)
            if m["t"] in ("msg", "gap"):
                handled[m["s"]] = m["o"] if m["t"] == "msg" else m["to"]
                client.send({"t": "ack", "s": m["s"], "o": handled[m["s"]]})
                count -= 1


    receive(bob, 2)
    bob.close()  # the network drops
    alice.request({"t": "pub", "to": "user:bob", "body": {"text": "while you were away"}})
    show("alice", alice.next())  # stored; online: 0 once the server has seen bob drop

    w = bob.welcome
    bob = Herald(addr, {"uid": "bob", "device": "phone",
                        "resume": {"session": w["session"], "key": w["key"]}})
    show("bob", bob.welcome)  # resumed: true, acked_seq: 1, subs: {"room1": {"o": …}}
    bob.seq = bob.welcome["acked_seq"]  # continue the session's seq numbering
    receive(bob, 1)
    for c in (alice, bob):
        c.send({"t": "bye"})  # ends the session for good


if __name__ == "__main__":
    tour(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070")
