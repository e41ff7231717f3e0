"""The round's defences, in order: evidence, norm bound, trust weighting, the rule's record.

:class:`Defences` takes a round's accepted updates and gives back what
Flower's rule receives: each update clipped (:class:`~.robust.NormBound`),
then, with ``federation.trust = "reference"``, rescaled to the reference
update's norm and weighted by its agreement with it (:mod:`.trust`), a
group of near-identical updates sharing one update's weight, the updates
weighted zero left out. It records what each step did, and the
collusion evidence (:mod:`.evidence`) it saw on the way, as ledger facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flwr.app import MetricRecord

from common.arrays import Arrays, record_of
from common.policy import FederationConfig
from common.protocol import METRICS
from ledger import DefenceFact
from server.app.strategy.evidence import ClassScorer, Evidence
from server.app.strategy.intake import Accepted
from server.app.strategy.robust import NormBound, rule_effects
from server.app.strategy.trust import Reference, flat_delta, trust_weigh

__all__ = ["Defences", "Defended"]


@dataclass(frozen=True)
class Defended:
    """A round's accepted updates after the defences, in the order accepted.

    Attributes
    ----------
    arrays : list of Arrays
        Each update as the rule receives it (clipped, rescaled).
    weights : list of float
        Each update's weight in the round's aggregate: its example count,
        or its trust weight (0 for an update left out).
    kept : list of bool
        Whether the rule receives the update (trust weight above 0).
    facts : list of DefenceFact
        What the defences did and the evidence they saw.
    """

    arrays: list[Arrays]
    weights: list[float]
    kept: list[bool]
    facts: list[DefenceFact]


@dataclass
class Defences:
    """The norm bound, trust weighting and evidence the policy asks for.

    Parameters
    ----------
    norm_bound : NormBound
        Clips the accepted updates before anything else sees them.
    federation : FederationConfig
        Names the rule (and its settings) whose effects are recorded.
    reference : callable, optional
        Trains the global model on the trusted set (:mod:`server.app.reference`);
        needed for ``trust = "reference"`` and ``update-norm-bound = "reference"``.
    evidence : Evidence, optional
        Looks for collusion (default: none looked for).
    """

    norm_bound: NormBound
    federation: FederationConfig
    reference: Reference | None = None
    evidence: Evidence | None = None
    trusted: bool = field(init=False)

    def __post_init__(self) -> None:
        self.trusted = self.federation.trust == "reference"
        if self.reference is None and (self.trusted or self.norm_bound.bound == "reference"):
            raise ValueError(
                "federation.trust = 'reference' and update-norm-bound = 'reference' need a "
                "trusted set to train the reference update on (the operator's validation split)"
            )

    @classmethod
    def of(
        cls,
        federation: FederationConfig,
        reference: Reference | None = None,
        class_scorer: ClassScorer | None = None,
    ) -> Defences:
        """The defences the policy asks for, the reference trained by ``reference``."""
        bound = NormBound(federation.update_norm_bound, federation.update_norm_quantile)
        evidence = Evidence(
            federation.evidence_cosine, federation.evidence_class_drop, class_scorer
        )
        return cls(bound, federation, reference, evidence)

    def apply(
        self,
        global_weights: Arrays,
        accepted: Sequence[Accepted],
        arrays_key: str,
        server_round: int,
        weight_key: str = "num-examples",
    ) -> Defended:
        """Defend the round: rewrite each accepted message as the rule must see it."""
        names = [a.update.institution for a in accepted]
        opened = [a.arrays for a in accepted]
        pairs = list(zip(names, opened, strict=True))
        facts: list[DefenceFact] = []
        twins = self.evidence.twins(global_weights, pairs) if self.evidence else {}
        if self.evidence is not None:
            facts += self.evidence.near_identical(twins)
        g0 = None
        if self.reference is not None and (self.trusted or self.norm_bound.bound == "reference"):
            g0 = flat_delta(global_weights, self.reference(global_weights, server_round))
        norm0 = None if g0 is None else float((g0 @ g0) ** 0.5)
        bounded, clipped = self.norm_bound.apply(global_weights, pairs, norm0)
        facts += clipped
        weights = [float(a.update.num_examples) for a in accepted]
        kept = [True] * len(accepted)
        if self.trusted and g0 is not None:
            trust = trust_weigh(global_weights, list(zip(names, bounded, strict=True)), g0)
            bounded, weights = trust.arrays, _one_vote(names, trust.weights, twins)
            kept = [w > 0 for w in weights]
            facts += trust.facts
            facts += [
                DefenceFact(
                    name,
                    "trust",
                    "shared",
                    f"near-identical to {', '.join(o for o, _ in twins[name])}: the group "
                    f"counts as one update; weight {weight:.1%} of the round",
                )
                for name, weight in zip(names, weights, strict=True)
                if weight > 0 and name in twins
            ]
            if self.evidence is not None:
                zero = [n for n, k in zip(names, kept, strict=True) if not k]
                facts += self.evidence.weighted_zero(server_round, zero)
        for item, before, after, weight in zip(accepted, opened, bounded, weights, strict=True):
            if after is not before:
                item.message.content.array_records[arrays_key] = record_of(after)
            if self.trusted:
                metrics = item.message.content.metric_records.get(METRICS, MetricRecord())
                metrics[weight_key] = weight
                item.message.content.metric_records[METRICS] = metrics
        chosen = [i for i, k in enumerate(kept) if k]
        facts += rule_effects(
            self.federation,
            [names[i] for i in chosen],
            [accepted[i].message.content for i in chosen],
            [bounded[i] for i in chosen],
        )
        return Defended(bounded, weights, kept, facts)

    def class_drops(
        self, before: Arrays, after: Arrays, updates: Sequence[tuple[str, Arrays]]
    ) -> list[DefenceFact]:
        """The per-class evidence on a finished round (none without a class scorer)."""
        if self.evidence is None:
            return []
        return self.evidence.class_drops(before, after, updates)


def _one_vote(
    names: Sequence[str], weights: Sequence[float], twins: dict[str, list[tuple[str, float]]]
) -> list[float]:
    """Trust weights with each group of near-identical updates counting as one update.

    Copies carry no independent evidence: a group of ``k`` near-identical
    updates shares one update's weight (each weighs ``1/k`` of it), and the
    weights are normalised again.
    """
    group = {name: {name} for name in names}
    for name, others in twins.items():  # connected groups of the near-identical relation
        for other, _ in others:
            merged = group[name] | group[other]
            for member in merged:
                group[member] = merged
    shared = [w / len(group[n]) for n, w in zip(names, weights, strict=True)]
    total = sum(shared)
    return [w / total if total > 0 else 0.0 for w in shared]
