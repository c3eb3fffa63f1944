from align.generate import SamplingSetting, make_pairs
from align.models import TINY_LLAMA
from align.prompts import Prompt


def test_pairs_from_two_sampling_settings_are_deterministic():
    prompts = [Prompt(id=f"q{i}", text=f"What causes symptom {i}?", reference="ref") for i in range(3)]
    a = SamplingSetting(TINY_LLAMA, 0.7, max_new_tokens=8, seed=0)
    b = SamplingSetting(TINY_LLAMA, 1.3, max_new_tokens=8, seed=1)
    seen = []
    pairs, stats = make_pairs(prompts, a, b, batch_size=2, source="generated:test", progress=seen.append)
    assert stats.made + stats.skipped_identical + stats.skipped_empty == 3
    assert sum(seen) == 6  # progress counted both sides of every prompt
    assert pairs, "random tiny model should give distinct samples"
    p = pairs[0]
    assert p.model_a == f"{TINY_LLAMA}@T0.7" and p.model_b == f"{TINY_LLAMA}@T1.3"
    assert p.generation["a"]["seed"] == 0 and p.generation["b"]["temperature"] == 1.3
    assert p.prompt_id == "q0" and p.reference == "ref" and p.source == "generated:test"
    again, _ = make_pairs(prompts, a, b, batch_size=2, source="generated:test")
    assert [x.id for x in again] == [x.id for x in pairs]
