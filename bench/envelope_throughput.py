"""Throughput of the update envelope beside OpenSSL's AES-256-GCM, in one run.

Seals (X25519 + HKDF + AES-256-GCM + SHA-256 + Ed25519 sign) and opens
(SHA-256 + Ed25519 verify + X25519 + HKDF + AES-256-GCM decrypt) a real
update, exactly as ``common.envelope`` does for the ClientApp and ServerApp:

* the CNN update (the demo's model, safetensors bytes);
* a 22.7M-parameter BERT update: every parameter of the packaged
  all-MiniLM-L6-v2 classifier (the worst case: full fine-tuning).

Beside them, in the same run, ``openssl speed -evp aes-256-gcm`` (16 KiB
blocks, the largest it measures) and ``openssl speed -evp sha256`` as the
ceilings of the two passes every sealed byte goes through.

Usage::

    python bench/envelope_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from record import write_record  # noqa: E402  (bench/record.py)

from common.arrays import arrays_to_bytes  # noqa: E402
from common.envelope import UpdateHeader, decrypt, seal, verify_signature  # noqa: E402
from common.model import build_model, full_arrays, get_arrays  # noqa: E402
from common.policy import ModelConfig, Policy  # noqa: E402
from common.protocol import PrivacyCharge  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "envelope_throughput.json"


def openssl_speed(algorithm: str, seconds: int) -> float:
    """MB/s (10^6 bytes) at 16 KiB blocks from ``openssl speed -evp``."""
    completed = subprocess.run(
        ["openssl", "speed", "-evp", algorithm, "-seconds", str(seconds), "-bytes", "16384"],
        capture_output=True,
        text=True,
        check=True,
    )
    line = completed.stdout.strip().splitlines()[-1]
    match = re.search(r"([\d.]+)k\s*$", line)
    if match is None:
        raise RuntimeError(f"cannot parse openssl output: {line!r}")
    return float(match.group(1)) * 1000 / 1e6


def timed(action: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Median seconds per call over repeated calls for about ``seconds``."""
    action()  # warm up
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def measure(name: str, plaintext: bytes, seconds: float) -> dict[str, object]:
    aggregator = X25519PrivateKey.generate()
    signer = Ed25519PrivateKey.generate()
    header = UpdateHeader(
        run_id="1",
        round=1,
        participant="university-a",
        model_sha256="0" * 64,
        base_model_sha256="1" * 64,
        num_examples=100,
        privacy=PrivacyCharge(True, 1.0, 1e-5, 1.0, 0.1, 10, "rdp", 1.0, "2" * 64, "3" * 64),
    )
    envelope = seal(plaintext, header, aggregator=aggregator.public_key(), signer=signer)

    def open_() -> bytes:
        verify_signature(envelope, signer.public_key())
        return decrypt(envelope, UpdateHeader.parse(envelope.header), aggregator)

    assert open_() == plaintext
    seal_s, seal_n = timed(
        lambda: seal(plaintext, header, aggregator=aggregator.public_key(), signer=signer),
        seconds,
    )
    open_s, open_n = timed(open_, seconds)
    # the two passes alone, through the same library, on the same bytes
    cipher, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(12)
    aes_s, _ = timed(lambda: cipher.encrypt(nonce, plaintext, envelope.header), seconds)
    sha_s, _ = timed(lambda: hashlib.sha256(envelope.ciphertext).digest(), seconds)
    size = len(plaintext)
    return {
        "update": name,
        "plaintext_bytes": size,
        "ciphertext_bytes": len(envelope.ciphertext),
        "seal_ms": seal_s * 1e3,
        "open_ms": open_s * 1e3,
        "seal_mb_s": size / seal_s / 1e6,
        "open_mb_s": size / open_s / 1e6,
        "repeats": [seal_n, open_n],
        "aes_gcm_alone_mb_s": size / aes_s / 1e6,
        "sha256_alone_mb_s": size / sha_s / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="per measurement")
    args = parser.parse_args()

    cnn = arrays_to_bytes(get_arrays(build_model(Policy().model, seed=0)))
    bert_model = build_model(ModelConfig(name="bert", num_classes=6), seed=0)
    bert = arrays_to_bytes(full_arrays(bert_model))
    parameters = sum(p.numel() for p in bert_model.parameters())
    del bert_model

    aes = openssl_speed("aes-256-gcm", args.seconds)
    sha = openssl_speed("sha256", args.seconds)
    rows = [
        measure("CNN (demo model)", cnn, args.seconds),
        measure(f"BERT all {parameters / 1e6:.1f}M parameters", bert, args.seconds),
    ]
    for row in rows:
        row["seal_ratio_to_openssl_aes_gcm"] = float(row["seal_mb_s"]) / aes  # type: ignore[arg-type]
        row["open_ratio_to_openssl_aes_gcm"] = float(row["open_mb_s"]) / aes  # type: ignore[arg-type]
    ceiling = 1 / (1 / aes + 1 / sha)
    print(f"openssl aes-256-gcm {aes:,.0f} MB/s; sha256 {sha:,.0f} MB/s; one AES-GCM pass "
          f"plus one SHA-256 pass at those speeds: {ceiling:,.0f} MB/s "
          f"({ceiling / aes:.2f} of AES-GCM)")  # fmt: skip
    for row in rows:
        print(f"{row['update']:32s} {row['plaintext_bytes']:>12,d} B  "
              f"seal {row['seal_ms']:9.2f} ms {row['seal_mb_s']:8,.0f} MB/s "
              f"({row['seal_ratio_to_openssl_aes_gcm']:.3f})  "
              f"open {row['open_ms']:9.2f} ms {row['open_mb_s']:8,.0f} MB/s "
              f"({row['open_ratio_to_openssl_aes_gcm']:.3f}); alone on these bytes: "
              f"AES-GCM {row['aes_gcm_alone_mb_s']:,.0f}, "
              f"SHA-256 {row['sha256_alone_mb_s']:,.0f} MB/s")  # fmt: skip
    write_record(
        RESULTS,
        openssl_aes_256_gcm_mb_s=aes,
        openssl_sha256_mb_s=sha,
        serial_aes_plus_sha_ceiling_mb_s=ceiling,
        rows=rows,
    )


if __name__ == "__main__":
    main()
