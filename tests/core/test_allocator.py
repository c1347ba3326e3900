import math

import pytest
import torch

from elalora_vit import AdaLoRAAllocator, ElaLoRAConfig, plan_round, patch_model
from elalora_vit.core import adapted_layers
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit
from tests.core.helpers import TOTAL, batch, run, setup
from tests.core.slot_moments import assert_moments_after_round

INF = math.inf


def _masks(ranks, capacity):
    return torch.tensor([[s < r for s in range(capacity)] for r in ranks])


# ------------------------------------------------------------- plan_round (pure)
def test_prunes_lowest_and_grows_owners_of_highest_candidates():
    scores = torch.tensor(
        [
            [0.1, 0.2, 0.9, INF],  # adapter 0, rank 3: weakest 0.1, 0.2
            [5.0, 6.0, 7.0, INF],  # adapter 1, rank 3: weakest 5, 6 -> saturated
            [0.3, 0.4, 1.0, INF],
        ]
    )
    prune, grow, shortfall = plan_round(scores, _masks([3, 3, 3], 4), k=2, b=2, capacity=4)
    assert prune == [(0, 0), (0, 1)]
    assert grow == [1, 1] or grow == [1, 2]
    # adapter 1 has room for one more rank only (3 -> 4), so the next candidate's owner gets the second
    assert grow == [1, 2] and shortfall == 0


def test_rank_one_adapter_can_still_grow_but_offers_no_prune_candidate():
    scores = torch.tensor([[9.0, INF, INF], [0.5, 0.6, 0.7], [0.4, 0.8, 0.9]])
    prune, grow, shortfall = plan_round(scores, _masks([1, 3, 3], 3), k=2, b=1, capacity=3)
    assert grow == [0]
    assert (0, 0) not in prune and prune == [(2, 0)]


def test_no_adapter_drops_to_rank_zero():
    scores = torch.tensor([[0.0, INF], [0.0, INF], [1.0, 2.0]])
    prune, grow, _ = plan_round(scores, _masks([1, 1, 2], 2), k=2, b=3, capacity=2)
    assert all(a == 2 for a, _ in prune) and len(prune) <= 1


def test_capacity_limits_shrink_the_round_and_are_reported():
    # k=1: each adapter offers only its weakest rank. The only adapters with room after
    # pruning are the pruned ones, and their evidence is the pruned slot itself.
    scores = torch.tensor([[0.1, 0.2], [3.0, 4.0], [5.0, 6.0]])
    prune, grow, shortfall = plan_round(scores, _masks([2, 2, 2], 2), k=1, b=2, capacity=2)
    assert prune == [] and grow == [] and shortfall == 2
    # with k=2 the same adapters re-grow from their second candidate: a full round
    prune, grow, shortfall = plan_round(scores, _masks([2, 2, 2], 2), k=2, b=2, capacity=2)
    assert prune == [(0, 0), (1, 0)] and grow == [1, 0] and shortfall == 0


def test_partial_shortfall_keeps_the_budget():
    scores = torch.tensor([[0.1, 0.2, 0.3], [5.0, 6.0, INF]])
    # adapter 1 has one free slot: only one rank can move although b=2
    prune, grow, shortfall = plan_round(scores, _masks([3, 2], 3), k=1, b=2, capacity=3)
    assert prune == [(0, 0)] and grow == [1] and shortfall == 1


def test_ties_are_broken_by_adapter_and_slot_order():
    scores = torch.zeros(4, 4)
    first = plan_round(scores, _masks([2, 2, 2, 2], 4), k=2, b=2, capacity=4)
    second = plan_round(scores.clone(), _masks([2, 2, 2, 2], 4), k=2, b=2, capacity=4)
    assert first == second
    assert first[0] == [(0, 0), (1, 0)]


