"""The consortium's strategy: Flower's aggregation wrapped with the consortium's rules.

Built like Flower's own DP wrappers: :class:`ConsortiumStrategy` holds the
aggregation strategy (Flower's ``FedAvgM`` by default) and adds, around it,
the licence check (:mod:`.licence_check`), the update intake (:mod:`.intake`), the
round recorder (:mod:`.recorder`) and the receipt outbox (:mod:`.outbox`).
Each part is replaceable and tested on its own; the aggregator only ever
sees decrypted, checked updates weighted by the example count each
participant signed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from common.arrays import Arrays, arrays_of, arrays_sha256, record_of
from common.protocol import (
    OWED_CHARGES,
    ExclusionCode,
)
from common.witness import COSIGNATURES, cosignatures_of
from ledger import ExclusionFact
from ledger.shapley import RoundValues
from server.app.snapshots import KeptReply
from server.app.strategy.defences import Defences
from server.app.strategy.intake import RoundIntake, UpdateIntake, sender
from server.app.strategy.kept import kept_reply, reply_of
from server.app.strategy.licence_check import LicenceCheck
from server.app.strategy.outbox import ReceiptOutbox
from server.app.strategy.owed import OwedCharges
from server.app.strategy.recorder import FinishedRound, NullRecorder, RoundRecorder
from server.app.valuation import Valuer

__all__ = ["ConsortiumStrategy", "Evaluator", "RoundFailed"]

log = logging.getLogger(__name__)

Evaluator = Callable[[Arrays], tuple[float, float]]
"""Maps global weights to ``(loss, accuracy)`` on the server's validation split."""


class RoundFailed(RuntimeError):
    """Fewer nodes than the policy's minimum returned a usable update."""


