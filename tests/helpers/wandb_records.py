"""Read back an offline wandb run (`run-*.wandb`): a LevelDB-style log of protobuf records.

wandb no longer ships a Python reader for its transaction log, so the tests carry this small one.
"""

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7  # ':W&B', magic (2 bytes), version (1 byte)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path):
    """Yield wandb Record protobufs from a .wandb file."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    offset, pending = HEADER, b""
    while offset + 7 <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < 7:
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        chunk = data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def logged_keys(run_dir):
    """(history keys, config keys, summary keys) of the single offline run under run_dir/wandb."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    history, config, summary = set(), set(), set()
    for file in files:
        for record in read_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                history.update(item.key or "/".join(item.nested_key) for item in record.history.item)
            elif kind == "run":
                config.update(item.key or "/".join(item.nested_key) for item in record.run.config.update)
            elif kind == "config":
                config.update(item.key or "/".join(item.nested_key) for item in record.config.update)
            elif kind == "summary":
                summary.update(item.key or "/".join(item.nested_key) for item in record.summary.update)
    return history, config, summary
