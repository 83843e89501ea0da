"""A TLS-terminating proxy for PostgreSQL's protocol that sends the server's answers in full-size TLS records.

PostgreSQL 15 writes at most 8 KiB per TLS record; other servers and poolers (CockroachDB, some managed
services, newer releases for large messages) write up to 16 KiB. libpq reads into whatever room its buffer
has, at least 8 KiB, so part of a 16 KiB record can stay decrypted inside OpenSSL, where the socket's
readiness does not show it: a client waiting on the socket then waits for data it already has. This proxy
makes that happen on purpose. It answers the client's SSLRequest itself, speaks TLS to the client and plain
TCP to the server, and holds each answer of the server until its ReadyForQuery (or until the server is
quiet), then sends it as its remainder first and then 16 KiB records, so that the answer's end is always in
a full-size record.

One thread per connection, with blocking writes both ways: enough for request-and-answer traffic and COPY,
not for a client that keeps sending while a large answer flows back (a big pipelined batch could stall it).

Usage: python3 tls_record_proxy.py UPSTREAM_HOST UPSTREAM_PORT CERT KEY
Prints "port N" once it listens on 127.0.0.1; exits when its stdin ends.
"""

import os
import select
import socket
import ssl
import struct
import sys
import threading

RECORD = 16384
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
QUIET_SECONDS = 0.05


def main():
    host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print("port %d" % listener.getsockname()[1], flush=True)
    threading.Thread(target=exit_at_end_of_input, daemon=True).start()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, host, port, context), daemon=True).start()


def exit_at_end_of_input():
    while os.read(0, 4096):
        pass
    os._exit(0)


def receive_exactly(sock, count):
    data = b""
    while len(data) < count:
        more = sock.recv(count - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def serve(client, host, port, context):
    upstream = None
    try:
        while True:
            length, code = struct.unpack("!ii", receive_exactly(client, 8))
            if length == 8 and code == GSSENC_REQUEST:
                client.sendall(b"N")  # no GSSAPI encryption here: libpq then asks for TLS
                continue
            if length != 8 or code != SSL_REQUEST:
                return  # TLS only: a client that does not ask for it is dropped
            break
        client.sendall(b"S")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                client.sendall(outgoing.read())
                data = client.recv(65536)
                if not data:
                    return
                incoming.write(data)
        client.sendall(outgoing.read())
        upstream = socket.create_connection((host, port))
        relay(client, upstream, tls, incoming, outgoing)
    except (OSError, EOFError, ssl.SSLError):
        pass
    finally:
        client.close()
        if upstream is not None:
            upstream.close()


def complete_messages(buffer):
    """The length of the buffer's complete messages, and whether the last of them is a ReadyForQuery."""
    position, last = 0, None
    while position + 5 <= len(buffer):
        length = struct.unpack("!i", buffer[position + 1:position + 5])[0]
        if position + 1 + length > len(buffer):
            break
        last = buffer[position]
        position += 1 + length
    return position, last == ord("Z")


def relay(client, upstream, tls, incoming, outgoing):
    held = bytearray()

    def send(count):
        data = bytes(held[:count])
        del held[:count]
        first = len(data) % RECORD
        pieces = ([data[:first]] if first else []) + [data[i:i + RECORD] for i in range(first, len(data), RECORD)]
        for piece in pieces:
            tls.write(piece)
        client.sendall(outgoing.read())

    def forward_from_client():
        """Passes on what the client sent, decrypted; False once the client ended the session."""
        while True:
            try:
                plain = tls.read(65536)
            except ssl.SSLWantReadError:
                break
            if not plain:
                return False
            upstream.sendall(plain)
        pending = outgoing.read()
        if pending:
            client.sendall(pending)
        return True

    # What came with the end of the handshake (the startup message, often) is in the BIO already: the
    # client's socket may not become readable again before it is passed on.
    if not forward_from_client():
        return
    while True:
        timeout = QUIET_SECONDS if held else None
        readable, _, _ = select.select([client, upstream], [], [], timeout)
        if not readable:
            complete, _ = complete_messages(held)
            if complete:
                send(complete)
            continue
        if client in readable:
            data = client.recv(65536)
            if not data:
                return
            incoming.write(data)
            if not forward_from_client():
                return
        if upstream in readable:
            data = upstream.recv(65536)
            if not data:
                if held:
                    send(len(held))
                return
            held += data
            complete, ready = complete_messages(held)
            if ready and complete == len(held):
                send(complete)


if __name__ == "__main__":
    main()