def test_at_capacity_a_round_that_cannot_grow_all_it_prunes_shrinks():
    # adapter 0 offers the two weakest ranks; adapter 2 (the strongest) is full, adapter 1
    # has room for one: pruning two would regrow only one, so only one rank moves.
    scores = torch.tensor([[0.1, 0.2, 0.3], [5.0, 6.0, INF], [7.0, 8.0, 9.0]])
    prune, grow, shortfall = plan_round(scores, _masks([3, 2, 3], 3), k=2, b=2, capacity=3)
    assert (prune, grow, shortfall) == ([(0, 0)], [1], 1)


def test_at_capacity_everywhere_nothing_moves():
    # every adapter full and k=1: a pruned slot is the only room, and it is its own
    # adapter's only evidence, so no rank can go elsewhere
    scores = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    assert plan_round(scores, _masks([2, 2, 2], 2), k=1, b=3, capacity=2) == ([], [], 3)


def test_a_full_adapter_with_the_best_evidence_passes_its_rank_on():
    scores = torch.tensor([[9.0, 9.5], [0.1, 0.2], [3.0, INF]])
    prune, grow, shortfall = plan_round(scores, _masks([2, 2, 1], 2), k=2, b=1, capacity=2)
    assert prune == [(1, 0)] and grow == [2] and shortfall == 0  # adapter 0 is full


def _apply(masks: torch.Tensor, prune, grow, capacity: int) -> torch.Tensor:
    """The masks after a round, as the allocator applies it: prune, then fill free slots."""
    masks = masks.clone()
    for adapter, slot in prune:
        assert masks[adapter, slot], "pruned an inactive slot"
        masks[adapter, slot] = False
    for adapter in grow:
        free = (~masks[adapter]).nonzero().flatten()
        assert len(free), f"grew adapter {adapter} beyond capacity {capacity}"
        masks[adapter, int(free[0])] = True
    return masks


def test_plan_round_keeps_the_total_rank_on_random_inputs():
    """A property test (seeded random cases, no hypothesis): whatever the scores, masks,
    capacity, k and b, every pruned rank is regrown, the shortfall accounts for the rest
    of b, no adapter drops to rank 0 or exceeds its capacity."""
    rng = torch.Generator().manual_seed(0)
    shortfalls = 0
    for case in range(400):
        adapters = int(torch.randint(1, 7, (1,), generator=rng))
        capacity = int(torch.randint(1, 6, (1,), generator=rng))
        ranks = torch.randint(1, capacity + 1, (adapters,), generator=rng)
        masks = torch.zeros(adapters, capacity, dtype=torch.bool)
        for a in range(adapters):  # active slots anywhere, not only a prefix
            masks[a, torch.randperm(capacity, generator=rng)[: int(ranks[a])]] = True
        scores = torch.rand(adapters, capacity, generator=rng)
        if case % 3 == 0:
            scores = scores.mul(4).round()  # many ties
        scores = scores.masked_fill(~masks, INF) if case % 2 else scores  # inactive slots: any value
        k = int(torch.randint(1, 4, (1,), generator=rng))
        b = int(torch.randint(0, 2 * adapters + 1, (1,), generator=rng))

        prune, grow, shortfall = plan_round(scores, masks, k, b, capacity)
        where = f"case {case}: ranks {ranks.tolist()}, capacity {capacity}, k {k}, b {b}"
        assert len(prune) == len(grow), where
        assert len(prune) + shortfall == b and shortfall >= 0, where
        assert len(set(prune)) == len(prune), where
        after = _apply(masks, prune, grow, capacity)
        assert int(after.sum()) == int(masks.sum()), where
        assert bool((after.sum(dim=1) >= 1).all()), where
        assert plan_round(scores.clone(), masks.clone(), k, b, capacity) == (prune, grow, shortfall), where
        shortfalls += 0 < shortfall < b
    assert shortfalls >= 10  # partial rounds at capacity were exercised