class ConsortiumStrategy(Strategy):
    """``aggregator`` plus the licence check, update intake, round recorder and receipt outbox.

    Parameters
    ----------
    aggregator : FedAvg
        The aggregation rule (Flower's ``FedAvg`` family); it samples the
        nodes and averages the accepted updates.
    intake : UpdateIntake
        Opens and checks every reply.
    licence_check : LicenceCheck
        Nodes whose data may no longer be used are not asked to train.
    evaluator : callable
        ``(loss, accuracy)`` of global weights on the server's validation split.
    min_nodes : int
        Accepted updates a round needs to count.
    recorder : RoundRecorder, optional
        Keeps the record (default: :class:`~.recorder.NullRecorder`).
    outbox : ReceiptOutbox, optional
        Holds the receipts the recorder owes (default: a new one).
    rounds_done : int (default: 0)
        Rounds the ledger run already recorded: a resumed run numbers its
        rounds after them (Flower's round 1 is round ``rounds_done + 1``).
    defences : Defences, optional
        Bounds each accepted update's norm and records what the aggregation
        rule leaves out (default: none).
    valuer : Valuer, optional
        Values each round's accepted updates before the round is recorded
        (default: not valued).
    owed : OwedCharges, optional
        Checks the earlier updates a reply reports as owed, so the ledger
        records every charge a member paid (default: reports are ignored).
    """

    def __init__(
        self,
        aggregator: FedAvg,
        *,
        intake: UpdateIntake,
        licence_check: LicenceCheck,
        evaluator: Evaluator,
        min_nodes: int,
        recorder: RoundRecorder | None = None,
        outbox: ReceiptOutbox | None = None,
        rounds_done: int = 0,
        defences: Defences | None = None,
        valuer: Valuer | None = None,
        owed: OwedCharges | None = None,
    ) -> None:
        if min_nodes < 1:
            raise ValueError(f"min_nodes must be >= 1, got {min_nodes}")
        if rounds_done < 0:
            raise ValueError(f"rounds_done must be >= 0, got {rounds_done}")
        self.rounds_done = rounds_done
        self.defences = defences
        self.valuer = valuer
        self.owed = owed
        self._global: Arrays = {}
        self.aggregator = aggregator
        self.intake = intake
        self.licence_check = licence_check
        self.evaluator = evaluator
        self.min_nodes = min_nodes
        self.recorder: RoundRecorder = recorder if recorder is not None else NullRecorder()
        self.outbox = outbox if outbox is not None else ReceiptOutbox()
        if self.outbox.witnesses is None:
            self.outbox.witnesses = self.recorder.witnesses
        self._started = time.monotonic()
        self._model_before = ""
        self._round = RoundIntake()
        self._bounded: list[tuple[str, Arrays, float]] = []
        """The round's accepted updates as the rule received them (Flower's rules may pop them)."""
        self._sent: list[Message] = []
        self._phases: dict[str, float] = {}
        """Seconds of the round's server-side phases, logged once the round is recorded."""
        self._taken = self._started
        self._carrier: str | None = None
        """The Flower run a recovered round's updates are bound to (``None``: this one)."""

    def recover_round(
        self, weights: Arrays, replies: Mapping[str, KeptReply], carrier: str
    ) -> Arrays:
        """Finish the round after :attr:`rounds_done` from the replies kept before a crash.

        The members trained and paid for it; a resumed run aggregates, values
        and records it as the crashed one would have, instead of asking them
        to train (and spend privacy budget) again. Every kept reply goes
        through the intake again (signature, binding to ``carrier``, the
        Flower run that crashed, and to the round's starting model, tensors,
        charge, licence, claims); charges the ledger already holds are not
        recorded twice, and any it lacks (the crash came before they were
        written) are recorded from the headers the members signed. Returns the
        round's global model; the next round Flower runs is numbered after it.

        Raises
        ------
        RoundFailed
            Fewer kept replies than the quorum pass the checks: the round is
            trained again (their charges stay recorded).
        """
        self.restore(weights, {})  # FedAvgM's server step starts from the round's model
        self._start_round(self.rounds_done + 1, record_of(weights), carrier)
        messages = [reply_of(reply) for reply in replies.values()]
        self._carrier = carrier
        try:
            arrays, _ = self.aggregate_train(1, messages)
            if arrays is None:
                raise RoundFailed(f"round {self.rounds_done + 1}: the kept replies gave no model")
            self.finish_round(1, arrays)
        finally:
            self._carrier = None
        self.rounds_done += 1
        return arrays_of(arrays)

    def _start_round(
        self, server_round: int, arrays: ArrayRecord, flower_run_id: str | None = None
    ) -> None:
        self._started = time.monotonic()
        self._global = arrays_of(arrays)
        self._model_before = arrays_sha256(self._global)
        self.intake.begin_round(server_round, self._model_before, flower_run_id=flower_run_id)
        self._sent = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.rounds_done  # the ledger's round number, also on the wire
        self._start_round(server_round, arrays)
        kept, excluded = [], []
        for message in self.aggregator.configure_train(server_round, arrays, config, grid):
            node = message.metadata.dst_node_id
            suspended = self.intake.suspended_at(node)
            institution = suspended or self.intake.institution_of(node)
            code = ExclusionCode.SUSPENDED if suspended else ExclusionCode.LICENCE
            # a suspended member signed an update in this run: no more training, no ε spent
            reason = f"{suspended} is suspended" if suspended else None
            reason = reason or (self.licence_check.blocked(institution) if institution else None)
            if reason is None:
                self.outbox.attach(message, institution)
                kept.append(message)
            else:
                excluded.append(ExclusionFact(institution, node, code, reason))
                log.warning(
                    "round %d: %s not asked to train: %s", server_round, institution, reason
                )
        self.recorder.record_exclusions(server_round, excluded)
        self._sent = kept  # Flower's push gives each its message id
        return kept

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record every charge and exclusion, then aggregate the accepted updates.

        A node that did not answer is excluded too; the round goes on if the
        quorum (``min_nodes``) returned a usable update.
        """
        server_round += self.rounds_done
        replied = time.monotonic()
        self._phases = {"waiting for replies": replied - self._started}
        replies = list(replies)
        sent = [m.metadata.dst_node_id for m in self._sent]
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        asked.pop("", None)  # a message never pushed has no id
        senders = [sender(r, asked) for r in replies]
        reported = [
            r.content.config_records.get(OWED_CHARGES) for r in replies if not r.has_error()
        ]
        for reply, node in zip(replies, senders, strict=True):
            if _from_client_app(reply):  # it took the receipts before anything else
                self.outbox.answered(node, self.intake.institution_of(node))
                self.take_cosignatures(self.intake.institution_of(node), reply)
        self._round = intake = self.intake.take(replies, asked)
        self.recorder.keep_replies(
            server_round, {a.update.institution: kept_reply(a) for a in intake.accepted}
        )
        self._taken = time.monotonic()
        self._phases["intake (verify, open, check)"] = self._taken - replied
        intake.exclusions += self.intake.missing(sent, senders)
        charges = [a.charge for a in intake.accepted]
        self.recorder.record_replies(server_round, charges, intake.exclusions)
        self._settle_owed(server_round, reported)
        for e in intake.exclusions:
            who = e.institution or "unknown"
            log.warning(
                "round %d: node %d (%s) excluded: %s", server_round, e.node_id, who, e.reason
            )
        if len(intake.accepted) < self.min_nodes:
            reasons = "; ".join(_describe(e) for e in intake.exclusions)
            raise RoundFailed(
                f"round {server_round}: {len(intake.accepted)} of the required {self.min_nodes} "
                "nodes returned an update" + (f" ({reasons})" if reasons else "")
            )
        bounded = [a.arrays for a in intake.accepted]
        weights = [float(a.update.num_examples) for a in intake.accepted]
        kept = [True] * len(bounded)
        if self.defences is not None:
            defended = self.defences.apply(
                self._global,
                intake.accepted,
                self.intake.arrayrecord_key,
                server_round,
                self.intake.weighted_by_key,
            )
            bounded, weights, kept = defended.arrays, defended.weights, defended.kept
            self.recorder.record_defences(server_round, defended.facts)
        # Kept apart from the replies: FedMedian and FedTrimmedAvg pop the arrays out of them.
        self._bounded = [
            (a.update.institution, arrays, weight)
            for a, arrays, weight in zip(intake.accepted, bounded, weights, strict=True)
        ]
        chosen = [a.message for a, k in zip(intake.accepted, kept, strict=True) if k]
        if not chosen:  # every update pointed away from the trusted data: the model stays
            log.warning("round %d: every update weighted zero; the model is kept", server_round)
            return record_of(self._global), MetricRecord()
        return self.aggregator.aggregate_train(server_round, chosen)

    def _settle_owed(self, server_round: int, reported: list[ConfigRecord | None]) -> None:
        """Record the charges members report they paid and the ledger may lack; tell them."""
        if self.owed is None or not any(r is not None for r in reported):
            return
        owed, seen = self.owed.take(reported, server_round, self.intake.gate.flower_run_id)
        self.recorder.record_owed(owed)
        for institution, ciphertext in seen:
            self.outbox.acknowledge(institution, ciphertext)
        if owed:
            log.info(
                "round %d: %d owed charge(s) reported: %s", server_round, len(owed),
                ", ".join(f"{o.charge.institution} round {o.round}" for o in owed),
            )  # fmt: skip

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.rounds_done
        return self.aggregator.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.aggregator.aggregate_evaluate(server_round + self.rounds_done, replies)

    def summary(self) -> None:
        self.aggregator.summary()

    def finish_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate and record a round; queue its receipts (Flower's ``evaluate_fn``)."""
        weights = arrays_of(arrays)
        evaluating = time.monotonic()
        loss, accuracy = self.evaluator(weights)
        if server_round > 0:
            server_round += self.rounds_done
            if self.defences is not None:
                kept = [(name, arrays) for name, arrays, weight in self._bounded if weight > 0]
                drops = self.defences.class_drops(self._global, weights, kept)
                self.recorder.record_defences(server_round, drops)
            valuing = time.monotonic()
            valuation = self._value(server_round)
            recording = time.monotonic()
            receipts = self.recorder.record_round(
                FinishedRound(
                    number=server_round,
                    model_before=self._model_before,
                    model_after=arrays_sha256(weights),
                    weights=weights,
                    loss=loss,
                    accuracy=accuracy,
                    started=self._started,
                    updates=[a.update for a in self._round.accepted],
                    flower_run_id=self._carrier,
                    server_state=self.server_state(weights),
                    valuation=valuation,
                )
            )
            self.outbox.queue(receipts)
            log.info("round %d: validation accuracy %.4f, loss %.4f", server_round, accuracy, loss)
            self._phases.update(
                {
                    "defences and aggregation": evaluating - self._taken,
                    "evaluation": valuing - evaluating,
                    "valuation": recording - valuing,
                    "ledger": time.monotonic() - recording,
                }
            )
            log.info(
                "round %d server phases: %s",
                server_round,
                ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self._phases.items()),
            )
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    def _value(self, server_round: int) -> RoundValues | None:
        """What each of the round's accepted (bounded) updates was worth, if valued."""
        if self.valuer is None:
            return None
        valuation = self.valuer.value(
            server_round, self._global, self.round_updates(), self.evaluator
        )
        if valuation is not None:
            log.info(
                "round %d: %s values from %d coalition evaluations in %.2f s",
                server_round,
                valuation.method,
                valuation.evaluations,
                valuation.seconds,
            )
        return valuation

    def round_updates(self) -> list[tuple[str, Arrays, float]]:
        """The last round's accepted updates as aggregated (bounded, rescaled), with the weight
        each had in the aggregate: its example count, or its trust weight."""
        return list(self._bounded)

    @property
    def round_start(self) -> Arrays:
        """The global model the last configured round started from."""
        return self._global

    def server_state(self, weights: Arrays) -> Arrays:
        """The aggregator's own state after a round, by parameter name: FedAvgM's momentum.

        Saved with each snapshot, so a resumed run continues with it.
        """
        momentum = getattr(self.aggregator, "momentum_vector", None)
        if momentum is None:
            return {}
        return dict(zip(weights, momentum, strict=True))

    def restore(self, weights: Arrays, server_state: Arrays) -> None:
        """Continue from a recorded round: its global model and the aggregator's state."""
        if hasattr(self.aggregator, "current_arrays"):
            self.aggregator.current_arrays = record_of(weights)
        if server_state and hasattr(self.aggregator, "momentum_vector"):
            self.aggregator.momentum_vector = [server_state[name] for name in weights]

    def deliver_receipts(self, grid: Grid, timeout: float | None) -> dict[str, str]:
        """Send the receipts still owed (the last round's) in one query per node."""
        return self.outbox.deliver_remaining(
            grid, self.intake.nodes, timeout, on_reply=self.take_cosignatures
        )

    def deliver_quorum(self, grid: Grid, timeout: float | None) -> dict[str, str]:
        """The run's final query per node: the cosignatures on the last checkpoint it holds."""
        return self.outbox.deliver_quorum(grid, self.intake.nodes, timeout)

    def take_cosignatures(self, institution: str | None, reply: Message) -> None:
        """Keep the cosignatures a node's reply carries (a bad one is logged, not kept)."""
        if reply.has_error() or institution is None:
            return
        record = reply.content.config_records.get(COSIGNATURES)
        if record is None:
            return
        try:
            cosigned = cosignatures_of(record)
        except ValueError as err:
            log.warning("%s sent malformed cosignatures: %s", institution, err)
            return
        self.recorder.record_cosignatures(institution, cosigned)


def _from_client_app(reply: Message) -> bool:
    """Whether the node's ClientApp wrote ``reply`` (an update or its own refusal), not Flower."""
    return not reply.has_error() or ExclusionCode.of_reply(reply.error.code) == reply.error.code


def _describe(exclusion: ExclusionFact) -> str:
    who = exclusion.institution or f"node {exclusion.node_id}"
    kind = "privacy budget" if exclusion.code == ExclusionCode.BUDGET_EXHAUSTED else "excluded"
    return f"{who} [{kind}]: {exclusion.reason}"
