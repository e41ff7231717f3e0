"""Sealing a trained update: encrypted to the pinned aggregator key, signed by this node.

The node's identity lives in its state folder (``fedcommons client enroll``
created it): the Ed25519 signing key and the consortium file whose
aggregator key is pinned. The key the server sends with each round must be
that pinned key, so a relay cannot substitute its own.
"""

from __future__ import annotations

from client.enrolment import ParticipantState
from common.arrays import Arrays, arrays_to_bytes
from common.consortium import Consortium, EnrolmentError
from common.envelope import Envelope, UpdateHeader, seal
from common.keys import passphrase_from_env
from common.policy import PolicyError
from common.protocol import PrivacyCharge, TrainConfig

__all__ = ["seal_update"]


def seal_update(
    state: ParticipantState,
    *,
    institution: str,
    weights: Arrays,
    charge: PrivacyCharge,
    num_examples: int,
    flower_run_id: int,
    model_sha256: str,
    config: TrainConfig,
) -> Envelope:
    """Serialise ``weights`` (safetensors), encrypt them to the aggregator and sign them.

    Raises
    ------
    PolicyError
        No enrolment in the state folder, or the server's aggregator key is
        not the one pinned at enrolment.
    KeyFileError
        The signing key is unreadable, too widely readable, or needs a passphrase
        (``$FEDCOMMONS_KEY_PASSPHRASE``).
    """
    try:
        consortium = Consortium.load(state.consortium)
    except EnrolmentError as err:
        raise PolicyError(
            f"this node is not enrolled ({err}): run 'fedcommons client enroll --state "
            f"{state.root} ...' and have the operator admit the request"
        ) from err
    offered = config.aggregator_key
    if offered != consortium.aggregator_public_key:
        raise PolicyError(
            f"the server's aggregator key {offered!r} is not the one pinned in "
            f"{state.consortium} ({consortium.aggregator_public_key}): refusing to send an update"
        )
    header = UpdateHeader(
        run_id=str(flower_run_id),
        round=config.server_round,
        participant=institution,
        model_sha256=model_sha256,
        base_model_sha256=config.base_sha256 or "",
        num_examples=num_examples,
        privacy=charge,
    )
    return seal(
        arrays_to_bytes(weights),
        header,
        aggregator=consortium.aggregator_key,
        signer=state.load_signing_key(passphrase_from_env()),
    )