# ------------------------------------------------------------ in a real training run
@pytest.fixture(scope="module")
def trained():
    model, opt, alloc, cfg = setup()
    records = run(model, opt, alloc, cfg, 0, TOTAL)
    return model, opt, alloc, cfg, records


def test_budget_is_constant_and_ranks_move(trained):
    model, _, alloc, _, records = trained
    assert len(records) >= 4
    assert all(sum(r.rank_pattern.values()) == alloc.initial_total_rank == 12 * 4 for r in records)
    assert alloc.total_rank() == 48
    pattern = alloc.rank_pattern()
    assert min(pattern.values()) < 4 < max(pattern.values()), "ranks should have moved both ways"
    assert min(pattern.values()) >= 1
    assert all(len(r.pruned) == len(r.expanded) == r.b - r.shortfall for r in records)
    # each round's pattern is the previous one, minus what it pruned, plus what it grew
    previous = {name: 4 for name in pattern}
    for r in records:
        expected = dict(previous)
        for name in r.pruned:
            expected[name] -= 1
        for name in r.expanded:
            expected[name] += 1
        assert r.rank_pattern == expected, r.step
        previous = r.rank_pattern
    assert previous == pattern


def test_history_records_every_round():
    model, opt, alloc, cfg = setup()
    seen = []  # (step, rank pattern read from the masks themselves) after every round
    for step in range(TOTAL):
        records = run(model, opt, alloc, cfg, step, step + 1)
        if records:
            masks = {name: int(layer.rank_mask[part].sum())
                     for name, (layer, part) in _adapters_by_name(model).items()}
            seen.append((step + 1, masks))
    # METHOD.md: a round every t_adjust steps after warm-up, until stabilisation, while
    # b_t = round(b (1 - progress^3)) > 0 (written out here, not taken from the schedule code)
    span = TOTAL - cfg.stabilize_steps - cfg.warmup_steps
    expected = [t for t in range(cfg.warmup_steps + 1, TOTAL - cfg.stabilize_steps + 1)
                if (t - cfg.warmup_steps) % cfg.adjust_interval == 0
                and math.floor(cfg.b * (1 - ((t - cfg.warmup_steps) / span) ** 3) + 0.5) > 0]
    assert expected == [7, 10, 13, 16, 19, 22, 25, 28, 31]
    assert [s for s, _ in seen] == expected
    saved = alloc.state_dict()["history"]
    assert [r["step"] for r in saved] == expected
    assert [r["rank_pattern"] for r in saved] == [m for _, m in seen]
    assert [r["b"] for r in saved] == [math.floor(cfg.b * (1 - ((t - 4) / span) ** 3) + 0.5) for t in expected]


def _adapters_by_name(model):
    """Adapter name -> (layer, part), from the model's own modules (not the allocator's bookkeeping)."""
    out = {}
    for name, layer in adapted_layers(model):
        for part, part_name in enumerate(layer.part_names):
            out[name if part_name is None else f"{name}.{part_name}"] = (layer, part)
    return out


def test_decisions_are_deterministic_under_a_seed(trained):
    _, _, alloc, _, records = trained
    model2, opt2, alloc2, cfg2 = setup()
    records2 = run(model2, opt2, alloc2, cfg2, 0, TOTAL)
    assert [r.to_dict() for r in records2] == [r.to_dict() for r in records]


def test_decisions_do_not_depend_on_the_global_rng(trained):
    """New directions come from the allocator's own generator: a run whose global RNG
    was disturbed (a data loader, dropout, another library) decides and trains alike."""
    full_model, _, _, _, records = trained
    model, opt, alloc, cfg = setup()
    torch.manual_seed(12345)  # not the state the first run had after setup()
    torch.rand(17)
    disturbed = run(model, opt, alloc, cfg, 0, TOTAL)
    assert [r.to_dict() for r in disturbed] == [r.to_dict() for r in records]
    for (name, a), (_, b) in zip(model.state_dict().items(), full_model.state_dict().items()):
        assert torch.equal(a, b), name


