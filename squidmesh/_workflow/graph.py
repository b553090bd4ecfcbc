"""The step graph of a workflow: entry steps, dependency cycles, step layout.

Pure functions over step names. ``dependencies`` maps each step, in
declaration order, to the steps it runs after. Every walk is iterative, so a
long chain of steps cannot hit the recursion limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ("dependency_cycles", "entry_steps", "step_layout")

Dependencies = Mapping[str, Sequence[str]]


def entry_steps(steps: Iterable[str], targets: Iterable[object]) -> list[str]:
    """The steps that no transition leads to, in declaration order.

    Args:
        steps: the step names.
        targets: where the transitions lead; anything but a ``str`` leads
            nowhere.
    """
    reached = {target for target in targets if type(target) is str}
    return [step for step in steps if step not in reached]


def dependency_cycles(dependencies: Dependencies) -> list[list[str]]:
    """Find one concrete cycle per strongly connected group of steps.

    Every name in ``dependencies`` values must be a key.

    Returns:
        Each cycle as ``[a, b, ..., a]`` where each step runs after the next,
        ordered by the declaration of their first step.
    """
    position = {name: index for index, name in enumerate(dependencies)}
    cycles: list[list[str]] = []
    for component in _strongly_connected(dependencies):
        if len(component) < 2:
            continue
        start = min(component, key=position.__getitem__)
        cycles.append(_cycle_through(start, set(component), dependencies))
    cycles.sort(key=lambda cycle: position[cycle[0]])
    return cycles


def step_layout(dependencies: Dependencies) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(step, depends_on)`` in the order run history shows steps.

    By dependency phase (a step's phase is 0 without dependencies, else one
    more than the highest phase it depends on), then declaration order, so
    steps without dependencies keep their declaration order.

    Only for an acyclic graph whose dependencies are all keys.
    """
    phase: dict[str, int] = {}
    # Acyclic, so each sweep assigns at least one step.
    while len(phase) < len(dependencies):
        for name, after in dependencies.items():
            if name not in phase and all(d in phase for d in after):
                phase[name] = 1 + max((phase[d] for d in after), default=-1)
    indexed = sorted(enumerate(dependencies.items()), key=lambda item: (phase[item[1][0]], item[0]))
    return tuple((name, tuple(after)) for _, (name, after) in indexed)


def _strongly_connected(edges: Dependencies) -> list[list[str]]:
    """Tarjan's algorithm, with an explicit stack instead of recursion."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index_of:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index_of[target])
                continue
            if low[node] == index_of[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_through(start: str, members: set[str], edges: Dependencies) -> list[str]:
    """Return a path ``[start, ..., start]`` inside one strongly connected group."""
    path = [start]
    visited = {start}
    iterators = [iter(edges[start])]
    while iterators:
        for target in iterators[-1]:
            if target == start:
                return [*path, start]
            if target in members and target not in visited:
                visited.add(target)
                path.append(target)
                iterators.append(iter(edges[target]))
                break
        else:
            iterators.pop()
            path.pop()
    # Unreachable for a component of two or more steps, which always has a cycle.
    return [start, start]
