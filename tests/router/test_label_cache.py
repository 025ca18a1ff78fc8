"""Issue 10 finding 7: the router cached one eligible-pod list per client-chosen label set, without bound."""

from __future__ import annotations

from types import SimpleNamespace

from axon_router.pod_view import PodView
from axon_router.targets import MAX_CACHED_LABEL_SETS, TargetState

LABELS = {"model": "m", "region": "eu"}


def _state() -> TargetState:
    views = {p: PodView(p, f"http://{p}", labels=LABELS) for p in ("a", "b")}
    pods = [SimpleNamespace(id=p, state=SimpleNamespace(value="active"), labels=LABELS) for p in views]
    return TargetState("chat", SimpleNamespace(generation=1, pods=pods, config=SimpleNamespace(model="m")), views)


def test_client_chosen_label_sets_do_not_grow_the_router_without_bound() -> None:
    st = _state()
    for i in range(5 * MAX_CACHED_LABEL_SETS):  # x-brunoise-labels: junk=<i>, a new set on every request
        assert st.eligible({"junk": str(i)}) == ([], frozenset())
    assert len(st._eligible) <= MAX_CACHED_LABEL_SETS
    # answers stay right past the bound, cached or not
    assert st.eligible({"region": "eu"})[1] == {"a", "b"}
    assert st.eligible({"region": "us"})[1] == frozenset()
    assert st.eligible({})[1] == {"a", "b"}