def _snapshot(opt):
    return {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


def test_round_keeps_optimizer_and_gives_only_changed_slots_fresh_state():
    model, opt, alloc, cfg = setup()
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run(model, opt, alloc, cfg, 0, 6)
    masks_before = {id(l): l.rank_mask.clone() for l in alloc.layers}
    before = _snapshot(opt)
    record = alloc.adjust(4, opt)
    assert record.pruned and record.expanded
    assert scheduler.optimizer is opt
    after = _snapshot(opt)
    changed_total = 0
    for layer in alloc.layers:
        changed = masks_before[id(layer)] ^ layer.rank_mask
        # a slot pruned and regrown in the same round keeps its mask bit but is re-initialised
        changed |= (layer.lora_theta == 0) & masks_before[id(layer)] & layer.rank_mask & ~torch.isclose(
            before[id(layer.lora_theta)]["exp_avg"], torch.zeros(())
        )
        for p, slot_dim in ((layer.lora_A, 1), (layer.lora_theta, 1), (layer.lora_B, 2)):
            for key in ("exp_avg", "exp_avg_sq"):
                assert_moments_after_round(before[id(p)][key], after[id(p)][key], key, slot_dim, changed,
                                           masks_before[id(layer)], layer.rank_mask)
            assert torch.equal(after[id(p)]["step"], before[id(p)]["step"])
        changed_total += int(changed.sum())
    assert changed_total >= 1


def test_new_ranks_are_orthonormal_directions_with_zero_lambda():
    model, opt, alloc, cfg = setup(init="orthogonal")
    run(model, opt, alloc, cfg, 0, 5)
    masks_before = [l.rank_mask.clone() for l in alloc.layers]
    alloc.adjust(3, opt)
    grown = 0
    for layer, before in zip(alloc.layers, masks_before):
        for part in range(layer.n_parts):
            new = (layer.rank_mask[part] & ~before[part]).nonzero().flatten()
            for slot in new.tolist():
                grown += 1
                others = [s for s in layer.rank_mask[part].nonzero().flatten().tolist() if s != slot]
                q, P = layer.lora_A[part, slot], layer.lora_B[part]
                assert layer.lora_theta[part, slot] == 0
                assert torch.isclose(q.norm(), torch.tensor(1.0), atol=1e-5)
                assert torch.isclose(P[:, slot].norm(), torch.tensor(1.0), atol=1e-5)
                assert (layer.lora_A[part, others] @ q).abs().max() < 1e-4
                assert (P[:, others].T @ P[:, slot]).abs().max() < 1e-4
    assert grown >= 1


def test_expansion_alone_does_not_change_the_function():
    model, opt, alloc, cfg = setup()
    run(model, opt, alloc, cfg, 0, 5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    alloc._expand(0, opt)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


# ------------------------------------------------------------------- persistence
def test_resume_makes_exactly_the_decisions_of_an_uninterrupted_run(tmp_path, trained):
    _, _, full_alloc, _, full_records = trained
    full_model = trained[0]
    model, opt, alloc, cfg = setup()
    run(model, opt, alloc, cfg, 0, 17)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "alloc": alloc.state_dict()}, path)
    del model, opt, alloc

    model, opt, alloc, cfg = setup(seed=123)  # different init: everything must come from the checkpoint
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    alloc.load_state_dict(state["alloc"])
    run(model, opt, alloc, cfg, 17, TOTAL)
    assert [r.to_dict() for r in alloc.history] == [r.to_dict() for r in full_records]
    for (n, a), (_, b) in zip(model.state_dict().items(), full_model.state_dict().items()):
        assert torch.equal(a, b), n


