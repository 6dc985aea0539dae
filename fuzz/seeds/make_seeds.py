#!/usr/bin/env python3
"""Regenerates fuzz/seeds/<target>/ from the PROTOCOL §12 vectors.

Run from anywhere: python3 fuzz/seeds/make_seeds.py. The seeds only have to be
valid enough to get each target past its first length checks; the harnesses
build fully valid headers/hellos themselves where it matters.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def h(s):
    return bytes.fromhex("".join(s.split()))


# §12.4 ClientHello on the wire (secret 0011..eeff, timestamp 1700000000, SNI www.example.com).
HELLO_12_4 = h("""
1603010200010001fc03033379e208d66f182b0df55e95f1511b69cba51ebc58
a78aa4ec027ee562d3d73020202122232425262728292a2b2c2d2e2f30313233
3435363738393a3b3c3d3e3f00220a0a130113021303c02bc02fc02cc030cca9
cca8c013c014009c009d002f0035000a010001912a2a00000000001400120000
0f7777772e6578616d706c652e636f6d00170000ff01000100000a000a00084a
4a001d00170018000b00020100002300000010000e000c02683208687474702f
312e31000500050100000000000d001400120403080404010503080505010806
06010201001200000033002b00294a4a000100001d002000b07073c33205db6b
18bd3b4370e7ba7525e1330e44772d02d78919871808a7002d00020101002b00
0b0a6a6a0304030303020301001b00030200023a3a000100001500c900000000
""" + "00" * (517 - 320))
assert len(HELLO_12_4) == 517, len(HELLO_12_4)

# §12.2 client header (tag dd, DC 2) and the first encrypted frame after it.
OBFS2_12_2 = h("""404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f
606162636465666768696a6b6c6d6e6f7071727374757677daacbd2ca7de43f9""")
FRAME_12_2 = h("""65621e73c82ff93d7905cf4b9916217e23b158cac3ad36f42d5c632bcfa0be86
593de97d6e2e5f4462992b8fe60b98""")
# §12.3 proxy -> DC header.
OBFS2_12_3 = h("""0718293a4b5c6d7e8fa0b1c2d3e4f5061728394a5b6c7d8e9fb0c1d2e3f40516
2738495a6b7c8d9eafc0d1e2f30415263748596a7b8c9dae7e7dcc0a34699d5b""")

CCS = h("140303000101")


def app(payload):
    return bytes([0x17, 3, 3]) + struct.pack(">H", len(payload)) + payload


SEEDS = {
    "obfs2_header": {
        # header | ctl | dc (LE16) | payload
        "vector_12_2": OBFS2_12_2 + b"\x02" + struct.pack("<h", 2) + FRAME_12_2,
        "vector_12_3": OBFS2_12_3 + b"\x06" + struct.pack("<h", -4) + b"example relayed bytes",
        "zeros": bytes(64) + b"\x00\x00\x00",
    },
    "client_hello": {
        # ctl | record (raw pass) -- the harness also wraps the same bytes as a body.
        "vector_12_4": b"\x00" + HELLO_12_4,
        # ctl | body only: the wrapped pass then sees the §12.4 hello exactly.
        "vector_12_4_body": b"\x81" + HELLO_12_4[5:],
        "truncated": b"\x01" + HELLO_12_4[:120],
    },
    "tls_records": {
        # chunk max | chunk seed (bit 7: prepend CCS) | stream
        "ccs_app_app": b"\x00\x00" + CCS + app(bytes(range(64))) + app(b"tail"),
        "split_reads": b"\x07\x83" + app(bytes(range(100))) + app(b"x" * 20)[:12],
        "bad_type": b"\x03\x01" + app(b"ok") + h("1503030002") + b"\x02\x28",
    },
    "transport_frames": {
        # ctl | stream (the §12.10 frames, readable under each tag)
        "abridged_12_10": b"\x00" + h("020001020304050607") + h("820001020304050607")
        + h("7f020000") + bytes(range(8)),
        "intermediate_12_10": b"\x00" + h("080000000001020304050607") + h("080000800001020304050607"),
        "padded_12_10": b"\x8a" + h("0b0000000001020304050607aabbcc") + h("0400000000"),
    },
    "secret_and_link": {
        "plain_hex": b"00112233445566778899aabbccddeeff",
        "dd_hex": b"dd00112233445566778899aabbccddeeff",
        "dd_b64": b"3QARIjNEVWZ3iJmqu8zd7v8",
        "ee_hex": b"ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d",
        "ee_b64_padded": b"7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20=",
        "tg_link": b"tg://proxy?server=proxy.example.net&port=443&secret=ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d",
        "tme_link": b"https://t.me/proxy?server=proxy.example.net&port=443&secret=7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20",
        "tg_colon_link": b"tg:proxy?server=h&port=1&secret=3QARIjNEVWZ3iJmqu8zd7v8%3D",
        "ee_raw": b"\xee" + h("00112233445566778899aabbccddeeff") + b"www.example.com",
    },
    "handshake": {
        # ctl | chunk max | chunk seed | data
        # Raw pass: the §12.4 hello verifies for user 0 inside the window -> ServerHello.
        "hello_12_4": b"\x00\x00\x00" + HELLO_12_4,
        # Raw pass: the §12.2 header (key of user 0, tag dd) byte by byte -> Accepted.
        "obfs2_12_2": b"\x00\x01\x00" + OBFS2_12_2 + FRAME_12_2,
        # Both passes prepend crate-built headers; the tail is a CCS then records.
        "built_headers": b"\x0b\x10\x05" + bytes(range(0x40, 0x80)) + CCS + app(b"early data!!") + app(b"\x00" * 8),
        # Hello variants 3 (16 000-byte hello) and 7 (replay), small reads.
        "variant_big": b"\x62\x05\x09" + bytes(range(64)) + app(b"z" * 32),
        "variant_replay": b"\xe0\x00\x00" + bytes(70),
    },
}

for target, files in SEEDS.items():
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
print("wrote", sum(len(f) for f in SEEDS.values()), "seeds under", HERE)