def test_allocator_state_for_another_model_is_refused():
    _, _, alloc, _ = setup()
    model = make_tiny_vit(depth=1)
    cfg = ElaLoRAConfig(rank=4, warmup_steps=4, adjust_interval=3, stabilize_steps=6)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT)
    from elalora_vit import RankAllocator

    other = RankAllocator(model, cfg, total_steps=TOTAL)
    with pytest.raises(ValueError, match="different adapters"):
        other.load_state_dict(alloc.state_dict())


# -------------------------------------------------------------------------- AMP
def test_grad_scaler_overflow_step_updates_nothing():
    model, opt, alloc, cfg = setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(3):
        x, y = batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step == 2:
            params[0].grad[0, 0, 0] = float("inf")  # an overflow
            ema_before = [t.clone() for t in alloc.tracker.ibar]
            weights_before = [p.detach().clone() for p in params]
        scaler.step(opt)  # unscales in place, skips the update on overflow
        scaler.update()
        alloc.step(opt)
        opt.zero_grad()
    assert alloc.skipped_steps == 1 and alloc.step_count == 3
    assert all(torch.equal(a, b) for a, b in zip(ema_before, alloc.tracker.ibar))
    assert all(torch.equal(a, b) for a, b in zip(weights_before, params))


# ---------------------------------------------------------------------- AdaLoRA
def test_adalora_allocator_prunes_to_its_target_and_never_grows():
    model = make_tiny_vit()
    cfg = ElaLoRAConfig(rank=4, max_rank=4, warmup_steps=4, adjust_interval=3, stabilize_steps=6)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    alloc = AdaLoRAAllocator(model, cfg, total_steps=TOTAL, target_rank=2)
    totals = []
    for step in range(TOTAL):
        x, y = batch(step)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        alloc.step(opt)
        opt.zero_grad()
        totals.append(alloc.total_rank())
    assert totals[0] == 48 and totals[-1] == 24
    assert all(b <= a for a, b in zip(totals, totals[1:]))
    assert all(not r.expanded for r in alloc.history)


@pytest.mark.parametrize("flag", ["host bool", "device tensor"])
def test_a_step_the_loop_skipped_teaches_the_scores_nothing(flag):
    """The loop says "skipped" as a bool or as its device-side flag (a 0-dim tensor the
    allocator masks with, never reads); either way the scores are untouched and counted."""
    model, opt, alloc, cfg = setup()
    run(model, opt, alloc, cfg, 0, 2)
    before = [t.clone() for t in alloc.tracker.ibar + alloc.tracker.ubar]
    x, y = batch(2)
    torch.nn.functional.cross_entropy(model(x), y).backward()  # finite gradients
    alloc.step(opt, skipped=True if flag == "host bool" else torch.tensor(True), finite_checked=True)
    assert alloc.step_count == 3 and alloc.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, alloc.tracker.ibar + alloc.tracker.ubar))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    alloc.step(opt, skipped=False if flag == "host bool" else torch.tensor(False), finite_checked=True)
    assert alloc.step_count == 4 and alloc.skipped_steps == 1  # a step that counts is taken in
    assert not all(torch.equal(a, b) for a, b in zip(before, alloc.tracker.ibar + alloc.tracker.ubar))


def test_stepping_past_total_steps_warns_once():
    import warnings as _warnings

    from elalora_vit.core.allocator import StepsPastScheduleWarning
    from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit
    from elalora_vit import ElaLoRAConfig, RankAllocator, patch_model

    model = make_tiny_vit(depth=1)
    cfg = ElaLoRAConfig(rank=2, warmup_steps=2, adjust_interval=2, stabilize_steps=2)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT)
    alloc = RankAllocator(model, cfg, total_steps=8)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        for _ in range(8):
            alloc.step()
        assert not [w for w in caught if issubclass(w.category, StepsPastScheduleWarning)]
        for _ in range(22):
            alloc.step()
    past = [w for w in caught if issubclass(w.category, StepsPastScheduleWarning)]
    assert len(past) == 1 and "step 9 is past total_steps=8" in str(past[0].message)
